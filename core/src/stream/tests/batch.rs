//! Group commit through whole streams: the first call of a quiet worker leaves at once, the calls
//! made while it travels leave as one batch when it returns, each stream gets its own answer
//! (resumed, executed, its record stored), a failed batch applies each route's failure mode, and
//! a stream that ends while its call waits or travels gets nothing.

use super::*;
use crate::background::batch::Delivery;
use idempotency_protocol::{
    body, BatchAnswer, BatchRequest, BatchResponse, ClaimAnswer, ClaimResponse, Compact,
    FencedResponse,
};

const CFG: &str = r#"{"keystore":{"cluster":"ks","token":"s3cret","batch_max_entries":8,"batches_in_flight":1},"routes":[{"prefix":"/payments","failure_mode":"fail_closed"},{"prefix":"/open","failure_mode":"fail_open"}]}"#;

fn world() -> World {
    let w = World::new(CFG);
    w.worker.set_doorbell(7);
    w
}

/// The key store's answer to one call of a batch: a claim is granted with its key as the token,
/// a record stored, a claim released; a lookup fails.
pub(super) fn granted(call: &StoreCall) -> BatchAnswer {
    match call {
        StoreCall::Claim(c) => BatchAnswer::Claim(ClaimAnswer {
            response: ClaimResponse::Claimed {
                token: c.key.as_str().to_string(),
            },
            waited: false,
        }),
        StoreCall::Complete(_) => BatchAnswer::Complete(FencedResponse::Stored),
        StoreCall::Release(_) => BatchAnswer::Release(FencedResponse::Released),
        StoreCall::Lookup(_) => BatchAnswer::Error {
            status: 503,
            error: "no lookups here".into(),
        },
    }
}

/// The key store grants every claim of the batch (its key as the token) and stores every record.
fn grant_all(req: &BatchRequest) -> BatchResponse {
    BatchResponse {
        answers: req.entries.iter().map(granted).collect(),
    }
}

use crate::keystore_client::StoreCall;

/// The root context sends what waits; returns the batch callout's token and request.
fn flush(w: &World) -> (u32, BatchRequest) {
    let actions = w.worker.flush_batches();
    assert_eq!(actions.len(), 1, "one batch: {actions:?}");
    let Some(RootAction::Send(callout, purpose)) = actions.into_iter().next() else {
        panic!("a send");
    };
    assert!(callout
        .headers
        .contains(&(":path".into(), "/v1/batch".into())));
    w.worker.sent(9_000, purpose, w.clock.get());
    (9_000, body::decode_request(&callout.body).unwrap())
}

/// The batch's reply: the deliveries the root context hands to streams. A batch it sends next is
/// sent as callout `token + 1`.
fn land(w: &World, token: u32, status: Option<u16>, reply: Vec<u8>) -> Vec<Delivery> {
    let actions = w.reply(token, status, Vec::new(), &reply);
    let mut out = Vec::new();
    for a in actions {
        match a {
            RootAction::Deliver(d) => out.push(d),
            RootAction::Send(_, purpose) => w.worker.sent(token + 1, purpose, w.clock.get()),
            _ => {}
        }
    }
    out
}

fn deliver(d: &Delivery, streams: &mut [(Stream, FakeHost)]) {
    let (s, h) = streams
        .iter_mut()
        .find(|(_, h)| h.stream_id.get() == d.stream_id)
        .expect("the delivery names a stream of the test");
    s.on_callout_response(h, d.token, d.status, &d.body);
}

