//! gRPC callers through a real Envoy (h2c in, HTTP/2 to the service) and a real `grpcio` service
//! and client (tests/grpc/, raw-bytes methods): the filter's own answers arrive as gRPC statuses
//! (README, "gRPC"), and the service runs once per key. `replay.rs`: retries through the replay
//! listener; `answers.rs`: the root context's answers (detached first answer, waiting duplicate)
//! through it; `retries.rs`: deadlines, a retry policy, concurrent duplicates, two gateways;
//! `settling.rs`: a service's own status settles the key (`UNAVAILABLE` frees it).
//! Needs `.venv/bin/python` with `grpcio` (scripts/setup.sh).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod answers;
mod harness;
mod replay;
mod retries;
mod settling;
#[path = "../support/mod.rs"]
mod support;

use harness::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn the_filter_answers_grpc_callers_with_grpc_statuses() {
    let service = Service::start();
    let envoy = envoy(&service, json!({"exact": CALL})).await;
    let via_envoy =
        |message: &[u8], key: Option<&str>| call_direct(envoy.port, CALL, &[message], key);

    // No key: INVALID_ARGUMENT, with the reason in the message, and nothing ran.
    let missing = via_envoy(b"m", None);
    assert_eq!(missing["code"], "INVALID_ARGUMENT", "{missing}");
    assert!(
        missing["details"]
            .as_str()
            .unwrap()
            .starts_with("Idempotency-Key is missing: "),
        "{missing}"
    );
    assert_eq!(missing["answer"], Value::Null);
    let invalid = via_envoy(b"m", Some("\"unterminated"));
    assert_eq!(invalid["code"], "INVALID_ARGUMENT", "{invalid}");
    assert_eq!(service.calls(), 0);

    // A first call held in the service; a duplicate meanwhile is told to come back later.
    let first = client(envoy.port, CALL, &[b"hold-1"], Some("key-1"))
        .spawn()
        .unwrap();
    assert_eq!(service.wait_for("STARTED "), hex(b"hold-1"));
    let duplicate = via_envoy(b"hold-1", Some("key-1"));
    assert_eq!(duplicate["code"], "UNAVAILABLE", "{duplicate}");
    assert!(
        duplicate["details"]
            .as_str()
            .unwrap()
            .contains("still being processed"),
        "{duplicate}"
    );
    // Server pushback: a retry policy waits this long (gRPC passes it on as trailing metadata).
    assert_eq!(
        metadata(&duplicate, "trailing", "grpc-retry-pushback-ms"),
        Some("1000"),
        "{duplicate}"
    );
    // The key reused with another message: ALREADY_EXISTS, which no retry policy retries.
    let reused = via_envoy(b"other", Some("key-1"));
    assert_eq!(reused["code"], "ALREADY_EXISTS", "{reused}");

    call_direct(service.port, "/test.Echo/Release", &[b""], None);
    let first = outcome(first.wait_with_output().unwrap());
    assert_eq!(first["code"], "OK", "{first}");
    assert_eq!(first["answer"], hex(b"answer:hold-1"));
    assert_eq!(metadata(&first, "trailing", "x-trailer"), Some("t1"));

    // Once per key: a retry after completion does not run the service again.
    let _ = via_envoy(b"hold-1", Some("key-1"));
    assert_eq!(service.calls(), 1, "the service ran once for key-1");
    let other = via_envoy(b"second", Some("key-2"));
    assert_eq!(other["code"], "OK", "{other}");
    assert_eq!(service.calls(), 2);
}

/// A request message with the key in field 1 (if any) and `payload` in field 2.
fn message(key: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    if let Some(key) = key {
        m.extend([0x0a, u8::try_from(key.len()).unwrap()]);
        m.extend(key.as_bytes());
    }
    m.extend([0x12, u8::try_from(payload.len()).unwrap()]);
    m.extend(payload);
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_can_come_from_a_message_field() {
    let service = Service::start();
    let envoy = envoy(&service, json!({"exact": CALL, "key_field": 1})).await;
    let via_envoy = |message: &[u8]| call_direct(envoy.port, CALL, &[message], None);

    let first_message = message(Some("req-1"), b"hold");
    let first = client(envoy.port, CALL, &[&first_message], None)
        .spawn()
        .unwrap();
    assert_eq!(service.wait_for("STARTED "), hex(&first_message));
    let duplicate = via_envoy(&first_message);
    assert_eq!(duplicate["code"], "UNAVAILABLE", "{duplicate}");
    let reused = via_envoy(&message(Some("req-1"), b"other"));
    assert_eq!(reused["code"], "ALREADY_EXISTS", "{reused}");
    let no_key = via_envoy(&message(None, b"x"));
    assert_eq!(no_key["code"], "INVALID_ARGUMENT", "{no_key}");
    assert!(
        no_key["details"]
            .as_str()
            .unwrap()
            .contains("no key in field 1"),
        "{no_key}"
    );
    let not_a_string = via_envoy(&[0x08, 0x01]);
    assert_eq!(not_a_string["code"], "INVALID_ARGUMENT", "{not_a_string}");

    call_direct(service.port, "/test.Echo/Release", &[b""], None);
    let first = outcome(first.wait_with_output().unwrap());
    assert_eq!(first["code"], "OK", "{first}");
    let _ = via_envoy(&first_message);
    assert_eq!(service.calls(), 1, "the service ran once for req-1");
    let second = via_envoy(&message(Some("req-2"), b"free"));
    assert_eq!(second["code"], "OK", "{second}");
    assert_eq!(service.calls(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_stream_passes_through_counted() {
    let service = Service::start();
    let envoy = envoy(&service, json!({"prefix": "/test.Echo/"})).await;
    let messages: [&[u8]; 2] = [b"one", b"two"];
    for round in 1..=2 {
        let answer = call_direct(envoy.port, "/test.Echo/Collect", &messages, Some("key-s"));
        assert_eq!(answer["code"], "OK", "{answer}");
        assert_eq!(answer["answer"], hex(b"one+two"));
        assert_eq!(
            service.calls(),
            round,
            "a stream is never held back or replayed"
        );
    }
    assert_eq!(envoy.metric("grpc_streaming").await, Some(2));
    // A unary call on the same route and key still runs: the stream claimed nothing.
    let unary = call_direct(envoy.port, CALL, &[b"u"], Some("key-s"));
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(service.calls(), 3);
}
