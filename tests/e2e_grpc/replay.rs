//! Routed replays (README, "Routed replays"): a `grpcio` client's retry with the same key gets the
//! first call's answer whole (message, initial and trailing metadata, a stored error) through the
//! replay listener of the same Envoy, and the service runs once.

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::*;

pub const FAIL: &str = "/test.Echo/Fail";

/// The metadata a client sees, without what Envoy sets anew on every answer.
pub fn stable(outcome: &Value, part: &str) -> Vec<(String, String)> {
    outcome[part]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "date" | "x-envoy-upstream-service-time" | "idempotent-replayed"
            )
        })
        .collect()
}

pub fn replayed(outcome: &Value) -> bool {
    ["initial", "trailing"]
        .iter()
        .any(|part| metadata(outcome, part, "idempotent-replayed") == Some("true"))
}

/// The retry's answer is the first's, marked replayed.
fn assert_same_answer(first: &Value, retry: &Value) {
    for field in ["code", "details", "answer"] {
        assert_eq!(first[field], retry[field], "{field}: {first} / {retry}");
    }
    assert_eq!(stable(first, "initial"), stable(retry, "initial"));
    assert_eq!(stable(first, "trailing"), stable(retry, "trailing"));
    assert!(replayed(retry), "{retry}");
    assert!(!replayed(first), "{first}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_gets_the_stored_answer_and_a_stored_error_through_the_replay_listener() {
    let service = Service::start();
    let rule = json!({"prefix": "/test.Echo/"});
    let envoy = routed_envoy(&service, rule).await;

    let first = call_direct(envoy.port, CALL, &[b"pay-1"], Some("r1"));
    assert_eq!(first["code"], "OK", "{first}");
    assert_eq!(
        metadata(&first, "trailing", "x-trailer-bin"),
        Some("000102")
    );
    let retry = call_direct(envoy.port, CALL, &[b"pay-1"], Some("r1"));
    assert_same_answer(&first, &retry);
    assert_eq!(
        metadata(&retry, "initial", "idempotent-replayed"),
        Some("true")
    );
    assert_eq!(service.calls(), 1, "the service ran once");

    // A stored error is one header block: replayed as the same status, message and metadata.
    let failed = call_direct(envoy.port, FAIL, &[b"x"], Some("e1"));
    assert_eq!(failed["code"], "FAILED_PRECONDITION", "{failed}");
    assert_eq!(failed["details"], "nope: x");
    assert_eq!(metadata(&failed, "trailing", "x-why"), Some("w1"));
    let again = call_direct(envoy.port, FAIL, &[b"x"], Some("e1"));
    assert_same_answer(&failed, &again);
    assert_eq!(service.calls(), 2, "the failed call ran once");
    assert_eq!(envoy.metric("replayed").await, Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_gateway_replays_a_record_from_the_key_store() {
    let service = Service::start();
    let gateways = SharedGateways::start(&service).await;
    let (a, b) = (&gateways.a, &gateways.b);
    let first = call_direct(a.port, CALL, &[b"pay-2"], Some("k2"));
    assert_eq!(first["code"], "OK", "{first}");
    // B's L1 is empty: the record comes from the key store, into L1, then to the listener.
    let retry = call_direct(b.port, CALL, &[b"pay-2"], Some("k2"));
    assert_same_answer(&first, &retry);
    assert_eq!(service.calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_replay_listener_down_a_retry_is_unavailable_and_not_replayed() {
    let service = Service::start();
    let options = options(&service, json!({"exact": CALL}), routed, |o| {
        o.replay_listener(ReplayListener::Unreachable(closed_port()))
    });
    let envoy = Envoy::start(&options).await;
    let first = call_direct(envoy.port, CALL, &[b"pay-3"], Some("k3"));
    assert_eq!(first["code"], "OK", "{first}");
    let retry = call_direct(envoy.port, CALL, &[b"pay-3"], Some("k3"));
    assert_eq!(retry["code"], "UNAVAILABLE", "{retry}");
    assert!(!replayed(&retry), "{retry}");
    assert_eq!(service.calls(), 1, "never executed twice");
    assert_eq!(envoy.metric("replayed").await.unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replay_listener_refuses_a_request_without_a_valid_ticket() {
    let service = Service::start();
    let options = options(&service, json!({"exact": CALL}), routed, |o| {
        o.replay_listener(ReplayListener::Internal)
    });
    // A stand-in for another local process reaching the listener: a route any client can take
    // by a header, which the shipped configs do not have.
    let forge = r#"
              - match: { prefix: "/", headers: [{ name: x-forge, present_match: true }] }
                route: { cluster: idempotency_replay }"#;
    let bootstrap = options.bootstrap.clone().unwrap();
    let bootstrap = bootstrap.replacen(
        "              routes:",
        &format!("              routes:{forge}"),
        1,
    );
    let envoy = Envoy::start(&EnvoyOptions {
        bootstrap: Some(bootstrap),
        ..options
    })
    .await;
    let first = call_direct(envoy.port, CALL, &[b"pay-4"], Some("k4"));
    assert_eq!(first["code"], "OK", "{first}");

    let http = reqwest::Client::new();
    let key = "ab".repeat(32);
    for ticket in [None, Some(format!("{key}.1.{}", "00".repeat(32)))] {
        let mut req = http
            // A path the outer filter does not cover, so that only the listener's filter decides.
            .post(envoy.url("/forge"))
            .header("x-forge", "1")
            .header("content-type", "application/x-idempotency-replay")
            .body("x");
        if let Some(ticket) = &ticket {
            req = req.header("x-idempotency-replay", ticket);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "ticket {ticket:?}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("replay-refused"), "{body}");
    }
    assert_eq!(service.calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_from_a_message_field_replays_too() {
    let service = Service::start();
    let envoy = routed_envoy(&service, json!({"exact": CALL, "key_field": 1})).await;
    // Field 1 "req-9", field 2 "pay".
    let message = b"\x0a\x05req-9\x12\x03pay";
    let first = call_direct(envoy.port, CALL, &[message], None);
    assert_eq!(first["code"], "OK", "{first}");
    let retry = call_direct(envoy.port, CALL, &[message], None);
    assert_same_answer(&first, &retry);
    assert_eq!(service.calls(), 1);
}
