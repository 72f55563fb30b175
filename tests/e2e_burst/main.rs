//! Bursts an outsider can send, end to end on a real Envoy with one worker (one Wasm VM sees every
//! request): many waiting duplicates of one key, detached requests Envoy never sends, and more
//! request bytes than the VM may hold. After each, Envoy and its VM are alive, every client got an
//! answer, no key executed twice, and a plain request still gets 201.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod fanout;
mod leaving;
mod memory;
mod never_sent;
#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const SECRET: &str = "burst-e2e-secret-0123456789abcdef0123456789abcdef";

/// The filter on `POST /payments` with `rule`'s fields over a required key, no key store.
fn plugin(rule: Value, extra: Value) -> String {
    let rule = merged(
        json!({"exact": "/payments", "methods": ["POST"], "required": true}),
        &rule,
    );
    Plugin::signed(SECRET)
        .caller_header("authorization")
        .set("routes", json!([rule]))
        .merge(&extra)
        .json()
}

/// One burst at a time: each sends more than one Envoy worker can take at once and bounds what it
/// sees (who got which answer, what ran), which a second burst on the same small machine would
/// distort (a detached request's connection to the upstream timed out behind another burst).
async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

/// Asserts Envoy is up, its VM never failed (a failed VM logs the function that failed and
/// answers every later request 503), and a new key still executes.
async fn assert_alive_and_serving(envoy: &mut Envoy, upstream: &Upstream, what: &str) {
    assert!(envoy.process_alive(), "{what}: Envoy exited");
    let log = envoy.full_log();
    for line in log.lines() {
        assert!(
            !line.contains("Uncaught") && !line.contains("failed:") && !line.contains("[critical]"),
            "{what}: the VM failed: {line}"
        );
    }
    let before = upstream.post_requests().await;
    let fresh = send_payment(
        &client(),
        envoy,
        "Bearer after",
        Some(&new_key()),
        r#"{"amount":1}"#,
    )
    .await;
    assert_eq!(
        fresh.status,
        201,
        "{what}: a new key after the burst: {}",
        fresh.describe()
    );
    assert_eq!(upstream.post_requests().await, before + 1);
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
