//! The first answer streams: each body chunk goes on to the client as it is copied, and only the
//! end (the last body callback, or the trailers) waits until the record is stored.

use super::keystore::{answer, claimed, CFG};
use super::*;
use crate::host::Headers;
use crate::record::StoredResponse;
use crate::testing::record_of_complete;

const EVENTS: [&[u8]; 3] = [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"];

/// A claimed request whose response `headers` went to the client.
fn answering(w: &World, key: &str, headers: Headers) -> (Stream, FakeHost) {
    let (mut s, mut h) = claimed(w, key, "T1");
    h.response_headers = headers;
    assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
    (s, h)
}

/// A claimed request whose `201 text/event-stream` headers went to the client.
fn streaming(w: &World, key: &str) -> (Stream, FakeHost) {
    let headers = vec![
        (":status".into(), b"201".to_vec()),
        ("content-type".into(), b"text/event-stream".to_vec()),
    ];
    answering(w, key, headers)
}

/// Passes `chunk` as Envoy does: the body buffer holds only this callback's chunk.
fn chunk(s: &mut Stream, h: &mut FakeHost, chunk: &[u8], end: bool) -> Flow {
    h.response_body = chunk.to_vec();
    s.on_response_body(h, chunk.len(), end)
}

fn stored_body(h: &FakeHost) -> Vec<u8> {
    let (_, complete) = h.last_callout().unwrap();
    match record_of_complete(&complete.body).outcome {
        Outcome::Replayable(StoredResponse { body, .. }) => body,
        other => panic!("not replayable: {other:?}"),
    }
}

#[test]
fn chunks_go_on_as_they_arrive_and_the_last_waits_for_the_write() {
    let w = World::new(CFG);
    let (mut s, mut h) = streaming(&w, "k");
    let callouts = h.callouts.borrow().len();
    let mut held = 0;
    for event in &EVENTS[..2] {
        assert_eq!(chunk(&mut s, &mut h, event, false), Flow::Continue);
        held += event.len();
        assert_eq!(w.worker.budget.used(), held, "the copy is in the budget");
    }
    assert_eq!(
        h.callouts.borrow().len(),
        callouts,
        "nothing stored mid-stream"
    );
    assert_eq!(
        chunk(&mut s, &mut h, EVENTS[2], true),
        Flow::Pause,
        "the end waits for the record"
    );
    assert_eq!(h.callouts.borrow().len(), callouts + 1);
    assert_eq!(stored_body(&h), EVENTS.concat(), "every chunk, in order");
    assert_eq!(h.resumed_response.get(), 0);
    answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
    assert_eq!(h.resumed_response.get(), 1, "the end goes once stored");
    assert_eq!(w.worker.budget.used(), 0, "the copy's bytes given back");

    // A retry on this Envoy replays the whole stream from L1.
    let (_, retry, _) = w.send(&post("k", b"a"));
    let sent = retry.last_sent().unwrap();
    assert_eq!((sent.status, sent.body), (201, EVENTS.concat()));
}

#[test]
fn with_trailers_the_trailers_are_the_end_that_waits() {
    let w = World::new(CFG);
    let (mut s, mut h) = streaming(&w, "k");
    for event in EVENTS {
        assert_eq!(chunk(&mut s, &mut h, event, false), Flow::Continue);
    }
    // Envoy's buffer is empty by now: every chunk went on.
    h.response_body.clear();
    assert_eq!(s.on_response_trailers(&h), Flow::Pause);
    assert_eq!(stored_body(&h), EVENTS.concat());
    answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
    assert_eq!(h.resumed_response.get(), 1);
}

#[test]
fn past_max_response_bytes_the_copy_stops_and_the_stream_goes_on() {
    let w =
        World::new(r#"{"max_response_bytes":100,"keystore":{"cluster":"ks","token":"s3cret"}}"#);
    let (mut s, mut h) = streaming(&w, "k");
    let big = vec![b'x'; 60];
    assert_eq!(chunk(&mut s, &mut h, &big, false), Flow::Continue);
    assert!(w.worker.budget.used() >= 60);
    assert_eq!(chunk(&mut s, &mut h, &big, false), Flow::Continue);
    assert_eq!(w.worker.budget.used(), 0, "copy stopped, bytes given back");
    assert_eq!(chunk(&mut s, &mut h, &big, false), Flow::Continue);
    assert_eq!(chunk(&mut s, &mut h, b"", true), Flow::Pause);
    let (_, complete) = h.last_callout().unwrap();
    assert!(matches!(
        record_of_complete(&complete.body).outcome,
        Outcome::NotReplayable
    ));
    assert_eq!(h.count_of(Metric::NotReplayable), 1);
    answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
    assert_eq!(h.resumed_response.get(), 1);
}

#[test]
fn a_full_budget_stops_the_copy_not_the_stream() {
    let w = World::new(
        r#"{"memory_budget_bytes":1048576,"max_response_bytes":3000000,"keystore":{"cluster":"ks","token":"s3cret","max_record_bytes":4000000}}"#,
    );
    let (mut s, mut h) = streaming(&w, "k");
    let big = vec![b'x'; 700_000];
    assert_eq!(chunk(&mut s, &mut h, &big, false), Flow::Continue);
    assert_eq!(chunk(&mut s, &mut h, &big, false), Flow::Continue);
    assert_eq!(w.worker.budget.used(), 0, "no room: copy stopped");
    assert_eq!(chunk(&mut s, &mut h, b"end", true), Flow::Pause);
    assert_eq!(h.count_of(Metric::NotReplayable), 1);
}

#[test]
fn a_store_that_fails_at_the_end_still_lets_the_end_through_and_retries_later() {
    let w = World::new(CFG);
    let (mut s, mut h) = streaming(&w, "k");
    assert_eq!(chunk(&mut s, &mut h, EVENTS[0], false), Flow::Continue);
    assert_eq!(chunk(&mut s, &mut h, EVENTS[1], true), Flow::Pause);
    answer(&mut s, &h, Some(503), "unavailable");
    assert_eq!(h.resumed_response.get(), 1, "the end is not withheld");
    assert_eq!(h.count_of(Metric::StoreError), 1);
    assert_eq!(
        w.handed_over().len(),
        1,
        "the write is retried in the background"
    );
    // L1 has the record: a retry on this Envoy replays the whole answer.
    let (_, retry, _) = w.send(&post("k", b"a"));
    assert_eq!(retry.last_sent().unwrap().body, EVENTS[..2].concat());
}

#[test]
fn a_stream_cut_mid_body_is_an_unknown_outcome() {
    let w = World::new("{}");
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    h.response_headers = vec![(":status".into(), b"200".to_vec())];
    assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
    assert_eq!(chunk(&mut s, &mut h, EVENTS[0], false), Flow::Continue);
    s.on_done(&h);
    assert_eq!(h.count_of(Metric::UnknownOutcome), 1);
    assert_eq!(w.worker.budget.used(), 0);
    let (_, retry, _) = w.send(&post("k", b"a"));
    assert_eq!(retry.last_sent().unwrap().status, 409);
}

#[test]
fn the_chunk_that_completes_the_content_length_is_the_end_that_waits() {
    let w = World::new(CFG);
    let body = EVENTS.concat();
    let headers = vec![
        (":status".into(), b"201".to_vec()),
        ("content-length".into(), body.len().to_string().into_bytes()),
    ];
    let (mut s, mut h) = answering(&w, "k", headers);
    let (head, tail) = body.split_at(5);
    assert_eq!(chunk(&mut s, &mut h, head, false), Flow::Continue);
    // Envoy may report the end only in a later, empty callback; a client that counts bytes
    // holds the whole answer with this chunk, so this chunk waits for the record.
    assert_eq!(chunk(&mut s, &mut h, tail, false), Flow::Pause);
    assert_eq!(stored_body(&h), body);
    // The empty end comes while the write is on its way: it waits too.
    assert_eq!(chunk(&mut s, &mut h, b"", true), Flow::Pause);
    answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
    assert_eq!(h.resumed_response.get(), 1);
}

#[test]
fn the_record_lands_before_an_empty_end_that_comes_later() {
    let w = World::new(CFG);
    let headers = vec![
        (":status".into(), b"201".to_vec()),
        ("content-length".into(), b"9".to_vec()),
    ];
    let (mut s, mut h) = answering(&w, "k", headers);
    assert_eq!(chunk(&mut s, &mut h, EVENTS[0], false), Flow::Pause);
    answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
    assert_eq!(h.resumed_response.get(), 1);
    assert_eq!(chunk(&mut s, &mut h, b"", true), Flow::Continue);
    assert_eq!(h.callouts.borrow().len(), 2, "one claim, one record");
}
