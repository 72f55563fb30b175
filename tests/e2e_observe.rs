//! Observe mode: the filter decides everything and counts it (`idempotency.observe.*`) but forwards
//! every request untouched. The same traffic through three gateways: no filter, observe, enforce.
//! Observe answers exactly as no filter does; its counts equal what enforce answered.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::*;

fn plugin(mode: &str) -> String {
    Plugin::payments("observe-e2e-secret-0123456789abcdef0123456789abcdef")
        .set("mode", mode)
        .set("max_body_bytes", 1024)
        .json()
}

/// One round of traffic: (what, status) for each request, in order.
async fn traffic(envoy: &Envoy) -> Vec<(&'static str, u16)> {
    let http = client();
    let k = "\"observe-k1\"";
    let post =
        |key: Option<&str>, body: &str| post_payment(&http, envoy, "Bearer alice", key, body);
    let mut out = Vec::new();
    out.push(("first", send(post(Some(k), r#"{"amount":1}"#)).await.status));
    out.push(("retry", send(post(Some(k), r#"{"amount":1}"#)).await.status));
    out.push((
        "other payload",
        send(post(Some(k), r#"{"amount":2}"#)).await.status,
    ));
    out.push(("no key", send(post(None, r#"{"amount":3}"#)).await.status));
    out.push((
        "invalid key",
        send(post(Some("\"\""), r#"{"amount":4}"#)).await.status,
    ));
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    out.push((
        "body too large",
        send(post(Some("\"observe-big\""), &big)).await.status,
    ));
    // A duplicate while the first is in flight.
    let slow = tokio::spawn(send(
        post(Some("\"observe-k2\""), r#"{"amount":5}"#).header("x-demo-delay-ms", "600"),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    out.push((
        "in flight",
        send(post(Some("\"observe-k2\""), r#"{"amount":5}"#))
            .await
            .status,
    ));
    out.push(("slow first", slow.await.unwrap().status));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_answers_as_without_the_filter_and_counts_what_enforce_answers() {
    let upstream = Upstream::start().await;
    let without = EnvoyOptions {
        plugin: None,
        ..EnvoyOptions::with_filter(upstream.port, "")
    };
    let observing = EnvoyOptions::with_filter(upstream.port, plugin("observe"));
    let enforcing = EnvoyOptions::with_filter(upstream.port, plugin("enforce"));
    let (none, observe, enforce) = tokio::join!(
        Envoy::start(&without),
        Envoy::start(&observing),
        Envoy::start(&enforcing),
    );
    let plain = traffic(&none).await;
    let observed = traffic(&observe).await;
    let enforced = traffic(&enforce).await;
    assert_eq!(observed, plain, "observe mode answers exactly as no filter");
    assert_eq!(
        enforced.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [201, 201, 422, 400, 400, 413, 409, 201],
        "{enforced:?}"
    );
    for name in [
        "executed",
        "replayed",
        "mismatch",
        "missing_key",
        "invalid_key",
        "too_large",
        "conflict",
    ] {
        let (o, e) = (
            observe.counter(&format!("observe.{name}")).await,
            enforce.counter(name).await,
        );
        assert_eq!(o, e, "observe.{name} vs enforce {name}");
        assert_eq!(
            observe.counter(name).await,
            0,
            "observe mode counts apart: {name}"
        );
    }
    assert_eq!(enforce.counter("replayed").await, 1);
}
