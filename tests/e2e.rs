//! End-to-end tests of the filter in one Envoy with Envoy's shared data as the only store
//! (`"keystore"` absent): the rows of the README's behaviour table that apply to a single gateway,
//! and the in-band expiry, whose replay is also checked through a second gateway and the key store.
//!
//! Each test starts its own payments upstream and Envoy (so tests run in parallel) and uses fresh
//! keys. "The upstream executed N times" is read from the upstream's own `/_demo/stats`.
//! Needs `make build` (the Wasm filter and payments-demo) and Envoy (see `support`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;
use serde_json::{json, Value};
use support::mesh::{Mesh, MeshOptions};
use support::*;

/// The demo's configuration: the key is required for `POST /payments`, the caller is the
/// `authorization` header, no key store.
fn plugin(extra: Value) -> String {
    let mut config = json!({
        "routes": [{"exact": "/payments", "methods": ["POST"], "required": true}],
        "caller": {"header": "authorization"},
        "hmac_secret": "e2e-secret-0123456789abcdef0123456789abcdef",
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    config.to_string()
}

#[tokio::test]
async fn first_request_executes_once_and_retries_replay_byte_exact() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":1000,"currency":"EUR"}"#;

    let first = send(post_payment(
        &http,
        &envoy,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
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
        let retry = send(post_payment(
            &http,
            &envoy,
            "Bearer alice",
            Some(&key),
            body,
        ))
        .await;
        assert_replay(&first, &retry);
    }
    let h2 = send(post_payment(
        &h2c_client(),
        &envoy,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
    assert_replay(&first, &h2);

    // The key as a Structured Field string is the same key as the bare token.
    let quoted = format!("\"{key}\"");
    let retry = send(post_payment(
        &http,
        &envoy,
        "Bearer alice",
        Some(&quoted),
        body,
    ))
    .await;
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

    let first = send(post_payment(
        &http,
        &envoy,
        "alice",
        Some(&key),
        r#"{"amount":1}"#,
    ))
    .await;
    assert_eq!(first.status, 201, "{}", first.describe());

    // Other body.
    let other = send(post_payment(
        &http,
        &envoy,
        "alice",
        Some(&key),
        r#"{"amount":2}"#,
    ))
    .await;
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
    let retry = send(post_payment(
        &http,
        &envoy,
        "alice",
        Some(&key),
        r#"{"amount":1}"#,
    ))
    .await;
    assert_replay(&first, &retry);
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(envoy.counter("mismatch").await, 2);
}

#[tokio::test]
async fn missing_or_invalid_keys_get_400_and_never_reach_the_upstream() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();
    let body = r#"{"amount":5}"#;
    let post = || {
        http.post(envoy.url("/payments"))
            .header("content-type", "application/json")
            .header("authorization", "alice")
            .body(body)
    };

    let missing = send(post()).await;
    assert_problem(&missing, 400);

    let long = "k".repeat(256);
    let invalid: Vec<(&str, Vec<HeaderValue>)> = vec![
        ("empty", vec![HeaderValue::from_static("")]),
        ("empty sf-string", vec![HeaderValue::from_static("\"\"")]),
        (
            "256 characters",
            vec![HeaderValue::from_str(&long).unwrap()],
        ),
        (
            "control character",
            vec![HeaderValue::from_static("ab\tcd")],
        ),
        ("broken sf-string", vec![HeaderValue::from_static("\"abc")]),
        (
            "non-UTF-8 bytes",
            vec![HeaderValue::from_bytes(&[0xff, 0xfe, b'a', b'b']).unwrap()],
        ),
        (
            "non-ASCII UTF-8",
            vec![HeaderValue::from_bytes("clé-ü".as_bytes()).unwrap()],
        ),
        (
            "two differing fields",
            vec![
                HeaderValue::from_static("key-one"),
                HeaderValue::from_static("key-two"),
            ],
        ),
    ];
    for (case, values) in &invalid {
        let mut req = post();
        for value in values {
            req = req.header("idempotency-key", value.clone());
        }
        let resp = send(req).await;
        assert_eq!(resp.status, 400, "{case}: {}", resp.describe());
        assert_problem(&resp, 400);
    }
    assert_eq!(
        upstream.post_requests().await,
        0,
        "an invalid request reached the upstream"
    );

    // Boundaries that are valid: 255 characters, and a sf-string with an escaped quote.
    let longest = "k".repeat(255);
    let ok = send(post().header("idempotency-key", &longest)).await;
    assert_eq!(ok.status, 201, "255-character key: {}", ok.describe());
    let escaped = send(post().header("idempotency-key", r#""a\"b""#)).await;
    assert_eq!(
        escaped.status,
        201,
        "escaped sf-string: {}",
        escaped.describe()
    );
    assert_eq!(upstream.post_requests().await, 2);

    assert_eq!(envoy.counter("missing_key").await, 1);
    assert_eq!(envoy.counter("invalid_key").await, invalid.len() as u64);
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

    let conflict = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
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
    let retry = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
    assert_replay(&first, &retry);

    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(envoy.counter("conflict").await, 1);
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let (upstream, envoy) = gateway(&plugin(json!({"max_body_bytes": 1024}))).await;
    let http = client();
    let big = format!(r#"{{"memo":"{}"}}"#, "x".repeat(2000));

    // With content-length (HTTP/1.1).
    let resp = send(post_payment(&http, &envoy, "alice", Some(&new_key()), &big)).await;
    assert_problem(&resp, 413);
    // Without content-length (h2c DATA frames, then trailers).
    let resp = h2c_with_trailers(
        envoy.port,
        "POST",
        "/payments",
        &[
            ("content-type", "application/json"),
            ("authorization", "alice"),
            ("idempotency-key", &new_key()),
        ],
        big.as_bytes(),
        &[("x-checksum", "1")],
    )
    .await;
    assert_problem(&resp, 413);
    assert_eq!(upstream.post_requests().await, 0);

    // Under the limit is fine.
    let small = format!(r#"{{"memo":"{}"}}"#, "x".repeat(900));
    let resp = send(post_payment(
        &http,
        &envoy,
        "alice",
        Some(&new_key()),
        &small,
    ))
    .await;
    assert_eq!(resp.status, 201, "{}", resp.describe());
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(envoy.counter("too_large").await, 2);
}

#[tokio::test]
async fn response_too_large_to_keep_is_never_executed_again() {
    // The demo's 201 body (~90 bytes) plus its headers is over 100 bytes.
    let (upstream, envoy) = gateway(&plugin(json!({"max_response_bytes": 100}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":7,"memo":"a response too large to keep"}"#;

    let first = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert!(
        first.json()["id"].is_string(),
        "the client gets the whole response"
    );
    let retry = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
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

/// Istio's WasmPlugin cannot set `allow_on_headers_stop_iteration`; with `headers_mode: "stream"`
/// the request headers go upstream at once and the body waits for the decision, so a refused
/// request never completes upstream and nothing executes twice.
#[tokio::test]
async fn stream_headers_mode_protects_where_envoy_cannot_hold_headers() {
    let upstream = Upstream::start().await;
    let options = EnvoyOptions::with_filter(
        upstream.port,
        plugin(json!({"headers_mode": "stream", "max_body_bytes": 512 << 10})),
    )
    .without_headers_stop_iteration();
    assert!(options
        .render()
        .contains("allow_on_headers_stop_iteration: false"));
    let envoy = Envoy::start(&options).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":11}"#;

    let first = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(
        &first,
        &send(post_payment(&http, &envoy, "alice", Some(&key), body)).await,
    );
    let other = send(post_payment(
        &http,
        &envoy,
        "alice",
        Some(&key),
        r#"{"amount":12}"#,
    ))
    .await;
    assert_problem(&other, 422);

    // In flight: the second request's headers reach the upstream, its body never does.
    let slow_key = new_key();
    let slow = tokio::spawn(send(
        post_payment(&http, &envoy, "alice", Some(&slow_key), body)
            .header("x-demo-delay-ms", "1500"),
    ));
    upstream.wait_post_requests(2).await;
    let conflict = send(post_payment(&http, &envoy, "alice", Some(&slow_key), body)).await;
    assert_problem(&conflict, 409);
    assert_eq!(slow.await.unwrap().status, 201);

    let big = format!(r#"{{"memo":"{}"}}"#, "x".repeat(600 << 10));
    let too_large = send(post_payment(&http, &envoy, "alice", Some(&new_key()), &big)).await;
    assert_problem(&too_large, 413);

    assert_eq!(upstream.payment_count().await, 2, "one payment per key");
    assert_eq!(envoy.counter("executed").await, 2);
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
    let ok = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
    assert_eq!(ok.status, 201, "{}", ok.describe());
    assert!(!ok.replayed());
    let retry = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
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
        let ok = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
        assert_eq!(ok.status, 201, "{}", ok.describe());
        let retry = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
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
async fn another_caller_with_the_same_key_executes_separately() {
    let (upstream, envoy) = gateway(&plugin(json!({"anonymous_scope": "public"}))).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":17}"#;

    let alice = send(post_payment(
        &http,
        &envoy,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
    let bob = send(post_payment(&http, &envoy, "Bearer bob", Some(&key), body)).await;
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
        &send(post_payment(
            &http,
            &envoy,
            "Bearer alice",
            Some(&key),
            body,
        ))
        .await,
    );
    assert_replay(
        &bob,
        &send(post_payment(&http, &envoy, "Bearer bob", Some(&key), body)).await,
    );
    assert_eq!(upstream.post_requests().await, 3);
    assert_eq!(upstream.payment_count().await, 3);
}

#[tokio::test]
async fn requests_not_covered_pass_through() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();

    let created = send(post_payment(&http, &envoy, "alice", Some(&new_key()), "{}")).await;
    assert_eq!(created.status, 201, "{}", created.describe());
    // The filter is active on the covered route.
    assert_problem(
        &send(post_payment(&http, &envoy, "alice", None, "{}")).await,
        400,
    );

    // GET is not covered: no key needed, an invalid key is ignored, nothing is replayed.
    for key in [None, Some("\"broken")] {
        let mut req = http
            .get(envoy.url("/payments"))
            .header("authorization", "alice");
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let list = send(req).await;
        assert_eq!(list.status, 200, "{}", list.describe());
        assert!(!list.replayed());
        assert_eq!(list.json().as_array().map(Vec::len), Some(1));
    }
    // A path that no rule matches reaches the upstream (which has no such route) without a key.
    let other = send(http.post(envoy.url("/refunds")).body("{}")).await;
    assert_eq!(other.status, 404, "{}", other.describe());
    // The exact rule does not cover a sub-path.
    let sub = send(http.post(envoy.url("/payments/abc")).body("{}")).await;
    assert_eq!(sub.status, 405, "{}", sub.describe());
    // PUT is not in the rule's methods.
    let put = send(http.put(envoy.url("/payments")).body("{}")).await;
    assert_eq!(put.status, 405, "{}", put.describe());

    assert_eq!(upstream.post_requests().await, 1);
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
    let http1 = send(post_payment(
        &client(),
        &envoy,
        "alice",
        Some(&key),
        std::str::from_utf8(body).unwrap(),
    ))
    .await;
    assert_replay(&first, &http1);
    // Other body with trailers: 422.
    let other =
        h2c_with_trailers(envoy.port, "POST", "/payments", &headers, b"{}", &trailers).await;
    assert_problem(&other, 422);

    assert_eq!(upstream.post_requests().await, 1);
}

#[tokio::test]
async fn client_gone_after_forwarding_locks_the_key_and_it_runs_once() {
    // L1 only: the lock and the "outcome unknown" record live in this Envoy's shared data. (With
    // a key store, across gateways: tests/e2e_unknown_outcome.rs.)
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
    let first = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
    assert_problem(&first, 409);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let terminal = loop {
        let resp = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
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

/// The shipped configs enable the filter only on the routes it covers: every other request never
/// enters the Wasm VM (the filter counts nothing for it), and the covered route still deduplicates.
#[tokio::test]
async fn a_route_wrapper_keeps_requests_the_filter_does_not_cover_out_of_the_vm() {
    let upstream = Upstream::start().await;
    let cfg = plugin(json!({}));
    let wrapping =
        EnvoyOptions::with_filter(upstream.port, cfg.clone()).only_route("POST", "/payments");
    let plain = EnvoyOptions::with_filter(upstream.port, cfg);
    let (wrapped, plain) = tokio::join!(Envoy::start(&wrapping), Envoy::start(&plain));
    let http = client();
    for envoy in [&wrapped, &plain] {
        let get = send(http.get(envoy.url("/payments"))).await;
        assert_eq!(get.status, 200);
        let other = send(http.post(envoy.url("/other")).body("{}")).await;
        assert_eq!(other.status, 404);
    }
    assert_eq!(
        wrapped.counter("not_covered").await,
        0,
        "the VM never saw them"
    );
    assert_eq!(
        plain.counter("not_covered").await,
        2,
        "without the wrapper it does"
    );
    let key = new_key();
    let first = send(post_payment(
        &http,
        &wrapped,
        "alice",
        Some(&key),
        r#"{"amount":3}"#,
    ))
    .await;
    let retry = send(post_payment(
        &http,
        &wrapped,
        "alice",
        Some(&key),
        r#"{"amount":3}"#,
    ))
    .await;
    assert_replay(&first, &retry);
}

/// The expiry a response advertises, as a time (panics with the response if absent or not an
/// HTTP-date).
fn advertised_expiry(resp: &Resp) -> SystemTime {
    let value = resp
        .header("idempotency-expires")
        .unwrap_or_else(|| panic!("no idempotency-expires: {}", resp.describe()));
    httpdate::parse_http_date(value)
        .unwrap_or_else(|e| panic!("idempotency-expires {value:?} is no HTTP-date ({e})"))
}

#[tokio::test]
async fn the_first_answer_and_a_replay_on_another_gateway_advertise_the_same_expiry() {
    let retention = Duration::from_secs(600);
    let plugin = plugin(json!({
        "retention_s": retention.as_secs(),
        "keystore": {"cluster": "keystore", "timeout_ms": 1000},
    }));
    let mesh = Mesh::start(&plugin, MeshOptions::default()).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":7}"#;

    let before = SystemTime::now();
    let first = send(post_payment(
        &http,
        &mesh.a,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
    let after = SystemTime::now();
    assert_eq!(first.status, 201, "{}", first.describe());
    let expires = advertised_expiry(&first);
    // Whole seconds, rounded down: up to one second before the record's own expiry.
    assert!(
        expires + Duration::from_secs(1) >= before + retention && expires <= after + retention,
        "{expires:?} is not {retention:?} after the request: {}",
        first.describe()
    );

    // The other gateway replays from the key store: the same instant, not one counted anew.
    let replay = send(post_payment(
        &http,
        &mesh.b,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
    assert_replay(&first, &replay);
    assert_eq!(
        replay.header("idempotency-expires"),
        first.header("idempotency-expires")
    );
    assert_eq!(mesh.upstream.post_requests().await, 1);

    // Problem answers carry none: another payload under the key is 422.
    let other = send(post_payment(
        &http,
        &mesh.b,
        "Bearer alice",
        Some(&key),
        "{}",
    ))
    .await;
    assert_eq!(other.status, 422, "{}", other.describe());
    assert_eq!(other.header("idempotency-expires"), None);
}

#[tokio::test]
async fn the_expiry_header_can_be_turned_off() {
    let (upstream, envoy) = gateway(&plugin(json!({"expires_header": false}))).await;
    let http = client();
    let key = new_key();
    let first = send(post_payment(
        &http,
        &envoy,
        "Bearer alice",
        Some(&key),
        "{}",
    ))
    .await;
    let replay = send(post_payment(
        &http,
        &envoy,
        "Bearer alice",
        Some(&key),
        "{}",
    ))
    .await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(&first, &replay);
    for resp in [&first, &replay] {
        assert_eq!(
            resp.header("idempotency-expires"),
            None,
            "{}",
            resp.describe()
        );
    }
    assert_eq!(upstream.post_requests().await, 1);
}
