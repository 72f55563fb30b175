//! Answers the root context sends to gRPC callers (a detached first answer, a waiting duplicate's
//! replay) go through the replay listener when `routed_replay` is on, as a retry's replay does;
//! with it off they stay local replies.

use super::detached::answers;
use super::routed::at_listener;
use super::*;
use crate::background::worker::Answer;
use crate::host::Headers;
use crate::replay::{FILTER_STATE, PATH};
use crate::stream::REPLAYED_HEADER;

const DETACHED_GRPC: &str = r#"{"routed_replay":true,"unknown_hold_ms":1000,"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up","upstream_timeout_ms":900}]}"#;
const WAIT_GRPC: &str =
    r#"{"routed_replay":true,"routes":[{"prefix":"/","in_flight":"wait","max_wait_ms":1000}]}"#;
const MESSAGE: &[u8] = b"\0\0\0\0\x02ok";

fn grpc_headers() -> Headers {
    vec![
        (":status".into(), b"200".to_vec()),
        ("content-type".into(), b"application/grpc".to_vec()),
        ("x-served".into(), b"yes".to_vec()),
    ]
}

fn grpc_trailers() -> Headers {
    vec![
        ("grpc-status".into(), b"0".to_vec()),
        ("x-trailer".into(), b"t1".to_vec()),
    ]
}

/// A detached gRPC call on `w`: the stream (held), its host, and the root's callout token 40.
fn start_grpc(w: &World, key: &str) -> (Stream, FakeHost) {
    let held = w.hold_detached(&post(key, b"m"), Some("application/grpc"));
    w.dispatch();
    held
}

/// The upstream's gRPC answer to the detached callout: the root context's answer to the stream.
fn upstream_answers(w: &World) -> Answer {
    let actions = w.reply_with_trailers(
        40,
        Some(200),
        (grpc_headers(), MESSAGE.to_vec(), grpc_trailers()),
    );
    let answered = answers(&actions);
    assert_eq!(answered.len(), 1);
    answered[0].clone()
}

#[test]
fn a_detached_grpc_first_answer_goes_through_the_listener_without_the_replayed_mark() {
    let w = World::new(DETACHED_GRPC);
    let (mut s, mut h) = start_grpc(&w, "k");
    let answer = upstream_answers(&w);
    assert!(answer.route.as_ref().is_some_and(|r| r.first));
    assert_eq!(w.worker.route_or_answer(&h, answer), None, "routed");
    assert!(h.sent.borrow().is_empty(), "no local reply");
    assert_eq!(h.resumed_request.get(), 1, "the held request goes on");
    assert_eq!(
        h.filter_state.borrow().get(FILTER_STATE).map(Vec::as_slice),
        Some(&b"routed"[..])
    );
    let set = h.request_headers_set.borrow().clone();
    assert!(set.contains(&(":path".into(), PATH.as_bytes().to_vec())));

    // The listener serves the record: the upstream's message, metadata and trailers.
    let (mut ls, lh, _) = at_listener(&w, &h);
    let sent = lh.last_sent().unwrap();
    assert_eq!((sent.status, sent.body.as_slice()), (200, MESSAGE));
    assert_eq!(sent.header("x-served"), Some(&b"yes"[..]));
    ls.on_response_body(&lh, MESSAGE.len(), true);
    assert_eq!(*lh.response_trailers_added.borrow(), grpc_trailers());

    // Back at the outer filter: a first answer, so not marked replayed nor counted as one.
    h.response_headers = sent.headers.clone();
    assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
    assert_eq!(
        *h.response_headers_removed.borrow(),
        vec![REPLAYED_HEADER.to_string()]
    );
    assert_eq!(h.count_of(Metric::Replayed), 0);
    assert!(w.worker.routed.is_empty());
    s.on_done(&h);

    // A retry is a routed replay that keeps the mark.
    let (_, retry, flow) = send_as(&w, &post("k", b"m"), "application/grpc");
    assert_eq!(flow, Flow::Continue, "routed");
    assert!(retry.sent.borrow().is_empty());
}

#[test]
fn without_routed_replay_the_first_answer_stays_a_local_reply() {
    let w = World::new(&DETACHED_GRPC.replace(r#""routed_replay":true,"#, ""));
    let (_s, h) = start_grpc(&w, "k");
    let answer = upstream_answers(&w);
    assert!(answer.route.is_none());
    let left = w.worker.route_or_answer(&h, answer.clone());
    assert_eq!(left, Some(answer), "sent as it is");
    assert_eq!(h.resumed_request.get(), 0);
}

#[test]
fn a_detached_grpc_call_gets_grpc_statuses_for_the_upstreams_endings() {
    let w = World::new(DETACHED_GRPC);
    start_grpc(&w, "slow");
    let actions = w.reply(40, Some(504), vec![], ENVOY_TIMEOUT);
    let answer = answers(&actions)[0].clone();
    assert!(answer.route.is_none(), "nothing replayable to route");
    assert_eq!(answer.status, 200, "trailers-only");
    let status = |a: &Answer| {
        a.headers
            .iter()
            .find(|(n, _)| n == "grpc-status")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(status(&answer), Some(b"4".to_vec()), "DEADLINE_EXCEEDED");

    start_grpc(&w, "down");
    let actions = w.reply(40, Some(503), vec![], ENVOY_REFUSED);
    assert_eq!(
        status(answers(&actions)[0]),
        Some(b"14".to_vec()),
        "UNAVAILABLE"
    );
}

#[test]
fn a_waiting_grpc_duplicate_gets_a_routed_replay() {
    let w = World::new(WAIT_GRPC);
    let (mut first, mut fh, _) = send_as(&w, &post("k", b"a"), "application/grpc");
    let (mut dup, mut dh, flow) = send_as(&w, &post("k", b"a"), "application/grpc");
    assert_eq!(flow, Flow::Pause, "waits");
    fh.response_headers = grpc_headers();
    fh.response_body = MESSAGE.to_vec();
    fh.response_trailers = grpc_trailers();
    first.on_response_headers(&fh, false);
    first.on_response_body(&fh, MESSAGE.len(), false);
    first.on_response_trailers(&fh);

    let actions = w.worker.on_tick(&w.shared, w.clock.get());
    let answer = answers(&actions)[0].clone();
    assert_eq!(answer.stream_id, dh.stream_id.get());
    assert!(answer.route.as_ref().is_some_and(|r| !r.first));
    assert_eq!(w.worker.route_or_answer(&dh, answer), None, "routed");
    assert_eq!(dh.resumed_request.get(), 1);
    let (_, lh, _) = at_listener(&w, &dh);
    let sent = lh.last_sent().unwrap();
    assert_eq!(sent.body, MESSAGE);
    dh.response_headers = sent.headers.clone();
    dup.on_response_headers(&dh, false);
    assert!(
        dh.response_headers_removed.borrow().is_empty(),
        "a replay keeps idempotent-replayed"
    );
    assert!(actions
        .iter()
        .any(|a| matches!(a, RootAction::Count(Metric::WaitReplayed))));

    // A plain HTTP duplicate of a rule without `replay: "routed"` keeps the local reply.
    let (mut p, mut ph, _) = w.send(&post("h", b"a"));
    let (_d, _dh, _) = w.send(&post("h", b"a"));
    w.respond(&mut p, &mut ph, 201, b"paid");
    let actions = w.worker.on_tick(&w.shared, w.clock.get());
    assert!(answers(&actions)[0].route.is_none());
}
