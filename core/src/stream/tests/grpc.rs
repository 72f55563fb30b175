//! One Envoy, no key store: a gRPC caller (`content-type: application/grpc`) gets the filter's
//! own answers as trailers-only gRPC statuses; a replay and a plain HTTP caller are unchanged.

use super::*;

fn grpc_status(sent: &Sent) -> (u8, String, Option<String>) {
    assert_eq!(sent.status, 200, "a gRPC answer is HTTP 200");
    assert!(sent.body.is_empty(), "trailers-only: no body");
    assert_eq!(sent.header("content-type"), Some(&b"application/grpc"[..]));
    let text = |name| {
        sent.header(name)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    (
        text("grpc-status").unwrap().parse().unwrap(),
        text("grpc-message").unwrap(),
        text("grpc-retry-pushback-ms"),
    )
}

#[test]
fn refusals_are_grpc_statuses() {
    let w = World::new(r#"{"routes":[{"prefix":"/","required":true}],"max_body_bytes":4}"#);
    let (_, h, _) = send_as(
        &w,
        &Req {
            key: None,
            ..post("", b"a")
        },
        "application/grpc",
    );
    let (code, message, pushback) = grpc_status(&h.last_sent().unwrap());
    assert_eq!(code, 3, "missing key: INVALID_ARGUMENT");
    assert!(
        message.starts_with("Idempotency-Key is missing: "),
        "{message}"
    );
    assert_eq!(pushback, None);
    let (_, h, _) = send_as(&w, &post("\"bad", b"a"), "application/grpc+proto");
    assert_eq!(grpc_status(&h.last_sent().unwrap()).0, 3);
    let (_, h, _) = send_as(&w, &post("k", b"12345"), "application/grpc");
    assert_eq!(
        grpc_status(&h.last_sent().unwrap()).0,
        8,
        "RESOURCE_EXHAUSTED"
    );
    let (_, h, _) = send_as(
        &w,
        &Req {
            caller: None,
            ..post("k", b"a")
        },
        "application/grpc",
    );
    assert_eq!(
        grpc_status(&h.last_sent().unwrap()).0,
        16,
        "UNAUTHENTICATED"
    );
    // gRPC-Web is not gRPC here: it gets the HTTP problem.
    let (_, h, _) = send_as(
        &w,
        &Req {
            key: None,
            ..post("", b"a")
        },
        "application/grpc-web",
    );
    assert_eq!(h.last_sent().unwrap().status, 400);
}

#[test]
fn in_flight_is_unavailable_with_pushback_and_reuse_is_already_exists() {
    let w = World::new("{}");
    let (mut s, mut h, _) = send_as(&w, &post("k", b"a"), "application/grpc");
    assert!(h.sent.borrow().is_empty(), "the first call runs");
    let (_, h2, _) = send_as(&w, &post("k", b"a"), "application/grpc");
    let (code, message, pushback) = grpc_status(&h2.last_sent().unwrap());
    assert_eq!(code, 14, "in flight: UNAVAILABLE, safe to retry");
    assert_eq!(pushback.as_deref(), Some("1000"));
    assert!(message.contains("still being processed"), "{message}");
    assert_eq!(h2.count_of(Metric::Conflict), 1);
    let (_, h3, _) = send_as(&w, &post("k", b"b"), "application/grpc");
    let (code, _, pushback) = grpc_status(&h3.last_sent().unwrap());
    assert_eq!(code, 6, "another message: ALREADY_EXISTS, never retried");
    assert_eq!(pushback, None);
    // The replay of a stored answer is not a refusal: it is left as it is.
    w.respond(&mut s, &mut h, 200, b"ok");
    let (_, h4, _) = send_as(&w, &post("k", b"a"), "application/grpc");
    let replay = h4.last_sent().unwrap();
    assert_eq!(replay.body, b"ok");
    assert_eq!(replay.header("idempotent-replayed"), Some(&b"true"[..]));
}

#[test]
fn a_held_unknown_outcome_pushes_back_for_its_hold_then_is_unknown() {
    use crate::reply::LocalReply;
    let held = LocalReply::unknown_outcome(5_500, 1_000).for_grpc();
    assert_eq!(held.status, 200);
    let header = |r: &LocalReply, n: &str| {
        r.headers
            .iter()
            .find(|(name, _)| name == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header(&held, "grpc-status"), Some(b"14".to_vec()));
    assert_eq!(
        header(&held, "grpc-retry-pushback-ms"),
        Some(b"4500".to_vec())
    );
    let terminal = LocalReply::unknown_outcome(5_500, 6_000).for_grpc();
    assert_eq!(header(&terminal, "grpc-status"), Some(b"2".to_vec()));
    assert_eq!(header(&terminal, "grpc-retry-pushback-ms"), None);
}

/// One uncompressed gRPC message: field 1 = `key` (if any), field 2 = `payload`.
fn message(key: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    if let Some(key) = key {
        m.extend([0x0a, u8::try_from(key.len()).unwrap()]);
        m.extend(key.as_bytes());
    }
    m.extend([0x12, u8::try_from(payload.len()).unwrap()]);
    m.extend(payload);
    let mut body = vec![0];
    body.extend(u32::try_from(m.len()).unwrap().to_be_bytes());
    body.extend(m);
    body
}

#[test]
fn the_key_can_come_from_a_message_field() {
    let w = World::new(r#"{"routes":[{"prefix":"/","required":true,"key_field":1}]}"#);
    let no_header = |body: &'static [u8]| Req {
        key: None,
        ..post("", body)
    };
    let first = message(Some("req-1"), b"pay 10").leak();
    let (mut s, mut h, flow) = send_as(&w, &no_header(first), "application/grpc");
    assert_eq!(flow, Flow::Continue, "the first call runs");
    assert!(h.sent.borrow().is_empty());
    let (_, h2, _) = send_as(&w, &no_header(first), "application/grpc");
    assert_eq!(grpc_status(&h2.last_sent().unwrap()).0, 14, "in flight");
    let other = message(Some("req-1"), b"pay 99").leak();
    let (_, h3, _) = send_as(&w, &no_header(other), "application/grpc");
    assert_eq!(grpc_status(&h3.last_sent().unwrap()).0, 6, "reused");
    let another_key = message(Some("req-2"), b"pay 10").leak();
    let (_, h4, flow) = send_as(&w, &no_header(another_key), "application/grpc");
    assert_eq!(flow, Flow::Continue, "another key is another request");
    assert!(h4.sent.borrow().is_empty());
    w.respond(&mut s, &mut h, 200, b"ok");
    let (_, h5, _) = send_as(&w, &no_header(first), "application/grpc");
    assert_eq!(h5.last_sent().unwrap().body, b"ok", "replayed");
    // A key header does not stand in for the field.
    let (_, h6, _) = send_as(&w, &post("req-1", first), "application/grpc");
    assert_eq!(h6.last_sent().unwrap().body, b"ok", "the field decides");
}

#[test]
fn a_message_that_gives_no_key_is_invalid_argument_saying_why() {
    let w = World::new(r#"{"routes":[{"prefix":"/","required":true,"key_field":1}]}"#);
    let refused = |body: Vec<u8>| {
        let (_, h, flow) = send_as(
            &w,
            &Req {
                key: None,
                ..post("", body.leak())
            },
            "application/grpc",
        );
        assert_eq!(flow, Flow::Pause);
        let (code, message, _) = grpc_status(&h.last_sent().unwrap());
        assert_eq!(code, 3, "{message}");
        message
    };
    assert!(refused(message(None, b"x")).contains("no key in field 1"));
    let mut compressed = message(Some("k"), b"x");
    compressed[0] = 1;
    assert!(refused(compressed).contains("compressed"));
    let mut two = message(Some("k"), b"x");
    two.extend(message(Some("k"), b"y"));
    assert!(refused(two).contains("more than one message"));
    assert!(refused(b"not grpc at all".to_vec()).contains("field 1"));
    assert!(refused(message(Some("bad\u{1}key"), b"x")).contains("field 1"));
    let mut not_string = vec![0, 0, 0, 0, 2, 0x08, 0x01];
    assert!(refused(std::mem::take(&mut not_string)).contains("not a string"));
    // No body at all.
    let (_, h, _) = {
        let host = w.host(&Req {
            key: None,
            ..post("", b"")
        });
        let mut s = Stream::new(w.worker.clone());
        let flow = s.on_request_headers(&host, true);
        (s, host, flow)
    };
    assert_eq!(h.last_sent().unwrap().status, 400);
}

#[test]
fn a_stream_of_messages_passes_through_counted() {
    let w = World::new(r#"{"routes":[{"prefix":"/","required":true}]}"#);
    let mut two = message(Some("a"), b"1");
    two.extend(message(Some("b"), b"2"));
    let two = two.leak();
    for _ in 0..2 {
        let (_, h, flow) = send_as(&w, &post("k", two), "application/grpc");
        assert_eq!(flow, Flow::Continue, "streams are not held back");
        assert!(h.sent.borrow().is_empty(), "nor answered");
        assert_eq!(h.count_of(Metric::GrpcStreaming), 1);
    }
    // The same key on a unary call is still free: the stream claimed nothing.
    let (_, h, flow) = send_as(
        &w,
        &post("k", message(None, b"1").leak()),
        "application/grpc",
    );
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h.count_of(Metric::GrpcStreaming), 0);
    assert_eq!(h.count_of(Metric::Executed), 1);
    // Not gRPC: the same bytes are an ordinary body.
    let (_, h, _) = send_as(&w, &post("k2", two), "application/octet-stream");
    assert_eq!(h.count_of(Metric::GrpcStreaming), 0);
}

/// The service answers the call `key` with a message and `grpc-status: code` in its trailers, or
/// trailers-only (`code` in the one header block).
fn answer_grpc(w: &World, key: &str, code: &str, trailers_only: bool) {
    let (mut s, mut h, flow) = send_as(w, &post(key, b"a"), "application/grpc");
    assert_eq!(flow, Flow::Continue, "{key}: the first call runs");
    h.response_headers = vec![
        (":status".into(), b"200".to_vec()),
        ("content-type".into(), b"application/grpc".to_vec()),
    ];
    let status = vec![("grpc-status".to_string(), code.as_bytes().to_vec())];
    if trailers_only {
        h.response_headers.extend(status);
        s.on_response_headers(&h, true);
        return;
    }
    h.response_body = b"\0\0\0\0\x01m".to_vec();
    h.response_trailers = status;
    s.on_response_headers(&h, false);
    s.on_response_body(&h, 6, false);
    s.on_response_trailers(&h);
}

#[test]
fn a_grpc_status_that_means_a_5xx_frees_the_key_as_that_5xx_would() {
    let w = World::new("{}");
    for trailers_only in [false, true] {
        // UNAVAILABLE (a 503) and INTERNAL (a 500): not kept, the retry executes.
        for (key, code) in [("unavailable", "14"), ("internal", "13")] {
            let key = format!("{key}-{trailers_only}");
            answer_grpc(&w, &key, code, trailers_only);
            let (_, h, flow) = send_as(&w, &post(&key, b"a"), "application/grpc");
            assert_eq!(flow, Flow::Continue, "{key}: the retry executes");
            assert!(h.sent.borrow().is_empty(), "{key}: no replay");
        }
        // OK and FAILED_PRECONDITION (a 400): kept and replayed.
        for (key, code) in [("ok", "0"), ("precondition", "9")] {
            let key = format!("{key}-{trailers_only}");
            answer_grpc(&w, &key, code, trailers_only);
            let (_, h, _) = send_as(&w, &post(&key, b"a"), "application/grpc");
            let sent = h.last_sent().unwrap_or_else(|| panic!("{key}: replayed"));
            assert_eq!(
                sent.header("idempotent-replayed"),
                Some(&b"true"[..]),
                "{key}"
            );
        }
    }
}
