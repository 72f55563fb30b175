//! Detached execution (the root context sends the request upstream and stores the answer) and
//! duplicates that wait for the first request's record.

use super::*;
use crate::background::worker::Answer;
use crate::stream::REPLAYED_HEADER;

pub(super) const DETACHED: &str = r#"{"unknown_hold_ms":1000,"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up","upstream_timeout_ms":900}]}"#;

pub(super) fn answers(actions: &[RootAction]) -> Vec<&Answer> {
    actions
        .iter()
        .filter_map(|a| match a {
            RootAction::Answer(answer) => Some(answer),
            _ => None,
        })
        .collect()
}

/// Sends a detached request; the root context sends it as its callout 40, returned.
pub(super) fn start(w: &World, key: &str) -> (Stream, FakeHost, crate::host::Callout) {
    let (s, h) = w.hold_detached(&post(key, b"{\"amount\":1}"), None);
    assert_eq!(h.woke_root.get(), 1);
    assert_eq!(h.count_of(Metric::DetachedExecuted), 1);
    let callout = w.dispatch();
    assert_eq!(callout.cluster, "up");
    assert_eq!(callout.timeout_ms, 900);
    assert!(callout
        .forwarded
        .as_ref()
        .unwrap()
        .headers
        .contains(&(":path".into(), b"/payments".to_vec())));
    assert_eq!(callout.body, b"{\"amount\":1}");
    (s, h, callout)
}

#[test]
fn the_root_context_stores_the_answer_and_answers_the_client() {
    let w = World::new(DETACHED);
    let (mut s, h, _) = start(&w, "k");
    let headers = vec![
        (":status".to_string(), b"201".to_vec()),
        ("set-cookie".to_string(), b"a=1".to_vec()),
        ("set-cookie".to_string(), b"b=2".to_vec()),
        ("x-envoy-upstream-service-time".to_string(), b"3".to_vec()),
    ];
    let actions = w.reply(40, Some(201), headers, b"{\"id\":1}");
    let answered = answers(&actions);
    assert_eq!(answered.len(), 1);
    assert_eq!(
        answered[0].stream_id,
        h.stream_id.get(),
        "the client's stream"
    );
    assert_eq!(answered[0].status, 201);
    assert_eq!(answered[0].body, b"{\"id\":1}");
    let cookies: Vec<&[u8]> = answered[0]
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
    s.on_done(&h);
    let (_, retry, _) = w.send(&post("k", b"{\"amount\":1}"));
    let replay = retry.last_sent().unwrap();
    assert_eq!(
        (replay.status, replay.body.as_slice()),
        (201, &b"{\"id\":1}"[..])
    );
    assert_eq!(replay.header(REPLAYED_HEADER), Some(&b"true"[..]));
}

#[test]
fn a_detached_timeout_locks_the_key_and_a_refused_connection_frees_it() {
    let w = World::new(DETACHED);
    start(&w, "slow");
    let actions = w.reply(40, Some(504), vec![], ENVOY_TIMEOUT);
    assert_eq!(answers(&actions)[0].status, 504);
    assert!(actions
        .iter()
        .any(|a| matches!(a, RootAction::Count(Metric::UnknownOutcome))));
    let (_, retry, _) = w.send(&post("slow", b"{\"amount\":1}"));
    assert_eq!(retry.last_sent().unwrap().status, 409);

    start(&w, "down");
    let actions = w.reply(40, Some(503), vec![], ENVOY_REFUSED);
    assert_eq!(answers(&actions)[0].status, 503);
    let (_, retry, flow) = w.send(&post("down", b"{\"amount\":1}"));
    assert_eq!(flow, Flow::Pause);
    assert!(retry.last_sent().is_none(), "released: the retry executes");
    assert_eq!(retry.count_of(Metric::DetachedExecuted), 1);
}

#[test]
fn without_a_key_store_a_duplicate_waits_for_the_record_or_gets_409_past_the_wait() {
    let w = World::new(r#"{"in_flight":"wait","max_wait_ms":1000}"#);
    let (mut first, mut fh, _) = w.send(&post("k", b"a"));
    let (mut dup, dh, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Pause);
    assert!(dh.last_sent().is_none(), "held, not 409");
    assert_eq!(dh.count_of(Metric::Waited), 1);
    w.advance(100);
    assert!(answers(&w.worker.on_tick(&w.shared, w.clock.get())).is_empty());
    w.respond(&mut first, &mut fh, 201, b"paid");
    let actions = w.worker.on_tick(&w.shared, w.clock.get());
    let answered = answers(&actions);
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].stream_id, dh.stream_id.get());
    assert_eq!(
        (answered[0].status, answered[0].body.as_slice()),
        (201, &b"paid"[..])
    );
    assert!(actions
        .iter()
        .any(|a| matches!(a, RootAction::Count(Metric::WaitReplayed))));
    dup.on_done(&dh);

    // A wait past max_wait_ms: 409; a waiter that leaves is forgotten.
    let (_slow, _sh, _) = w.send(&post("j", b"a"));
    let (_late, lh, _) = w.send(&post("j", b"a"));
    let (mut gone, gh, _) = w.send(&post("j", b"a"));
    gone.on_done(&gh);
    w.advance(1000);
    let actions = w.worker.on_tick(&w.shared, w.clock.get());
    let answered = answers(&actions);
    assert_eq!(answered.len(), 1, "only the waiter still there");
    assert_eq!(
        (answered[0].stream_id, answered[0].status),
        (lh.stream_id.get(), 409)
    );
    assert!(w.worker.waiters.borrow().is_empty());
}

