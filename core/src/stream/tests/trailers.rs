//! Answers with trailers (HTTP/2, gRPC): the trailers, and whether the answer was trailers-only,
//! are kept in the record the key store gets, and count toward what may be kept.

use super::keystore::{claimed, CFG};
use super::*;
use crate::record::StoredResponse;

fn grpc_headers(extra: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let mut headers = vec![
        (":status".to_string(), b"200".to_vec()),
        ("content-type".to_string(), b"application/grpc".to_vec()),
    ];
    headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_vec())));
    headers
}

fn trailers() -> Vec<(String, Vec<u8>)> {
    vec![
        ("grpc-status".into(), b"0".to_vec()),
        ("grpc-message".into(), Vec::new()),
        ("x-trailer-meta".into(), b"t1".to_vec()),
        ("x-bin-bin".into(), b"AAEC".to_vec()),
    ]
}

/// The response the record the stream sent to the key store holds.
fn stored(h: &FakeHost) -> Outcome {
    let (_, complete) = h.last_callout().unwrap();
    crate::testing::record_of_complete(&complete.body).outcome
}

#[test]
fn a_message_then_trailers_is_kept_whole() {
    let w = World::new(CFG);
    let (mut s, mut h) = claimed(&w, "k", "T1");
    let message = b"\0\0\0\0\x02hi".to_vec();
    h.response_headers = grpc_headers(&[]);
    h.response_body = message.clone();
    h.response_trailers = trailers();
    assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
    // The message streams on to the client; the trailers are the end that waits.
    assert_eq!(s.on_response_body(&h, message.len(), false), Flow::Continue);
    assert_eq!(
        s.on_response_trailers(&h),
        Flow::Pause,
        "waits for the write"
    );
    assert_eq!(
        stored(&h),
        Outcome::Replayable(StoredResponse {
            status: 200,
            headers: vec![("content-type".into(), b"application/grpc".to_vec())],
            body: message,
            trailers: trailers(),
            trailers_only: false,
        })
    );
}

#[test]
fn a_trailers_only_error_is_kept_as_such() {
    let w = World::new(CFG);
    let (mut s, mut h) = claimed(&w, "k", "T1");
    h.response_headers = grpc_headers(&[("grpc-status", b"9"), ("grpc-message", b"nope: x")]);
    assert_eq!(s.on_response_headers(&h, true), Flow::Pause);
    let Outcome::Replayable(response) = stored(&h) else {
        panic!("not replayable")
    };
    assert!(response.trailers_only);
    assert!(response.body.is_empty() && response.trailers.is_empty());
    assert_eq!(response.headers[1], ("grpc-status".into(), b"9".to_vec()));
}

