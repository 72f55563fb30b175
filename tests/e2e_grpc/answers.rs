//! Answers the root context sends to gRPC callers (README, "gRPC"): a detached execution's first
//! answer and a waiting duplicate's replay go through the replay listener with `routed_replay`
//! on, so the client gets the service's message and metadata, not a trailers-only `UNKNOWN`.

use serde_json::{json, Value};

use crate::harness::*;
use crate::replay::{replayed, stable, FAIL};
use crate::support::*;

/// The service's metadata in an answer through Envoy: without what Envoy (`server`) and the
/// filter (`idempotency-expires`) add to every answer it passes on.
fn services(outcome: &Value, part: &str) -> Vec<(String, String)> {
    let mut pairs = stable(outcome, part);
    pairs.retain(|(name, _)| name != "server" && name != "idempotency-expires");
    pairs
}

/// `through` (an answer through Envoy) is `original` (the service's own) exactly: code,
/// message, initial and trailing metadata.
fn assert_is(original: &Value, through: &Value) {
    for field in ["code", "details", "answer"] {
        assert_eq!(
            original[field], through[field],
            "{field}: {original} / {through}"
        );
    }
    assert_eq!(stable(original, "initial"), services(through, "initial"));
    assert_eq!(stable(original, "trailing"), services(through, "trailing"));
}

fn detached(service: &Service, routed_on: bool) -> EnvoyOptions {
    let rule = detached_rule(json!({"prefix": "/test.Echo/"}));
    options(
        service,
        rule,
        |p| if routed_on { routed(p) } else { p },
        |o| o.replay_listener(ReplayListener::Internal),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_first_answer_and_its_replay_are_the_services_answer() {
    let service = Service::start();
    let envoy = Envoy::start(&detached(&service, true)).await;
    // The original: the service's own answer, asked directly.
    let original = call_direct(service.port, CALL, &[b"d-1"], None);
    assert_eq!(original["code"], "OK", "{original}");

    let first = call_direct(envoy.port, CALL, &[b"d-1"], Some("d1"));
    assert_is(&original, &first);
    assert!(!replayed(&first), "a first answer is not a replay: {first}");
    let retry = call_direct(envoy.port, CALL, &[b"d-1"], Some("d1"));
    assert_is(&original, &retry);
    assert!(replayed(&retry), "{retry}");
    assert_eq!(service.calls(), 2, "once directly, once for the key");
    assert_eq!(envoy.counter("detached_executed").await, 1);

    // A stored error (one header block) the same way.
    let original = call_direct(service.port, FAIL, &[b"e"], None);
    assert_eq!(original["code"], "FAILED_PRECONDITION", "{original}");
    let first = call_direct(envoy.port, FAIL, &[b"e"], Some("e1"));
    assert_is(&original, &first);
    assert!(!replayed(&first), "{first}");
    let retry = call_direct(envoy.port, FAIL, &[b"e"], Some("e1"));
    assert_is(&original, &retry);
    assert!(replayed(&retry), "{retry}");
    assert_eq!(service.calls(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_routed_replay_a_detached_first_answer_is_a_trailers_only_local_reply() {
    // Documented (README, "gRPC"): Envoy sends a local reply to a gRPC call trailers-only.
    let service = Service::start();
    let envoy = Envoy::start(&detached(&service, false)).await;
    let first = call_direct(envoy.port, CALL, &[b"d-2"], Some("d2"));
    assert_eq!(first["code"], "UNKNOWN", "{first}");
    assert_eq!(first["answer"], Value::Null);
    assert_eq!(service.calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_duplicate_gets_the_first_calls_answer_through_the_listener() {
    let service = Service::start();
    let rule = json!({"exact": CALL, "in_flight": "wait", "max_wait_ms": 10000});
    let envoy = routed_envoy(&service, rule).await;
    let first = crate::harness::client(envoy.port, CALL, &[b"hold-w"], Some("w1"))
        .spawn()
        .unwrap();
    assert_eq!(service.wait_for("STARTED "), hex(b"hold-w"));
    let duplicate = crate::harness::client(envoy.port, CALL, &[b"hold-w"], Some("w1"))
        .spawn()
        .unwrap();
    // The duplicate is held by the filter (counted) before the first is let go.
    let waited = async {
        while envoy.metric("waited").await.unwrap_or(0) < 1 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), waited)
        .await
        .expect("the duplicate never waited");
    call_direct(service.port, "/test.Echo/Release", &[b""], None);
    let first = outcome(first.wait_with_output().unwrap());
    let duplicate = outcome(duplicate.wait_with_output().unwrap());
    assert_eq!(first["code"], "OK", "{first}");
    for field in ["code", "details", "answer"] {
        assert_eq!(
            first[field], duplicate[field],
            "{field}: {first} / {duplicate}"
        );
    }
    assert_eq!(stable(&first, "initial"), stable(&duplicate, "initial"));
    assert_eq!(stable(&first, "trailing"), stable(&duplicate, "trailing"));
    assert!(replayed(&duplicate), "{duplicate}");
    assert_eq!(service.calls(), 1);
    assert_eq!(envoy.counter("wait_replayed").await, 1);
}
