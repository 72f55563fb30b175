//! Upstream faults: a reset connection; an upstream that hangs, fails, or loses its client.

use super::*;

#[tokio::test]
async fn upstream_resets_the_connection() {
    // A raw TCP server that reads the request and resets stands in for a crashing upstream.
    let reset = ResettingUpstream::start().await;
    let keystore = Keystore::start().await;
    let mut envoy = Envoy::start(
        &EnvoyOptions::with_filter(reset.port, plugin("fail_closed", 500, 30_000))
            .keystore(keystore.port),
    )
    .await;
    let http = client();
    let key = new_key();
    let m0 = metrics(&envoy).await;
    let resp = send_payment(&http, &envoy, "alice", Some(&key), "{}").await;
    assert_eq!(resp.status, 503, "{}", resp.describe());
    assert!(!resp.replayed());
    // The upstream read the request before it reset: it may have executed, so the key is locked.
    let retry = send_payment(&http, &envoy, "alice", Some(&key), "{}").await;
    assert_problem(&retry, 409);
    assert_eq!(reset.requests(), 1, "the retry must not reach the upstream");
    let m1 = metrics(&envoy).await;
    assert_eq!(delta(&m0, &m1, "unknown_outcome"), 1, "{m1:?}");
    assert_eq!(delta(&m0, &m1, "executed"), 1, "{m1:?}");
    assert_eq!(delta(&m0, &m1, "released"), 0, "{m1:?}");
    assert_envoy_healthy(&mut envoy, "upstream reset").await;
    row(
        "upstream resets the connection (raw TCP server: read, then RST)",
        "503 from Envoy (reset before headers); outcome unknown: the retry 409, then 410 after the hold",
        "1",
        "no: locked as outcome unknown",
        &counted(&m0, &m1),
    );
}

#[tokio::test]
async fn upstream_hangs_fails_or_loses_its_client() {
    let upstream = Upstream::start().await;
    let keystore = Keystore::start().await;
    let mut envoy = Envoy::start(
        &EnvoyOptions::with_filter(upstream.port, plugin("fail_closed", 500, 30_000))
            .keystore(keystore.port)
            .route_timeout(Duration::from_millis(800)),
    )
    .await;
    let http = client();
    let body = r#"{"amount":4}"#;

    // Hanging past the route timeout (800 ms): 504, outcome unknown, the retry gets 409.
    let m0 = metrics(&envoy).await;
    let key = new_key();
    let hung = send(
        post_payment(&http, &envoy, "alice", Some(&key), body).header("x-demo-delay-ms", "2500"),
    )
    .await;
    assert_eq!(hung.status, 504, "{}", hung.describe());
    let retry = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_problem(&retry, 409);
    assert_eq!(upstream.post_requests().await, 1);
    let m1 = metrics(&envoy).await;
    assert_eq!(delta(&m0, &m1, "unknown_outcome"), 1, "{m1:?}");
    // Envoy reset the hung upstream request, and the upstream finished its work anyway.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        upstream.payment_count().await,
        1,
        "the timed-out attempt ran"
    );
    assert_envoy_healthy(&mut envoy, "route timeout").await;
    row(
        "upstream hangs past the route timeout (800 ms; upstream delay 2.5 s)",
        "504 from Envoy; outcome unknown: the retry 409, then 410 after the hold",
        "1 (the hung request finished its work after Envoy gave up on it)",
        "no: locked as outcome unknown",
        &counted(&m0, &m1),
    );

    // 5xx: passed on, released, the retry executes.
    let m0 = metrics(&envoy).await;
    let key = new_key();
    let failed =
        send(post_payment(&http, &envoy, "alice", Some(&key), body).header("x-demo-status", "503"))
            .await;
    assert_eq!(failed.status, 503, "{}", failed.describe());
    assert!(!failed.is_problem_like());
    let retry = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_eq!(retry.status, 201, "{}", retry.describe());
    assert!(!retry.replayed());
    assert_eq!(upstream.post_requests().await, 3);
    let m1 = metrics(&envoy).await;
    assert_eq!(delta(&m0, &m1, "released"), 1, "{m1:?}");
    assert_envoy_healthy(&mut envoy, "upstream 5xx").await;
    row(
        "upstream answers 503",
        "the upstream's 503, passed on and not stored; the retry 201",
        "1 per attempt (2)",
        "no: the retry executes",
        &counted(&m0, &m1),
    );

    // The client goes away while its request is at the upstream.
    let m0 = metrics(&envoy).await;
    let key = new_key();
    let impatient = impatient(Duration::from_millis(250));
    let gone = post_payment(&impatient, &envoy, "alice", Some(&key), body)
        .header("x-demo-delay-ms", "600")
        .send()
        .await;
    assert!(gone.is_err(), "the client should have given up: {gone:?}");
    let retry = send_payment(&http, &envoy, "alice", Some(&key), body).await;
    assert_problem(&retry, 409);
    let m1 = metrics(&envoy).await;
    assert_eq!(delta(&m0, &m1, "unknown_outcome"), 1, "{m1:?}");
    assert_eq!(delta(&m0, &m1, "released"), 0, "{m1:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        upstream.payment_count().await,
        3,
        "payments: the hung one, the 5xx retry, and this one"
    );
    assert_eq!(upstream.post_requests().await, 4, "never executed again");
    assert_envoy_healthy(&mut envoy, "client gone").await;
    row(
        "client disconnects while its request is at the upstream",
        "(nothing: gone); outcome unknown: the retry 409, then 410 after the hold",
        "1 (the upstream finished the abandoned request)",
        "no: locked as outcome unknown",
        &counted(&m0, &m1),
    );
}

trait ProblemLike {
    fn is_problem_like(&self) -> bool;
}

impl ProblemLike for Resp {
    /// Whether this is one of the filter's problem answers (rather than the upstream's body).
    fn is_problem_like(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| v.starts_with("application/problem+json"))
    }
}