#[test]
fn trailers_count_toward_max_response_bytes() {
    let cfg = CFG.replacen('{', r#"{"max_response_bytes":40,"#, 1);
    let w = World::new(&cfg);
    let (mut s, mut h) = claimed(&w, "k", "T1");
    // 28 bytes of headers and 5 of body fit; the trailers (53 bytes) do not.
    h.response_headers = grpc_headers(&[]);
    h.response_body = b"\0\0\0\0\0".to_vec();
    h.response_trailers = trailers();
    s.on_response_headers(&h, false);
    assert_eq!(s.on_response_body(&h, 5, false), Flow::Continue);
    s.on_response_trailers(&h);
    assert_eq!(stored(&h), Outcome::NotReplayable);
    assert_eq!(h.count_of(Metric::NotReplayable), 1);
}

/// Sends `req` over `protocol` (Envoy's `request.protocol`), as [`World::send`] does.
fn send_over(w: &World, req: &Req, protocol: &str) -> (Stream, FakeHost) {
    let mut host = w.host(req);
    host.properties.insert(
        vec!["request".to_string(), "protocol".to_string()],
        protocol.as_bytes().to_vec(),
    );
    let mut stream = Stream::new(w.worker.clone());
    stream.on_request_headers(&host, false);
    if host.sent.borrow().is_empty() {
        stream.on_request_body(&host, req.body.len(), true);
    }
    (stream, host)
}

#[test]
fn an_http2_replay_with_a_body_carries_the_stored_trailers() {
    let w = World::new("{}");
    let (mut s, mut h) = send_over(&w, &post("k", b"a"), "HTTP/2");
    h.response_headers = grpc_headers(&[]);
    h.response_headers[1].1 = b"application/json".to_vec();
    h.response_body = b"{}".to_vec();
    h.response_trailers = trailers();
    s.on_response_headers(&h, false);
    s.on_response_body(&h, 2, false);
    assert_eq!(s.on_response_trailers(&h), Flow::Continue, "kept in L1");
    assert!(h.response_trailers_added.borrow().is_empty());

    for (protocol, expected) in [("HTTP/2", trailers()), ("HTTP/1.1", Vec::new())] {
        let (mut s, mut h) = send_over(&w, &post("k", b"a"), protocol);
        let sent = h.last_sent().unwrap();
        assert_eq!((sent.status, sent.body.as_slice()), (200, &b"{}"[..]));
        // The local reply passes back through the response callbacks.
        h.response_headers = vec![(":status".into(), b"200".to_vec())];
        s.on_response_headers(&h, false);
        assert!(
            h.response_trailers_added.borrow().is_empty(),
            "not before the body"
        );
        s.on_response_body(&h, 2, true);
        assert_eq!(*h.response_trailers_added.borrow(), expected, "{protocol}");
    }
}

#[test]
fn a_detached_answer_keeps_its_trailers_and_its_client_gets_them() {
    use super::detached::{answers, start, DETACHED};
    let w = World::new(DETACHED);
    let (mut s, mut h, _) = start(&w, "k");
    h.properties.insert(
        vec!["request".to_string(), "protocol".to_string()],
        b"HTTP/2".to_vec(),
    );
    let headers = vec![(":status".to_string(), b"200".to_vec())];
    let (_, actions) = w.worker.on_reply_with_trailers(
        40,
        Some(200),
        (headers, b"{}".to_vec(), trailers()),
        &w.shared,
        w.clock.get(),
    );
    let answer = answers(&actions)[0].clone();
    assert_eq!(answer.trailers, trailers());
    // The root context hands them over as it sends the reply; the stream's body callback adds them.
    w.worker
        .trailers
        .hand(answer.stream_id, answer.body.len(), &answer.trailers);
    s.on_response_headers(&h, false);
    s.on_response_body(&h, 2, true);
    assert_eq!(*h.response_trailers_added.borrow(), trailers());
    assert!(w.worker.trailers.is_empty());
    // A retry replays them too.
    s.on_done(&h);
    let (mut s, retry) = send_over(&w, &post("k", b"{\"amount\":1}"), "HTTP/2");
    assert_eq!(retry.last_sent().unwrap().body, b"{}");
    s.on_response_headers(&retry, false);
    s.on_response_body(&retry, 2, true);
    assert_eq!(*retry.response_trailers_added.borrow(), trailers());
}

#[test]
fn a_bodiless_detached_answer_gets_its_content_type_back_in_place() {
    use super::detached::{answers, start, DETACHED};
    let w = World::new(DETACHED);
    let (mut s, mut h, _) = start(&w, "k");
    let headers = vec![
        (":status".to_string(), b"201".to_vec()),
        ("content-type".to_string(), b"application/json".to_vec()),
        ("content-length".to_string(), b"0".to_vec()),
    ];
    let actions = w.reply(40, Some(201), headers, b"");
    let answer = answers(&actions)[0].clone();
    assert!(answer.body.is_empty());
    // The root context hands the headers over as it sends the reply.
    let handover = &w.worker.trailers;
    handover.hand(answer.stream_id, answer.body.len(), &answer.trailers);
    handover.hand_bodiless(answer.stream_id, answer.body.len(), &answer.headers);
    // What the stream sees of that reply: no `content-type`, no `content-length`.
    h.response_headers = answer
        .headers
        .iter()
        .filter(|(n, _)| n != "content-type" && n != "content-length")
        .cloned()
        .collect();
    s.on_response_headers(&h, true);
    let set = h.response_headers_set.borrow().clone();
    assert_eq!(
        set.first(),
        Some(&("content-type".to_string(), b"application/json".to_vec())),
        "{set:?}"
    );
    // Every field the answer had after `content-type` is set again after it, in order.
    let after: Vec<(String, Vec<u8>)> = answer
        .headers
        .iter()
        .skip_while(|(n, _)| n != "content-type")
        .skip(1)
        .cloned()
        .collect();
    assert_eq!(
        after.first().map(|(n, _)| n.as_str()),
        Some("content-length")
    );
    assert_eq!(set.get(1..), Some(after.as_slice()));
    assert!(w.worker.trailers.is_empty());
}