#[test]
fn calls_made_while_one_travels_leave_as_one_batch_and_each_stream_gets_its_answer() {
    let w = world();
    let (mut first, h_first, flow) = w.send(&post("k0", b"a"));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(
        h_first.callouts.borrow().len(),
        1,
        "a quiet worker sends at once"
    );
    let mut streams: Vec<(Stream, FakeHost)> = (1..4)
        .map(|i| {
            let (s, h, flow) = w.send(&post(&format!("k{i}"), b"a"));
            assert_eq!(flow, Flow::Pause);
            assert!(h.callouts.borrow().is_empty(), "it waits for the batch");
            (s, h)
        })
        .collect();
    keystore::grant(&mut first, &h_first, "T0");
    assert_eq!(h_first.resumed_request.get(), 1);
    assert_eq!(
        h_first.woke_root.get(),
        1,
        "the returning call wakes the root"
    );
    let (token, batch) = flush(&w);
    assert_eq!(batch.entries.len(), 3);
    let reply = grant_all(&batch).to_compact();
    let deliveries = land(&w, token, Some(200), reply);
    assert_eq!(deliveries.len(), 3);
    for d in &deliveries {
        deliver(d, &mut streams);
    }
    for (s, h) in streams.iter_mut() {
        assert_eq!(h.resumed_request.get(), 1, "each stream executes");
        assert!(h.sent.borrow().is_empty());
        // Nothing travels now: the write leaves at once, with its own claim's token.
        assert_eq!(w.respond(s, h, 201, b"{}"), Flow::Pause);
        let (t, complete) = h.last_callout().unwrap();
        let v = keystore::body_of(&complete);
        assert_eq!(v["token"], v["key"], "the token of this stream's own claim");
        s.on_callout_response(h, t, Some(200), br#"{"outcome":"stored"}"#);
        assert_eq!(h.resumed_response.get(), 1);
    }
    assert_eq!(w.worker.batcher.borrow().in_flight(), 0);
}

#[test]
fn a_failed_batch_applies_each_routes_failure_mode() {
    for (status, reply) in [
        (Some(503), b"{}".to_vec()),
        (None, Vec::new()),
        (Some(200), b"{\"answers\":[]}".to_vec()),
    ] {
        let w = world();
        let (mut first, h_first, _) = w.send(&post("k0", b"a"));
        let closed = w.send(&post("k1", b"a"));
        let open = w.send(&Req {
            path: "/open/x",
            ..post("k2", b"a")
        });
        let mut streams = vec![(closed.0, closed.1), (open.0, open.1)];
        keystore::grant(&mut first, &h_first, "T0");
        let (token, _) = flush(&w);
        for d in land(&w, token, status, reply.clone()) {
            deliver(&d, &mut streams);
        }
        let (closed, open) = (&streams[0].1, &streams[1].1);
        assert_eq!(closed.last_sent().unwrap().status, 503, "{status:?}");
        assert_eq!(closed.count_of(Metric::StoreError), 1);
        assert!(open.sent.borrow().is_empty());
        assert_eq!(open.resumed_request.get(), 1, "fail_open forwards");
        assert_eq!(open.count_of(Metric::FailOpen), 1);
    }
}

/// The root context sends a lone waiting call on its own endpoint.
fn flush_one(w: &World) -> (u32, crate::host::Callout) {
    let actions = w.worker.flush_batches();
    let Some(RootAction::Send(callout, purpose)) = actions.into_iter().next() else {
        panic!("a send");
    };
    w.worker.sent(9_001, purpose, w.clock.get());
    (9_001, callout)
}

#[test]
fn a_stream_that_ends_while_its_call_waits_or_travels_gets_nothing() {
    let w = world();
    let (mut first, h_first, _) = w.send(&post("k0", b"a"));
    let (mut gone_early, h_early, _) = w.send(&post("k1", b"a"));
    let (kept, h_kept, _) = w.send(&post("k2", b"a"));
    // Ends while its claim waits: it leaves the queue; its release goes after the callout timeout.
    gone_early.on_done(&h_early);
    assert_eq!(w.worker.batcher.borrow().queued(), 1);
    keystore::grant(&mut first, &h_first, "T0");
    let (token, callout) = flush_one(&w);
    assert!(
        callout
            .headers
            .contains(&(":path".into(), "/v1/claim".into())),
        "only the stream still there, alone on its own endpoint"
    );
    let (mut gone_late, h_late, _) = w.send(&post("k3", b"a"));
    let mut streams = vec![(kept, h_kept)];
    let claimed = br#"{"outcome":"claimed","token":"T2"}"#.to_vec();
    for d in land(&w, token, Some(200), claimed.clone()) {
        deliver(&d, &mut streams);
    }
    assert_eq!(streams[0].1.resumed_request.get(), 1);
    // The late stream's call left in the next flight when that one returned; the stream ends.
    let token = token + 1;
    assert_eq!(w.worker.batcher.borrow().in_flight(), 1);
    gone_late.on_done(&h_late);
    assert!(
        land(&w, token, Some(200), claimed).is_empty(),
        "no answer for a stream that ended"
    );
    assert_eq!(h_late.resumed_request.get(), 0);
    w.advance(1_000);
    assert_eq!(
        w.handed_over().len(),
        2,
        "both ended claims are released later"
    );
}
