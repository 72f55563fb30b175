//! gRPC clients as they retry (README, "gRPC"): deadlines that pass while the first call runs,
//! a retry policy that retries `UNAVAILABLE` (with the filter's pushback), concurrent duplicates
//! on one and on two gateways. Whatever the timing, the service runs once per key and every `OK`
//! answer is the first call's. The service's slow calls finish whether or not their caller is
//! still there (tests/grpc/server.py).

use serde_json::{json, Value};

use crate::harness::*;
use crate::replay::{replayed, stable};
use crate::support::*;

const SLOW: &[u8] = b"slow-pay";
/// A call the service takes 3 s over.
const SLOTH: &[u8] = b"sloth-pay";

/// The answer `SLOW` gets from the service.
fn slow_answer() -> Value {
    json!(hex(b"answer:slow-pay"))
}

/// The answer `SLOTH` gets from the service.
fn sloth_answer() -> Value {
    json!(hex(b"answer:sloth-pay"))
}

/// Every outcome is `OK` with the same message and metadata.
fn assert_all_the_same_ok(outcomes: &[Value]) {
    assert_all_the_same_ok_to(outcomes, &slow_answer());
}

/// Every outcome is `OK` with `answer` and the same metadata.
fn assert_all_the_same_ok_to(outcomes: &[Value], answer: &Value) {
    let first = &outcomes[0];
    for o in outcomes {
        assert_eq!(o["code"], "OK", "{o}");
        assert_eq!(&o["answer"], answer, "{o}");
        assert_eq!(stable(o, "trailing"), stable(first, "trailing"), "{o}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_passes_during_a_detached_call_and_the_retries_get_the_stored_answer() {
    let service = Service::start();
    let rule = detached_rule(json!({"exact": CALL}));
    let envoy = routed_envoy(&service, rule).await;
    let port = [envoy.port];
    // The client gives up after 0.5 s; the call takes 3 s and is executed detached (3 s, not
    // 1.5: the retry's client process must start while the call still runs, also on a loaded
    // machine).
    let gone = calls(&port, CALL, SLOTH, "d-slow", 1, 0.5, true);
    assert_eq!(gone[0]["code"], "DEADLINE_EXCEEDED", "{}", gone[0]);
    // The retry's first attempt finds the key in flight (UNAVAILABLE, pushback 1000 ms); the
    // policy retries after the pushback and gets the stored answer.
    let retry = calls(&port, CALL, SLOTH, "d-slow", 1, 10.0, true);
    assert_all_the_same_ok_to(&retry, &sloth_answer());
    assert!(replayed(&retry[0]), "{}", retry[0]);
    assert!(
        envoy.counter("conflict").await >= 1,
        "an attempt was in flight"
    );
    assert_eq!(service.calls(), 1, "the service ran once");
    // Without a retry policy, the in-flight status itself.
    let started = calls(&port, CALL, b"sloth-2", "d-slow-2", 1, 0.3, false);
    assert_eq!(started[0]["code"], "DEADLINE_EXCEEDED", "{}", started[0]);
    let no_policy = calls(&port, CALL, b"sloth-2", "d-slow-2", 1, 10.0, false);
    assert_eq!(no_policy[0]["code"], "UNAVAILABLE", "{}", no_policy[0]);
    assert_eq!(
        metadata(&no_policy[0], "trailing", "grpc-retry-pushback-ms"),
        Some("1000")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_passes_during_an_inline_call_and_the_retries_get_outcome_unknown() {
    let service = Service::start();
    let options = options(
        &service,
        json!({"exact": CALL}),
        |p| routed(p).set("unknown_hold_ms", 1000),
        |o| o.replay_listener(ReplayListener::Internal),
    );
    let envoy = Envoy::start(&options).await;
    let port = [envoy.port];
    // The client leaves while its call is at the service: the answer never reaches the
    // gateway, so whether it executed is unknown (README, "A client that timed out").
    let gone = calls(&port, CALL, SLOW, "i-slow", 1, 0.5, true);
    assert_eq!(gone[0]["code"], "DEADLINE_EXCEEDED", "{}", gone[0]);
    // The service got the client's deadline too (`grpc-timeout`) and answers DEADLINE_EXCEEDED
    // at about the moment the client leaves: whichever reaches the gateway first decides. The
    // client's cancel: outcome unknown, retried through the hold (UNAVAILABLE with the hold's
    // pushback), then the terminal status nothing retries, UNKNOWN. The service's status: that
    // is its answer, stored and replayed (README, "gRPC").
    let retry = calls(&port, CALL, SLOW, "i-slow", 1, 10.0, true);
    let retry = &retry[0];
    let unknown = retry["code"] == "UNKNOWN"
        && retry["details"]
            .as_str()
            .unwrap()
            .contains("may have executed");
    let stored = retry["code"] == "DEADLINE_EXCEEDED" && replayed(retry);
    assert!(unknown || stored, "{retry}");
    assert_eq!(service.calls(), 1, "never executed twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_duplicates_run_the_service_once_and_get_the_same_answer() {
    let service = Service::start();
    // Duplicates wait at the gateway (no key store) and are answered by the root context
    // through the replay listener, more than one callback's worth of them.
    let rule = json!({"exact": CALL, "in_flight": "wait", "max_wait_ms": 10000});
    let envoy = routed_envoy(&service, rule).await;
    let outcomes = calls(&[envoy.port], CALL, SLOW, "many", 20, 15.0, true);
    assert_all_the_same_ok(&outcomes);
    let replays = outcomes.iter().filter(|o| replayed(o)).count();
    assert_eq!(replays, 19, "all but the first are replays");
    assert_eq!(service.calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_on_two_gateways_sharing_a_key_store_run_the_service_once() {
    let service = Service::start();
    let gateways = SharedGateways::start(&service).await;
    let (a, b) = (&gateways.a, &gateways.b);
    // 20 callers, alternating gateways; the losers get UNAVAILABLE (in flight, pushback) and
    // their retry policy comes back for the stored answer.
    let outcomes = calls(&[a.port, b.port], CALL, SLOW, "shared", 20, 15.0, true);
    assert_all_the_same_ok(&outcomes);
    assert_eq!(outcomes.iter().filter(|o| replayed(o)).count(), 19);
    assert_eq!(service.calls(), 1);
    let replays = a.counter("replayed").await + b.counter("replayed").await;
    assert_eq!(replays, 19);
}
