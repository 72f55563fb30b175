//! Which requests the filter takes on: 400 for a missing or invalid key, 413 over the body limit,
//! requests it does not cover passed through, and the headers mode for hosts that cannot hold them.

use super::*;

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
async fn body_over_the_limit_gets_413() {
    let (upstream, envoy) = gateway(&plugin(json!({"max_body_bytes": 1024}))).await;
    let http = client();
    let big = format!(r#"{{"memo":"{}"}}"#, "x".repeat(2000));

    // With content-length (HTTP/1.1).
    let resp = send_payment(&http, &envoy, "alice", Some(&new_key()), &big).await;
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
    let resp = send_payment(&http, &envoy, "alice", Some(&new_key()), &small).await;
    assert_eq!(resp.status, 201, "{}", resp.describe());
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(envoy.counter("too_large").await, 2);
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

    let first = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(
        &first,
        &send_payment(&http, &envoy, "alice", Some(&key), body).await,
    );
    let other = send_payment(&http, &envoy, "alice", Some(&key), r#"{"amount":12}"#).await;
    assert_problem(&other, 422);

    // In flight: the second request's headers reach the upstream, its body never does.
    let slow_key = new_key();
    let slow = tokio::spawn(send(
        post_payment(&http, &envoy, "alice", Some(&slow_key), body)
            .header("x-demo-delay-ms", "1500"),
    ));
    upstream.wait_post_requests(2).await;
    let conflict = send_payment(&http, &envoy, "alice", Some(&slow_key), body).await;
    assert_problem(&conflict, 409);
    assert_eq!(slow.await.unwrap().status, 201);

    let big = format!(r#"{{"memo":"{}"}}"#, "x".repeat(600 << 10));
    let too_large = send_payment(&http, &envoy, "alice", Some(&new_key()), &big).await;
    assert_problem(&too_large, 413);

    assert_eq!(upstream.payment_count().await, 2, "one payment per key");
    assert_eq!(envoy.counter("executed").await, 2);
}

#[tokio::test]
async fn requests_not_covered_pass_through() {
    let (upstream, envoy) = gateway(&plugin(json!({}))).await;
    let http = client();

    let created = send_payment(&http, &envoy, "alice", Some(&new_key()), "{}").await;
    assert_eq!(created.status, 201, "{}", created.describe());
    // The filter is active on the covered route.
    assert_problem(&send_payment(&http, &envoy, "alice", None, "{}").await, 400);

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
    let first = send_payment(&http, &wrapped, "alice", Some(&key), r#"{"amount":3}"#).await;
    let retry = send_payment(&http, &wrapped, "alice", Some(&key), r#"{"amount":3}"#).await;
    assert_replay(&first, &retry);
}