#[test]
fn unloading_settles_a_detached_request_at_the_upstream_as_unknown_and_releases_one_never_sent() {
    let w = World::new(DETACHED);
    let (_s, _h, _) = start(&w, "sent");
    let (_s2, _h2, _) = w.send(&post("queued", b"{\"amount\":1}"));
    let actions = w.worker.on_shutdown(&w.shared, w.clock.get());
    // The running request may have executed: 502 upstream-reset for its client, the key locked
    // in L1 as an unknown outcome; the queued one never left: its client gets 503 and L1 is free.
    let statuses: Vec<u16> = answers(&actions).iter().map(|a| a.status).collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(
        statuses.contains(&502) && statuses.contains(&503),
        "{statuses:?}"
    );
    let (_, h, _) = w.send(&post("sent", b"{\"amount\":1}"));
    assert_eq!(h.last_sent().unwrap().status, 409, "held: outcome unknown");
    let (_, h, _) = w.send(&post("queued", b"{\"amount\":1}"));
    assert_eq!(
        h.count_of(Metric::DetachedExecuted),
        1,
        "released: runs again"
    );
}

/// The router forwards a header value that is not UTF-8 as it is: so does a detached execution
/// (its fields go to the callout as bytes), with `te: trailers`.
#[test]
fn a_value_that_is_not_utf8_is_sent_on() {
    let w = World::new(DETACHED);
    w.worker.set_doorbell(1);
    let mut h = w.host(&post("bytes", b"{\"amount\":1}"));
    h.request_headers
        .push(("x-name".into(), b"caf\xe9".to_vec()));
    h.request_headers.push(("te".into(), b"trailers".to_vec()));
    let mut s = Stream::new(w.worker.clone());
    assert_eq!(s.on_request_headers(&h, false), Flow::Pause);
    assert_eq!(s.on_request_body(&h, 12, true), Flow::Pause);
    assert!(h.sent.borrow().is_empty(), "no refusal");
    let mut out = w.worker.start_detached();
    let RootAction::Send(callout, _) = out.remove(0) else {
        panic!("no detached execution")
    };
    let forwarded = callout.forwarded.unwrap();
    assert!(forwarded
        .headers
        .contains(&("x-name".into(), b"caf\xe9".to_vec())));
    assert!(forwarded
        .headers
        .contains(&("te".into(), b"trailers".to_vec())));
    assert_eq!(callout.body, b"{\"amount\":1}");
}

/// Envoy's async client sends no request trailers: a detached rule runs a request that has them
/// inline (the router forwards them), and its answer is kept and replayed as any inline one.
#[test]
fn a_request_with_trailers_runs_inline_on_a_detached_rule() {
    let w = World::new(DETACHED);
    w.worker.set_doorbell(1);
    let mut h = w.host(&post("trailed", b"{\"amount\":1}"));
    let mut s = Stream::new(w.worker.clone());
    assert_eq!(s.on_request_headers(&h, false), Flow::Pause);
    // With trailers, the body never reports its end: the trailers do.
    assert_eq!(s.on_request_body(&h, 12, false), Flow::Pause);
    assert_eq!(
        s.on_request_trailers(&h),
        Flow::Continue,
        "through the router"
    );
    assert!(w.worker.start_detached().is_empty(), "no callout");
    assert_eq!(h.count_of(Metric::DetachedExecuted), 0);
    w.respond(&mut s, &mut h, 201, b"{\"id\":2}");
    let (_, retry, _) = w.send(&post("trailed", b"{\"amount\":1}"));
    assert_eq!(retry.last_sent().unwrap().body, b"{\"id\":2}");
}

/// The router adds `x-envoy-upstream-service-time` after an upstream's fields; a callout's answer
/// has none, so the detached answer gets the time from dispatch to the whole answer there (and
/// before the length Envoy sets in place), and a retry replays the same value.
#[test]
fn a_detached_answer_carries_its_service_time_and_the_replay_the_same() {
    let w = World::new(DETACHED);
    let (mut s, h, _) = start(&w, "timed");
    w.clock.set(w.clock.get() + 25);
    let headers = vec![
        (":status".to_string(), b"201".to_vec()),
        ("content-type".to_string(), b"application/json".to_vec()),
        ("content-length".to_string(), b"8".to_vec()),
    ];
    let actions = w.reply(40, Some(201), headers, b"{\"id\":1}");
    let expected = [
        ("content-type".to_string(), b"application/json".to_vec()),
        ("content-length".to_string(), b"8".to_vec()),
        ("x-envoy-upstream-service-time".to_string(), b"25".to_vec()),
    ];
    assert_eq!(answers(&actions)[0].headers[..3], expected[..]);
    s.on_done(&h);
    let (_, retry, _) = w.send(&post("timed", b"{\"amount\":1}"));
    let replay = retry.last_sent().unwrap();
    assert_eq!(replay.headers[..3], expected[..], "stored as it was sent");
}
