//! A retry replays the first answer byte-exact, whatever the protocol or the concurrency; 422 for
//! another payload, 409 while the first is in flight; another caller's same key is its own.

use super::*;

#[tokio::test]
async fn first_request_executes_once_and_retries_replay_byte_exact() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":1000,"currency":"EUR"}"#;

    let first = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert!(!first.replayed(), "{}", first.describe());
    assert_eq!(
        first.json()["request"],
        json!({"amount": 1000, "currency": "EUR"})
    );
    assert!(first.header("location").is_some(), "{}", first.describe());
    assert_eq!(upstream.post_requests().await, 1);

    // Retries, over HTTP/1.1 and h2c, replay the stored answer and never reach the upstream.
    for _ in 0..2 {
        let retry = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
        assert_replay(&first, &retry);
    }
    let h2 = send_payment(&h2c_client(), &envoy, "Bearer alice", Some(&key), body).await;
    assert_replay(&first, &h2);

    // The key as a Structured Field string is the same key as the bare token.
    let quoted = format!("\"{key}\"");
    let retry = send_payment(&http, &envoy, "Bearer alice", Some(&quoted), body).await;
    assert_replay(&first, &retry);

    assert_eq!(
        upstream.post_requests().await,
        1,
        "the upstream executed a retry"
    );
    let payments = upstream.payments().await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["id"], first.json()["id"]);
    assert_eq!(envoy.counter("executed").await, 1);
    assert_eq!(envoy.counter("replayed").await, 4);
}

#[tokio::test]
async fn same_key_other_fingerprint_gets_422() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let key = new_key();

    let first = send_payment(&http, &envoy, "alice", Some(&key), r#"{"amount":1}"#).await;
    assert_eq!(first.status, 201, "{}", first.describe());

    // Other body.
    let other = send_payment(&http, &envoy, "alice", Some(&key), r#"{"amount":2}"#).await;
    assert_problem(&other, 422);
    // Same body, other query string (the fingerprint covers path and query).
    let query = send(
        http.post(envoy.url("/payments?currency=USD"))
            .header("content-type", "application/json")
            .header("authorization", "alice")
            .header("idempotency-key", &key)
            .body(r#"{"amount":1}"#),
    )
    .await;
    assert_problem(&query, 422);

    // The original still replays.
    let retry = send_payment(&http, &envoy, "alice", Some(&key), r#"{"amount":1}"#).await;
    assert_replay(&first, &retry);
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(envoy.counter("mismatch").await, 2);
}

#[tokio::test]
async fn retry_while_in_flight_gets_409_with_retry_after() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":7}"#;

    let slow = {
        let req = post_payment(&http, &envoy, "alice", Some(&key), body)
            .header("x-demo-delay-ms", "1500");
        tokio::spawn(send(req))
    };
    upstream.wait_post_requests(1).await;

    let conflict = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_problem(&conflict, 409);
    let retry_after = conflict
        .header("retry-after")
        .unwrap_or_else(|| panic!("409 without retry-after: {}", conflict.describe()));
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "retry-after is not delta-seconds: {retry_after:?}"
    );

    let first = slow.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.describe());
    assert!(!first.replayed());
    let retry = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_replay(&first, &retry);

    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(envoy.counter("conflict").await, 1);
}

#[tokio::test]
async fn another_caller_with_the_same_key_executes_separately() {
    let (upstream, envoy) = gateway(&plugin(json!({"anonymous_scope": "public"}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":17}"#;

    let alice = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    let bob = send_payment(&http, &envoy, "Bearer bob", Some(&key), body).await;
    assert_eq!(alice.status, 201, "{}", alice.describe());
    assert_eq!(bob.status, 201, "{}", bob.describe());
    assert!(
        !bob.replayed(),
        "bob got alice's answer: {}",
        bob.describe()
    );
    assert_ne!(alice.json()["id"], bob.json()["id"]);

    // No caller at all: the named anonymous scope, distinct from both.
    let anonymous = send(
        http.post(envoy.url("/payments"))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(body),
    )
    .await;
    assert_eq!(anonymous.status, 201, "{}", anonymous.describe());
    assert!(!anonymous.replayed());

    assert_replay(
        &alice,
        &send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await,
    );
    assert_replay(
        &bob,
        &send_payment(&http, &envoy, "Bearer bob", Some(&key), body).await,
    );
    assert_eq!(upstream.post_requests().await, 3);
    assert_eq!(upstream.payment_count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_create_exactly_one_payment() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":19}"#;

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let req = post_payment(&http, &envoy, "alice", Some(&key), body)
                .header("x-demo-delay-ms", "300");
            tokio::spawn(send(req))
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }

    let mut originals = 0;
    let mut bodies = HashSet::new();
    for answer in &answers {
        match answer.status {
            201 => {
                if !answer.replayed() {
                    originals += 1;
                }
                bodies.insert(answer.body.clone());
            }
            409 => {
                assert_problem(answer, 409);
            }
            _ => panic!("unexpected answer: {}", answer.describe()),
        }
    }
    assert_eq!(originals, 1, "exactly one answer comes from the upstream");
    assert_eq!(bodies.len(), 1, "every 201 carries the same payment");
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(upstream.payment_count().await, 1);
}

#[tokio::test]
async fn h2c_with_request_trailers_executes_once_and_replays() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let key = new_key();
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "alice"),
        ("idempotency-key", key.as_str()),
    ];
    let body = br#"{"amount":23,"memo":"with trailers"}"#;
    let trailers = [("x-checksum", "c0ffee")];

    let first = h2c_with_trailers(envoy.port, "POST", "/payments", &headers, body, &trailers).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert!(!first.replayed());
    assert_eq!(first.json()["request"]["amount"], 23);

    let retry = h2c_with_trailers(envoy.port, "POST", "/payments", &headers, body, &trailers).await;
    assert_replay(&first, &retry);
    // The same request over HTTP/1.1 (no trailers) replays too.
    let http1 = send_payment(
        &client(),
        &envoy,
        "alice",
        Some(&key),
        std::str::from_utf8(body).unwrap(),
    )
    .await;
    assert_replay(&first, &http1);
    // Other body with trailers: 422.
    let other =
        h2c_with_trailers(envoy.port, "POST", "/payments", &headers, b"{}", &trailers).await;
    assert_problem(&other, 422);

    assert_eq!(upstream.post_requests().await, 1);
}
