//! What an answer does to its key: 5xx and statuses that never ran are not stored, other 4xx are,
//! a response too large to keep still never runs twice, and a client gone locks the key.

use super::*;

#[tokio::test]
async fn response_too_large_to_keep_is_never_executed_again() {
    // The demo's 201 body (~90 bytes) plus its headers is over 100 bytes.
    let (upstream, envoy) = gateway(&plugin(json!({"max_response_bytes": 100}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":7,"memo":"a response too large to keep"}"#;

    let first = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert!(
        first.json()["id"].is_string(),
        "the client gets the whole response"
    );
    let retry = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    let problem = assert_problem(&retry, 410);
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("response-not-replayable"),
        "{problem}"
    );
    assert_eq!(upstream.post_requests().await, 1, "never executed again");
    assert_eq!(envoy.counter("not_replayable").await, 2);
}

#[tokio::test]
async fn upstream_5xx_is_passed_on_and_not_stored() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":9}"#;

    for (attempt, status) in [(1, "500"), (2, "500"), (3, "503")] {
        let resp = send(
            post_payment(&http, &envoy, "alice", Some(&key), body).header("x-demo-status", status),
        )
        .await;
        assert_eq!(resp.status.to_string(), status, "{}", resp.describe());
        assert!(!resp.replayed(), "a 5xx was replayed: {}", resp.describe());
        assert_eq!(resp.json()["status"], status.parse::<u16>().unwrap());
        assert_eq!(
            upstream.post_requests().await,
            attempt,
            "a retry after a 5xx must execute"
        );
    }

    // The next attempt succeeds and is the one stored.
    let ok = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_eq!(ok.status, 201, "{}", ok.describe());
    assert!(!ok.replayed());
    let retry = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_replay(&ok, &retry);
    assert_eq!(upstream.post_requests().await, 4);
    assert_eq!(upstream.payment_count().await, 1);
}

#[tokio::test]
async fn statuses_that_never_ran_are_not_stored() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let body = r#"{"amount":11}"#;

    let mut expected_posts = 0;
    for status in ["429", "401", "409"] {
        let key = new_key();
        for _ in 0..2 {
            let resp = send(
                post_payment(&http, &envoy, "alice", Some(&key), body)
                    .header("x-demo-status", status),
            )
            .await;
            expected_posts += 1;
            assert_eq!(resp.status.to_string(), status, "{}", resp.describe());
            assert!(
                !resp.replayed(),
                "a {status} was replayed: {}",
                resp.describe()
            );
            assert_eq!(
                upstream.post_requests().await,
                expected_posts,
                "a retry after {status} must execute again"
            );
        }
        // The key is still usable: the next attempt executes and is stored.
        let ok = send_payment(&http, &envoy, "alice", Some(&key), body).await;
        assert_eq!(ok.status, 201, "{}", ok.describe());
        let retry = send_payment(&http, &envoy, "alice", Some(&key), body).await;
        assert_replay(&ok, &retry);
        expected_posts += 1;
        assert_eq!(upstream.post_requests().await, expected_posts);
    }
}

#[tokio::test]
async fn other_4xx_answers_are_stored_and_replayed() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":13}"#;

    // An upstream 400 is a real outcome (the request ran): it is stored like a 201.
    let first =
        send(post_payment(&http, &envoy, "alice", Some(&key), body).header("x-demo-status", "400"))
            .await;
    assert_eq!(first.status, 400, "{}", first.describe());
    let retry =
        send(post_payment(&http, &envoy, "alice", Some(&key), body).header("x-demo-status", "400"))
            .await;
    assert_replay(&first, &retry);
    assert_eq!(upstream.post_requests().await, 1);
}

#[tokio::test]
async fn client_gone_after_forwarding_locks_the_key_and_it_runs_once() {
    // L1 only: the lock and the "outcome unknown" record live in this Envoy's shared data. (With
    // a key store, across gateways: tests/e2e_unknown_outcome/.)
    let (upstream, envoy) = gateway(&plugin(json!({"unknown_hold_ms": 2000}))).await;
    let key = new_key();
    let body = r#"{"amount":29}"#;

    // The client gives up while the upstream is still working; the upstream finishes anyway.
    let impatient = impatient(std::time::Duration::from_millis(300));
    let gone = post_payment(&impatient, &envoy, "alice", Some(&key), body)
        .header("x-demo-delay-ms", "1000")
        .send()
        .await;
    assert!(gone.is_err(), "the request should have timed out: {gone:?}");

    // Retries get 409 while the first attempt may still run, then the terminal 410.
    let http = client();
    let first = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_problem(&first, 409);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let terminal = loop {
        let resp = send_payment(&http, &envoy, "alice", Some(&key), body).await;
        if resp.status != 409 {
            break resp;
        }
        assert!(std::time::Instant::now() < deadline, "{}", resp.describe());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let problem = assert_problem(&terminal, 410);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("outcome-unknown"));
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(
        upstream.payment_count().await,
        1,
        "the abandoned work finished"
    );
}
