//! A service's own status settles the key (README, "gRPC"; `core/src/grpc/settling.rs`): a gRPC
//! answer is HTTP `200` whatever happened, and the filter settles it as the HTTP status gRPC's
//! mapping gives its `grpc-status`. `/test.Echo/FirstFails` (tests/grpc/server.py) fails the first
//! time it runs for a request and answers OK afterwards: an `UNAVAILABLE` first answer frees the
//! key, so a retry with the same key runs the service again and its OK is what later retries get
//! replayed; a `DEADLINE_EXCEEDED` one is kept and replayed, and the service is not run again.

use serde_json::{json, Value};

use crate::harness::*;
use crate::replay::replayed;
use crate::support::*;

const FIRST_FAILS: &str = "/test.Echo/FirstFails";

fn call(envoy: &Envoy, message: &[u8], key: &str) -> Value {
    call_direct(envoy.port, FIRST_FAILS, &[message], Some(key))
}

/// `UNAVAILABLE` first (as `message` has the service send it), then OK run again for the same
/// key, then that OK replayed; `before` is how many runs the service counted before.
fn unavailable_frees_the_key(service: &Service, envoy: &Envoy, message: &[u8], key: &str) {
    let before = service.calls();
    let first = call(envoy, message, key);
    assert_eq!(first["code"], "UNAVAILABLE", "{first}");
    assert_eq!(first["details"], "first run", "{first}");
    assert_eq!(
        metadata(&first, "trailing", "x-why"),
        Some("first"),
        "{first}"
    );
    assert!(!replayed(&first), "{first}");
    assert_eq!(service.calls(), before + 1);

    // The key was freed: the retry runs the service again and gets its OK.
    let second = call(envoy, message, key);
    assert_eq!(second["code"], "OK", "{second}");
    assert_eq!(second["answer"], hex(&[b"answer:", message].concat()));
    assert!(
        !replayed(&second),
        "the retry ran, it is no replay: {second}"
    );
    assert_eq!(service.calls(), before + 2, "UNAVAILABLE freed the key");

    // The OK is kept: a third call gets it replayed and the service does not run.
    let third = call(envoy, message, key);
    assert_eq!(third["code"], "OK", "{third}");
    assert_eq!(third["answer"], second["answer"], "{third}");
    assert!(replayed(&third), "{third}");
    assert_eq!(service.calls(), before + 2, "the OK was replayed");
}

/// A `DEADLINE_EXCEEDED` first answer is kept whatever its mapping (`504`): replayed, not run again.
fn deadline_exceeded_is_kept(service: &Service, envoy: &Envoy, message: &[u8], key: &str) {
    let before = service.calls();
    let first = call(envoy, message, key);
    assert_eq!(first["code"], "DEADLINE_EXCEEDED", "{first}");
    let retry = call(envoy, message, key);
    assert_eq!(retry["code"], "DEADLINE_EXCEEDED", "{retry}");
    assert_eq!(retry["details"], "first run", "{retry}");
    assert_eq!(
        metadata(&retry, "trailing", "x-why"),
        Some("first"),
        "{retry}"
    );
    assert!(replayed(&retry), "{retry}");
    assert_eq!(service.calls(), before + 1, "DEADLINE_EXCEEDED was kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_from_the_service_frees_the_key_and_deadline_exceeded_is_kept() {
    let service = Service::start();
    let envoy = routed_envoy(&service, json!({"exact": FIRST_FAILS})).await;
    // Trailers-only (`context.abort`): the status is in the answer's one header block.
    unavailable_frees_the_key(&service, &envoy, b"UNAVAILABLE:only", "u1");
    // After initial metadata and a message: the status is in the trailers.
    unavailable_frees_the_key(&service, &envoy, b"UNAVAILABLE:late", "u2");
    deadline_exceeded_is_kept(&service, &envoy, b"DEADLINE_EXCEEDED:only", "d1");
    deadline_exceeded_is_kept(&service, &envoy, b"DEADLINE_EXCEEDED:late", "d2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_execution_settles_on_the_services_status_too() {
    let service = Service::start();
    let rule = detached_rule(json!({"exact": FIRST_FAILS}));
    let envoy = routed_envoy(&service, rule).await;
    unavailable_frees_the_key(&service, &envoy, b"UNAVAILABLE:only", "du1");
    unavailable_frees_the_key(&service, &envoy, b"UNAVAILABLE:late", "du2");
    deadline_exceeded_is_kept(&service, &envoy, b"DEADLINE_EXCEEDED:only", "dd1");
    assert_eq!(envoy.counter("detached_executed").await, 5);
}
