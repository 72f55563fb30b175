//! The state machine driven through the fake host, as Envoy would drive it: several streams
//! (workers) over one shared-data map and one clock.

use crate::config::Config;
use crate::deferred::Deferred;
use crate::l1::NearCache;
use crate::metrics::Metric;
use crate::record::Outcome;
use crate::stream::{Flow, Stream};
use crate::testing::{FakeHost, FakeShared, Sent};
use crate::worker::{Purpose, RootAction, Worker};
use serde_json::Value;
use std::cell::Cell;
use std::rc::Rc;

struct World {
    worker: Rc<Worker>,
    shared: FakeShared,
    clock: Rc<Cell<u64>>,
    ids: Rc<Cell<u64>>,
}

/// What the test sends.
struct Req<'a> {
    method: &'a str,
    path: &'a str,
    key: Option<&'a [u8]>,
    caller: Option<&'a str>,
    body: &'a [u8],
}

fn post<'a>(key: &'a str, body: &'a [u8]) -> Req<'a> {
    Req {
        method: "POST",
        path: "/payments",
        key: Some(key.as_bytes()),
        caller: Some("Bearer alice"),
        body,
    }
}

impl World {
    fn new(json: &str) -> World {
        let cfg = Config::parse(crate::testing::with_test_secret(json).as_bytes()).unwrap();
        let cache = NearCache {
            slots: cfg.l1_slots,
            slot_budget: cfg.max_response_bytes + 4096,
        };
        let shared = FakeShared::default();
        cache.ensure_slots(&shared).unwrap();
        World {
            worker: Rc::new(Worker::new(cfg, cache)),
            shared,
            clock: Rc::new(Cell::new(1_000)),
            ids: Rc::new(Cell::new(0)),
        }
    }

    /// Another Envoy worker over the same shared data and clock, with another configuration
    /// (e.g. after a secret rotation).
    fn sharing(&self, json: &str) -> World {
        let cfg = Config::parse(crate::testing::with_test_secret(json).as_bytes()).unwrap();
        let cache = NearCache {
            slots: cfg.l1_slots,
            slot_budget: cfg.max_response_bytes + 4096,
        };
        World {
            worker: Rc::new(Worker::new(cfg, cache)),
            shared: self.shared.clone(),
            clock: self.clock.clone(),
            ids: self.ids.clone(),
        }
    }

    /// Runs the request side; returns the stream, its host and what the last request callback returned.
    fn send(&self, req: &Req) -> (Stream, FakeHost, Flow) {
        let host = self.host(req);
        let mut stream = Stream::new(self.worker.clone());
        let mut flow = stream.on_request_headers(&host, req.body.is_empty());
        if !req.body.is_empty() && host.sent.borrow().is_empty() {
            flow = stream.on_request_body(&host, req.body.len(), true);
        }
        (stream, host, flow)
    }

    /// A fake Envoy holding `req`, for a test that drives the callbacks itself.
    fn host(&self, req: &Req) -> FakeHost {
        let mut host = FakeHost::new(&self.shared, &self.clock, &self.ids);
        host.request_headers = vec![
            (":method".into(), req.method.as_bytes().to_vec()),
            (":path".into(), req.path.as_bytes().to_vec()),
        ];
        if let Some(k) = req.key {
            host.request_headers
                .push(("idempotency-key".into(), k.to_vec()));
        }
        if let Some(c) = req.caller {
            host.request_headers
                .push(("authorization".into(), c.as_bytes().to_vec()));
        }
        host.request_body = req.body.to_vec();
        host
    }

    /// The key-store writes streams handed to the root context so far.
    fn handed_over(&self) -> Vec<Deferred> {
        self.worker.writes.borrow_mut().take_due(self.clock.get())
    }

    fn advance(&self, ms: u64) {
        self.clock.set(self.clock.get() + ms);
    }

    /// Runs the response side as the upstream answers.
    fn respond(&self, stream: &mut Stream, host: &mut FakeHost, status: u16, body: &[u8]) -> Flow {
        host.response_headers = vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-type".into(), b"application/json".to_vec()),
            ("x-bin".into(), vec![0xff, 0xfe]),
            ("date".into(), b"Mon".to_vec()),
        ];
        host.response_body = body.to_vec();
        let flow = stream.on_response_headers(host, body.is_empty());
        if body.is_empty() || flow == Flow::Pause {
            return flow;
        }
        stream.on_response_body(host, body.len(), true)
    }
}

fn problem(sent: &Sent) -> Value {
    assert_eq!(
        sent.header("content-type"),
        Some(&b"application/problem+json"[..])
    );
    let v: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(v["status"], sent.status);
    v
}

#[test]
fn first_request_executes_and_a_retry_replays_byte_exact() {
    let w = World::new(r#"{"routes":[{"exact":"/payments","required":true}]}"#);
    let (mut s, mut h, flow) = w.send(&post("k1", b"{\"amount\":1}"));
    assert_eq!(flow, Flow::Continue);
    assert!(h.sent.borrow().is_empty());
    assert_eq!(h.count_of(Metric::Executed), 1);
    assert_eq!(
        w.respond(&mut s, &mut h, 201, b"{\"id\":\"p1\"}"),
        Flow::Continue
    );

    let (_, h2, flow) = w.send(&post("\"k1\"", b"{\"amount\":1}"));
    assert_eq!(flow, Flow::Pause);
    let sent = h2.last_sent().unwrap();
    assert_eq!(sent.status, 201);
    assert_eq!(sent.body, b"{\"id\":\"p1\"}");
    assert_eq!(sent.header("x-bin"), Some(&[0xff, 0xfe][..]));
    assert_eq!(sent.header("idempotent-replayed"), Some(&b"true"[..]));
    assert_eq!(sent.header("date"), None, "date is Envoy's to set");
    assert_eq!(h2.count_of(Metric::Replayed), 1);
    assert_eq!(h2.count_of(Metric::Executed), 0);
}

#[test]
fn other_payload_is_422_and_in_flight_is_409() {
    let w = World::new("{}");
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    let (_, h2, _) = w.send(&post("k", b"a"));
    let sent = h2.last_sent().unwrap();
    assert_eq!(sent.status, 409);
    assert_eq!(sent.header("retry-after"), Some(&b"1"[..]));
    problem(&sent);
    let (_, h3, _) = w.send(&post("k", b"b"));
    assert_eq!(h3.last_sent().unwrap().status, 422);
    w.respond(&mut s, &mut h, 200, b"ok");
    let (_, h4, _) = w.send(&post("k", b"b"));
    assert_eq!(problem(&h4.last_sent().unwrap())["status"], 422);
    let (_, h5, _) = w.send(&Req {
        path: "/payments?x=1",
        ..post("k", b"a")
    });
    assert_eq!(
        h5.last_sent().unwrap().status,
        422,
        "the query is part of the fingerprint"
    );
}

#[test]
fn keys_are_scoped_to_the_caller_and_anonymous_needs_a_named_scope() {
    let w = World::new(r#"{"anonymous_scope":"public"}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    w.respond(&mut s, &mut h, 201, b"alice's");
    let (_, hb, flow) = w.send(&Req {
        caller: Some("Bearer bob"),
        ..post("k", b"a")
    });
    assert_eq!(flow, Flow::Continue, "bob's request is his own");
    assert!(hb.sent.borrow().is_empty());
    let (_, ha, _) = w.send(&Req {
        caller: None,
        ..post("k", b"a")
    });
    assert!(
        ha.sent.borrow().is_empty(),
        "anonymous is a scope of its own"
    );

    for strict in ["{}", r#"{"anonymous":"reject"}"#] {
        let strict = World::new(strict);
        let (_, h, _) = strict.send(&Req {
            caller: None,
            ..post("k", b"a")
        });
        assert_eq!(h.last_sent().unwrap().status, 401, "no caller, no scope");
        assert_eq!(h.count_of(Metric::Unauthenticated), 1);
        assert_eq!(h.count_of(Metric::Executed), 0);
    }
}

#[test]
fn the_first_caller_source_that_names_the_caller_wins() {
    let w =
        World::new(r#"{"caller":{"sources":[{"header":"x-api-key"},{"header":"authorization"}]}}"#);
    // Alice by authorization, then a request that also carries an API key: another caller.
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    w.respond(&mut s, &mut h, 201, b"alice's");
    let mut host = w.host(&post("k", b"a"));
    host.request_headers
        .push(("x-api-key".into(), b"Bearer alice".to_vec()));
    let mut s2 = Stream::new(w.worker.clone());
    let _ = s2.on_request_headers(&host, false);
    let flow = s2.on_request_body(&host, 1, true);
    assert_eq!(flow, Flow::Continue, "the API key names another caller");
    assert!(host.sent.borrow().is_empty());
}

#[test]
fn set_cookie_and_credentials_are_never_replayed() {
    let w = World::new("{}");
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    h.response_headers = vec![
        (":status".into(), b"201".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
        ("set-cookie".into(), b"session=alice".to_vec()),
        ("WWW-Authenticate".into(), b"Bearer".to_vec()),
        ("location".into(), b"/payments/1".to_vec()),
    ];
    h.response_body = b"{}".to_vec();
    let _ = s.on_response_headers(&h, false);
    let _ = s.on_response_body(&h, 2, true);
    let (_, h2, _) = w.send(&post("k", b"a"));
    let replay = h2.last_sent().unwrap();
    assert_eq!(replay.status, 201);
    let names: Vec<&str> = replay.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "content-type",
            "location",
            "idempotency-expires",
            "idempotent-replayed"
        ],
        "{names:?}"
    );
}

#[test]
fn bad_keys_and_missing_keys() {
    let w = World::new(r#"{"routes":[{"exact":"/payments","required":true},{"prefix":"/opt"}]}"#);
    for bad in [&b""[..], b"\"abc", b"\"a\x01\"", b"\xff\xfe", &[b'x'; 256]] {
        let (_, h, flow) = w.send(&Req {
            key: Some(bad),
            ..post("", b"a")
        });
        assert_eq!(flow, Flow::Pause);
        let sent = h.last_sent().unwrap();
        assert_eq!(sent.status, 400, "{bad:?}");
        assert!(problem(&sent)["type"]
            .as_str()
            .unwrap()
            .ends_with("invalid-key"));
        assert_eq!(h.count_of(Metric::InvalidKey), 1);
    }
    let (_, h, _) = w.send(&Req {
        key: None,
        ..post("", b"a")
    });
    assert!(problem(&h.last_sent().unwrap())["type"]
        .as_str()
        .unwrap()
        .ends_with("missing-key"));
    let (_, h, flow) = w.send(&Req {
        key: None,
        path: "/opt/x",
        ..post("", b"a")
    });
    assert_eq!(flow, Flow::Continue, "optional route without key passes");
    assert!(h.sent.borrow().is_empty());
    let (_, h, flow) = w.send(&Req {
        method: "GET",
        ..post("k", b"")
    });
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h.count_of(Metric::NotCovered), 1);
}

#[test]
fn body_over_the_limit_is_413() {
    let w = World::new(r#"{"max_body_bytes":4}"#);
    let (_, h, _) = w.send(&post("k", b"12345"));
    assert_eq!(h.last_sent().unwrap().status, 413);
    assert_eq!(h.count_of(Metric::TooLarge), 1);
    let (_, h, flow) = w.send(&post("k", b"1234"));
    assert_eq!(flow, Flow::Continue);
    assert!(h.sent.borrow().is_empty());
}

#[test]
fn server_errors_and_never_stored_statuses_release_the_claim() {
    let w = World::new("{}");
    for status in [500, 503, 429, 409] {
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        assert!(
            h.sent.borrow().is_empty(),
            "{status}: the previous attempt must have released"
        );
        w.respond(&mut s, &mut h, status, b"x");
        assert_eq!(h.count_of(Metric::Released), 1);
    }
    let stripe = World::new(r#"{"store_5xx":true}"#);
    let (mut s, mut h, _) = stripe.send(&post("k", b"a"));
    stripe.respond(&mut s, &mut h, 500, b"boom");
    let (_, h, _) = stripe.send(&post("k", b"a"));
    assert_eq!(h.last_sent().unwrap().status, 500);
}

#[test]
fn a_client_gone_after_forwarding_locks_the_key_then_answers_outcome_unknown() {
    let w = World::new(r#"{"unknown_hold_ms":5000}"#);
    let (mut s, h, _) = w.send(&post("k", b"a"));
    s.on_done(&h);
    assert_eq!(h.count_of(Metric::UnknownOutcome), 1);
    assert_eq!(h.count_of(Metric::Released), 0);
    assert!(
        w.handed_over().is_empty(),
        "no key store: nothing to hand over"
    );

    // While the first attempt may still run upstream: 409, come back when the hold ends.
    w.advance(1000);
    let (_, h, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Pause);
    let sent = h.last_sent().unwrap();
    assert_eq!(sent.status, 409);
    assert_eq!(sent.header("retry-after"), Some(&b"4"[..]));
    assert_eq!(h.count_of(Metric::Executed), 0);

    // Then the terminal answer, for the whole retention: never executed again.
    w.advance(4000);
    let (_, h, _) = w.send(&post("k", b"a"));
    let sent = h.last_sent().unwrap();
    assert_eq!(sent.status, 410);
    assert!(problem(&sent)["type"]
        .as_str()
        .unwrap()
        .ends_with("outcome-unknown"));
    assert!(sent.header("retry-after").is_none());
    assert_eq!(h.count_of(Metric::UnknownOutcomeAnswered), 1);
    assert_eq!(h.count_of(Metric::Executed), 0);
    // Another payload with the key is still a mismatch.
    let (_, h, _) = w.send(&post("k", b"b"));
    assert_eq!(h.last_sent().unwrap().status, 422);
}

#[test]
fn the_release_policy_frees_a_key_whose_outcome_is_unknown() {
    let w = World::new(r#"{"unknown_outcome":"release"}"#);
    let (mut s, h, _) = w.send(&post("k", b"a"));
    s.on_done(&h);
    assert_eq!(h.count_of(Metric::UnknownOutcome), 1);
    assert_eq!(h.count_of(Metric::Released), 1);
    let (_, h, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h.count_of(Metric::Executed), 1, "at least once: runs again");
}

/// Envoy's own answers, told apart by their response flags.
fn respond_as_envoy(w: &World, s: &mut Stream, h: &mut FakeHost, status: u16, flags: u64) -> Flow {
    h.properties.insert(
        vec!["response".into(), "flags".into()],
        flags.to_le_bytes().to_vec(),
    );
    w.respond(s, h, status, b"upstream request timeout")
}

#[test]
fn a_route_timeout_is_an_unknown_outcome_and_a_refused_connection_is_not() {
    let w = World::new("{}");
    let (mut s, mut h, _) = w.send(&post("timeout", b"a"));
    respond_as_envoy(
        &w,
        &mut s,
        &mut h,
        504,
        crate::outcome::flags::UPSTREAM_REQUEST_TIMEOUT,
    );
    assert_eq!(h.count_of(Metric::UnknownOutcome), 1);
    let (_, h2, _) = w.send(&post("timeout", b"a"));
    assert_eq!(h2.last_sent().unwrap().status, 409);

    let (mut s, mut h, _) = w.send(&post("refused", b"a"));
    respond_as_envoy(
        &w,
        &mut s,
        &mut h,
        503,
        crate::outcome::flags::UPSTREAM_CONNECTION_FAILURE,
    );
    assert_eq!(h.count_of(Metric::Released), 1);
    assert_eq!(h.count_of(Metric::UnknownOutcome), 0);
    let (_, h2, flow) = w.send(&post("refused", b"a"));
    assert_eq!(flow, Flow::Continue, "never reached: the retry executes");
    assert_eq!(h2.count_of(Metric::Executed), 1);

    // An upstream reset after the response started: the body was cut.
    let (mut s, mut h, _) = w.send(&post("cut", b"a"));
    h.response_headers = vec![(":status".into(), b"201".to_vec())];
    assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
    assert_eq!(s.on_response_body(&h, 3, false), Flow::Pause);
    s.on_done(&h);
    assert_eq!(h.count_of(Metric::UnknownOutcome), 1);
    let (_, h2, _) = w.send(&post("cut", b"a"));
    assert_eq!(h2.last_sent().unwrap().status, 409);
    let _ = &mut h;
}

#[test]
fn a_slow_upstream_keeps_its_claim_through_renewals() {
    let w = World::new(r#"{"lock_lease_ms":3000}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    // Three leases long, the root context ticking every 200 ms.
    for _ in 0..45 {
        w.advance(200);
        assert!(
            w.worker.on_tick(&w.shared, w.clock.get()).is_empty(),
            "no key store: L1 only"
        );
        let (_, dup, _) = w.send(&post("k", b"a"));
        assert_eq!(dup.last_sent().unwrap().status, 409, "never taken over");
    }
    w.respond(&mut s, &mut h, 201, b"done");
    assert!(
        w.worker.leases.borrow().is_empty(),
        "renewals stop with the answer"
    );
    let (_, h, _) = w.send(&post("k", b"a"));
    assert_eq!(h.last_sent().unwrap().body, b"done");
}

#[test]
fn a_body_that_cannot_be_read_is_refused_not_fingerprinted_as_empty() {
    let w = World::new("{}");
    let mut host = FakeHost::new(&w.shared, &w.clock, &w.ids);
    host.request_headers = vec![
        (":method".into(), b"POST".to_vec()),
        (":path".into(), b"/p".to_vec()),
        ("authorization".into(), b"Bearer alice".to_vec()),
        ("idempotency-key".into(), b"k".to_vec()),
    ];
    host.body_unreadable.set(true);
    let mut s = Stream::new(w.worker.clone());
    assert_eq!(s.on_request_headers(&host, false), Flow::Pause);
    assert_eq!(s.on_request_body(&host, 3, true), Flow::Pause);
    let sent = host.last_sent().unwrap();
    assert_eq!(sent.status, 500);
    problem(&sent);
    assert_eq!(host.count_of(Metric::Executed), 0);
}

#[test]
fn oversized_response_is_completed_but_not_replayable() {
    let w = World::new(r#"{"max_response_bytes":64}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    h.response_headers = vec![(":status".into(), b"200".to_vec())];
    assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
    assert_eq!(
        s.on_response_body(&h, 65, false),
        Flow::Continue,
        "too large: streamed on"
    );
    assert_eq!(h.count_of(Metric::NotReplayable), 1);
    let (_, h2, _) = w.send(&post("k", b"a"));
    let sent = h2.last_sent().unwrap();
    assert_eq!(sent.status, 410);
    problem(&sent);
    assert_eq!(h2.count_of(Metric::Executed), 0);
    let _ = &mut h;
}

#[test]
fn trailers_end_the_request_body() {
    let w = World::new("{}");
    let mut host = FakeHost::new(&w.shared, &w.clock, &w.ids);
    host.request_headers = vec![
        (":method".into(), b"POST".to_vec()),
        (":path".into(), b"/p".to_vec()),
        ("authorization".into(), b"Bearer alice".to_vec()),
        ("idempotency-key".into(), b"t".to_vec()),
    ];
    host.request_body = b"chunk".to_vec();
    let mut s = Stream::new(w.worker.clone());
    assert_eq!(s.on_request_headers(&host, false), Flow::Pause);
    assert_eq!(s.on_request_body(&host, 5, false), Flow::Pause);
    assert_eq!(s.on_request_trailers(&host), Flow::Continue);
    assert_eq!(host.count_of(Metric::Executed), 1);
}

#[test]
fn retention_expiry_makes_the_key_new() {
    let w = World::new(r#"{"retention_s":10}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    w.respond(&mut s, &mut h, 201, b"1");
    w.clock.set(w.clock.get() + 10_001);
    let (_, h, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h.count_of(Metric::Executed), 1);
}

#[test]
fn lease_expiry_lets_a_stuck_claim_be_taken_over() {
    let w = World::new(r#"{"lock_lease_ms":1000}"#);
    let (_stuck, _h, _) = w.send(&post("k", b"a"));
    w.clock.set(w.clock.get() + 1_001);
    let (_, h, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h.count_of(Metric::Executed), 1);
}

mod with_keystore {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    const CFG: &str = r#"{"keystore":{"cluster":"ks","token":"s3cret"},"routes":[{"prefix":"/payments","failure_mode":"fail_closed"},{"prefix":"/open","failure_mode":"fail_open"}]}"#;

    fn answer(s: &mut Stream, h: &FakeHost, status: Option<u16>, body: &str) {
        let (token, _) = h.last_callout().unwrap();
        s.on_callout_response(h, token, status, body.as_bytes());
    }

    #[test]
    fn claim_execute_store_then_a_fresh_envoy_replays_from_the_key_store() {
        let w = World::new(CFG);
        let (mut s, mut h, flow) = w.send(&post("k", b"a"));
        assert_eq!(flow, Flow::Pause, "waits for the key store");
        let (_, claim) = h.last_callout().unwrap();
        assert!(claim
            .headers
            .contains(&(":path".into(), "/v1/claim".into())));
        let body = crate::testing::callout_json(&claim).to_string();
        assert!(
            !body.contains("alice") && !body.contains("\"k\""),
            "only hashes leave Envoy: {body}"
        );
        answer(
            &mut s,
            &h,
            Some(200),
            r#"{"outcome":"claimed","token":"T1"}"#,
        );
        assert_eq!(h.resumed_request.get(), 1);
        assert_eq!(
            w.respond(&mut s, &mut h, 201, b"{\"id\":1}"),
            Flow::Pause,
            "held until stored"
        );
        let (_, complete) = h.last_callout().unwrap();
        let v = crate::testing::callout_json(&complete);
        assert_eq!(v["token"], "T1");
        let record = v["record"].as_str().unwrap().to_string();
        answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
        assert_eq!(h.resumed_response.get(), 1);

        // Another Envoy: empty L1; the key store returns the record.
        let other = World::new(CFG);
        let (mut s2, h2, _) = other.send(&post("k", b"a"));
        answer(
            &mut s2,
            &h2,
            Some(200),
            &format!(r#"{{"outcome":"completed","record":"{record}"}}"#),
        );
        let sent = h2.last_sent().unwrap();
        assert_eq!(
            (sent.status, sent.body.as_slice()),
            (201, &b"{\"id\":1}"[..])
        );
        assert_eq!(sent.header("idempotent-replayed"), Some(&b"true"[..]));
        // ...and keeps it near: the next retry there makes no callout.
        let (_, h3, _) = other.send(&post("k", b"a"));
        assert_eq!(h3.callouts.borrow().len(), 0);
        assert_eq!(h3.last_sent().unwrap().status, 201);
        assert!(B64.decode(record).is_ok());
    }

    #[test]
    fn duplicates_on_one_envoy_make_one_callout() {
        let w = World::new(CFG);
        let (_s, h, _) = w.send(&post("k", b"a"));
        assert_eq!(h.callouts.borrow().len(), 1);
        for _ in 0..5 {
            let (_, h, _) = w.send(&post("k", b"a"));
            assert_eq!(h.callouts.borrow().len(), 0);
            assert_eq!(h.last_sent().unwrap().status, 409);
        }
    }

    #[test]
    fn key_store_outcomes_in_flight_and_mismatch() {
        let w = World::new(CFG);
        let (mut s, h, _) = w.send(&post("k", b"a"));
        answer(
            &mut s,
            &h,
            Some(200),
            r#"{"outcome":"in_flight","retry_after_ms":800}"#,
        );
        assert_eq!(h.last_sent().unwrap().status, 409);
        let (mut s, h, _) = w.send(&post("k", b"a"));
        assert_eq!(h.callouts.borrow().len(), 1, "the L1 claim was released");
        answer(&mut s, &h, Some(200), r#"{"outcome":"mismatch"}"#);
        assert_eq!(h.last_sent().unwrap().status, 422);
    }

    #[test]
    fn failure_modes_on_garbage_reset_and_errors() {
        for reply in [
            (Some(503), "no healthy upstream"),
            (Some(504), ""),
            (None, ""),
            (Some(200), "{garbage"),
        ] {
            let w = World::new(CFG);
            let (mut s, h, _) = w.send(&post("k", b"a"));
            answer(&mut s, &h, reply.0, reply.1);
            let sent = h.last_sent().unwrap();
            assert_eq!(sent.status, 503, "{reply:?}");
            assert!(problem(&sent)["type"]
                .as_str()
                .unwrap()
                .ends_with("store-unavailable"));
            assert_eq!(h.count_of(Metric::StoreError), 1);
            // fail_closed released L1: the retry asks the key store again.
            let (_, h, _) = w.send(&post("k", b"a"));
            assert_eq!(h.callouts.borrow().len(), 1);

            let (mut s, h, _) = w.send(&Req {
                path: "/open/x",
                ..post("k", b"a")
            });
            answer(&mut s, &h, reply.0, reply.1);
            assert!(h.sent.borrow().is_empty());
            assert_eq!(h.resumed_request.get(), 1, "fail_open forwards");
            assert_eq!(h.count_of(Metric::FailOpen), 1);
        }
        let w = World::new(CFG);
        let h = FakeHost::new(&w.shared, &w.clock, &w.ids);
        h.refuse_dispatch.set(true);
        let mut s = Stream::new(w.worker.clone());
        let mut h = h;
        h.request_headers = vec![
            (":method".into(), b"POST".to_vec()),
            (":path".into(), b"/payments".to_vec()),
            ("idempotency-key".into(), b"z".to_vec()),
            ("authorization".into(), b"Bearer alice".to_vec()),
        ];
        assert_eq!(s.on_request_headers(&h, true), Flow::Pause);
        assert_eq!(h.last_sent().unwrap().status, 503);
    }

    #[test]
    fn server_error_releases_in_the_key_store_before_the_client_sees_it() {
        let w = World::new(CFG);
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        answer(
            &mut s,
            &h,
            Some(200),
            r#"{"outcome":"claimed","token":"T1"}"#,
        );
        assert_eq!(w.respond(&mut s, &mut h, 502, b""), Flow::Pause);
        let (_, rel) = h.last_callout().unwrap();
        assert!(rel
            .headers
            .contains(&(":path".into(), "/v1/release".into())));
        assert_eq!(crate::testing::callout_json(&rel)["token"], "T1");
        answer(&mut s, &h, Some(200), r#"{"outcome":"released"}"#);
        assert_eq!(h.resumed_response.get(), 1);
    }

    #[test]
    fn a_record_the_key_store_did_not_take_is_handed_over_for_retry() {
        let w = World::new(CFG);
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        answer(
            &mut s,
            &h,
            Some(200),
            r#"{"outcome":"claimed","token":"T1"}"#,
        );
        w.respond(&mut s, &mut h, 201, b"{}");
        let (_, complete) = h.last_callout().unwrap();
        answer(&mut s, &h, Some(503), "no healthy upstream");
        assert_eq!(
            h.resumed_response.get(),
            1,
            "the client is not kept waiting"
        );
        let deferred = w.handed_over();
        assert_eq!(deferred.len(), 1);
        assert_eq!(deferred[0].callout, complete);
        assert_eq!(
            deferred[0].until_ms,
            w.clock.get() + w.worker.cfg.lock_lease_ms
        );
        assert!(w.handed_over().is_empty());

        let (mut s, mut h, _) = w.send(&post("j", b"a"));
        answer(
            &mut s,
            &h,
            Some(200),
            r#"{"outcome":"claimed","token":"T2"}"#,
        );
        w.respond(&mut s, &mut h, 201, b"{}");
        answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
        assert!(w.handed_over().is_empty(), "stored: nothing to retry");
    }

    fn claimed(w: &World, key: &str, token: &str) -> (Stream, FakeHost) {
        let (mut s, h, _) = w.send(&post(key, b"a"));
        answer(
            &mut s,
            &h,
            Some(200),
            &format!(r#"{{"outcome":"claimed","token":"{token}"}}"#),
        );
        (s, h)
    }

    fn body_of(callout: &crate::host::Callout) -> Value {
        crate::testing::callout_json(callout)
    }

    #[test]
    fn a_client_gone_mid_request_hands_the_unknown_outcome_record_over() {
        let w = World::new(CFG);
        let (mut s, h) = claimed(&w, "k", "T9");
        s.on_done(&h);
        let deferred = w.handed_over();
        assert_eq!(deferred.len(), 1, "a record for the root context");
        let complete = &deferred[0].callout;
        assert!(complete
            .headers
            .contains(&(":path".into(), "/v1/complete".into())));
        let body = body_of(complete);
        assert_eq!(body["token"], "T9");
        let record = crate::testing::record_of_complete(&complete.body);
        assert!(matches!(record.outcome, Outcome::Unknown { .. }));
        assert_eq!(
            deferred[0].until_ms,
            w.clock.get() + w.worker.cfg.lock_lease_ms
        );
        s.on_done(&h);
        assert!(w.handed_over().is_empty(), "only once");
        let (_, h2, _) = w.send(&post("k", b"a"));
        assert_eq!(
            h2.last_sent().unwrap().status,
            409,
            "L1 holds the lock at once"
        );
        assert!(h2.callouts.borrow().is_empty());
    }

    #[test]
    fn a_client_gone_while_the_record_is_stored_hands_the_write_over() {
        let w = World::new(CFG);
        let (mut s, mut h) = claimed(&w, "k", "T3");
        assert_eq!(w.respond(&mut s, &mut h, 201, b"{}"), Flow::Pause);
        let (_, complete) = h.last_callout().unwrap();
        s.on_done(&h);
        let deferred = w.handed_over();
        assert_eq!(deferred.len(), 1);
        assert_eq!(deferred[0].callout, complete, "the real record, sent again");
        assert_eq!(h.count_of(Metric::UnknownOutcome), 0);
    }

    #[test]
    fn a_local_reply_during_the_claim_releases_what_the_claim_gets() {
        let w = World::new(CFG);
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        let (_, claim) = h.last_callout().unwrap();
        let proposed = body_of(&claim)["token"].as_str().unwrap().to_owned();
        assert_eq!(proposed.len(), 32);
        // Envoy's request timeout answers 408 while the claim is on its way.
        h.response_headers = vec![(":status".into(), b"408".to_vec())];
        assert_eq!(s.on_response_headers(&h, true), Flow::Continue);
        answer(
            &mut s,
            &h,
            Some(200),
            &format!(r#"{{"outcome":"claimed","token":"{proposed}"}}"#),
        );
        assert_eq!(h.resumed_request.get(), 0, "never forwarded");
        assert_eq!(h.count_of(Metric::Executed), 0);
        let deferred = w.handed_over();
        assert_eq!(deferred.len(), 1);
        assert_eq!(body_of(&deferred[0].callout)["token"], proposed.as_str());
        assert!(deferred[0]
            .callout
            .headers
            .contains(&(":path".into(), "/v1/release".into())));
        let (_, h2, flow) = w.send(&post("k", b"a"));
        assert_eq!(
            flow,
            Flow::Pause,
            "L1 is free: the retry claims in the key store"
        );
        assert_eq!(h2.callouts.borrow().len(), 1);
        let _ = &mut h;
    }

    #[test]
    fn a_stream_gone_before_the_claim_answer_releases_its_proposed_token_later() {
        let w = World::new(CFG);
        let (mut s, h, _) = w.send(&post("k", b"a"));
        let (_, claim) = h.last_callout().unwrap();
        let proposed = body_of(&claim)["token"].as_str().unwrap().to_owned();
        s.on_done(&h);
        assert!(
            w.handed_over().is_empty(),
            "not before the claim callout has surely landed"
        );
        w.advance(w.worker.cfg.keystore.as_ref().unwrap().timeout_ms);
        let deferred = w.handed_over();
        assert_eq!(deferred.len(), 1);
        assert_eq!(body_of(&deferred[0].callout)["token"], proposed.as_str());
        assert!(deferred[0]
            .callout
            .headers
            .contains(&(":path".into(), "/v1/release".into())));
        let (_, h2, _) = w.send(&post("k", b"a"));
        assert!(h2.last_sent().is_none(), "L1 was released at once");
    }

    #[test]
    fn renewals_go_to_the_key_store_with_the_token_until_the_answer() {
        let w = World::new(
            r#"{"lock_lease_ms":3000,"keystore":{"cluster":"ks"},"routes":[{"prefix":"/"}]}"#,
        );
        let (mut s, mut h) = claimed(&w, "k", "T5");
        w.advance(999);
        assert!(w.worker.on_tick(&w.shared, w.clock.get()).is_empty());
        w.advance(1);
        let out = w.worker.on_tick(&w.shared, w.clock.get());
        assert_eq!(out.len(), 1);
        let RootAction::Send(callout, purpose) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(matches!(purpose, Purpose::Renewal(_)));
        assert!(callout
            .headers
            .contains(&(":path".into(), "/v1/renew".into())));
        let body = body_of(callout);
        assert_eq!(
            (body["token"].as_str(), body["lease_ms"].as_u64()),
            (Some("T5"), Some(3000))
        );
        w.worker.sent(77, purpose.clone(), w.clock.get());
        let (reply, actions) = w.worker.on_reply(
            77,
            Some(409),
            Vec::new(),
            br#"{"outcome":"stale"}"#.to_vec(),
            &w.shared,
            w.clock.get(),
        );
        let Purpose::Renewal(key) = purpose else {
            unreachable!()
        };
        assert_eq!(reply, crate::worker::RootReply::RenewalRefused(*key));
        assert!(matches!(
            actions[..],
            [RootAction::Count(Metric::RenewalRefused)]
        ));
        w.respond(&mut s, &mut h, 201, b"{}");
        w.advance(5000);
        assert!(
            w.worker
                .on_tick(&w.shared, w.clock.get())
                .iter()
                .all(|a| !matches!(a, RootAction::Send(_, Purpose::Renewal(_)))),
            "no renewal once answered"
        );
    }

    #[test]
    fn a_record_for_another_fingerprint_is_never_replayed() {
        let w = World::new(CFG);
        let other = crate::record::Record {
            fingerprint: [9; 32],
            created_ms: 0,
            expires_ms: u64::MAX,
            outcome: Outcome::NotReplayable,
        };
        let (mut s, h, _) = w.send(&post("k", b"a"));
        let key = claim_key(&h);
        answer(
            &mut s,
            &h,
            Some(200),
            &format!(
                r#"{{"outcome":"completed","record":"{}"}}"#,
                B64.encode(other.seal(&key, crate::testing::TEST_SECRET.as_bytes()))
            ),
        );
        assert_eq!(h.last_sent().unwrap().status, 422);
    }

    /// The record key of the claim callout `h` made.
    fn claim_key(h: &FakeHost) -> crate::scope::RecordKey {
        let (_, claim) = h.last_callout().unwrap();
        let mut key = [0u8; 32];
        hex::decode_to_slice(body_of(&claim)["key"].as_str().unwrap(), &mut key).unwrap();
        crate::scope::RecordKey(key)
    }

    #[test]
    fn a_record_that_fails_verification_is_a_store_error_never_a_replay() {
        let w = World::new(CFG);
        // The first attempt's claim shows the record key and keyed fingerprint (what an attacker
        // with access to the store sees); the key store then fails, which frees L1.
        let (mut s, h, _) = w.send(&post("k", b"a"));
        let key = claim_key(&h);
        let fingerprint = {
            let (_, claim) = h.last_callout().unwrap();
            let mut fp = [0u8; 32];
            hex::decode_to_slice(body_of(&claim)["fingerprint"].as_str().unwrap(), &mut fp)
                .unwrap();
            fp
        };
        answer(&mut s, &h, Some(503), "");
        // What an attacker with write access to the store can make without the secret, for the
        // right key and fingerprint: unsealed, sealed under a guess, sealed for another key.
        let forged = crate::record::Record {
            fingerprint,
            created_ms: 0,
            expires_ms: u64::MAX,
            outcome: Outcome::Replayable(crate::record::StoredResponse {
                status: 200,
                headers: vec![("set-cookie".into(), b"session=attacker".to_vec())],
                body: b"forged".to_vec(),
            }),
        };
        for (i, blob) in [
            forged.encode(),
            forged.seal(&key, b"guessed-secret-guessed-secret-000"),
            forged.seal(
                &crate::scope::RecordKey([7; 32]),
                crate::testing::TEST_SECRET.as_bytes(),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let (mut s, h, _) = w.send(&post("k", b"a"));
            answer(
                &mut s,
                &h,
                Some(200),
                &format!(
                    r#"{{"outcome":"completed","record":"{}"}}"#,
                    B64.encode(blob)
                ),
            );
            let sent = h.last_sent().unwrap();
            assert_eq!(sent.status, 503, "forgery {i}: fail_closed");
            assert_ne!(sent.body, b"forged");
            assert_eq!(h.count_of(Metric::UnverifiedRecord), 1, "forgery {i}");
            assert_eq!(h.count_of(Metric::StoreError), 1, "forgery {i}");
            assert_eq!(h.count_of(Metric::Replayed), 0);
        }
    }
}

#[test]
fn stream_headers_mode_lets_headers_go_and_holds_the_body() {
    let w = World::new(r#"{"headers_mode":"stream"}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    w.respond(&mut s, &mut h, 201, b"1");
    let host = w.host(&post("k", b"a"));
    let mut s = Stream::new(w.worker.clone());
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(
        s.on_request_body(&host, 1, false),
        Flow::Pause,
        "the body waits for the decision"
    );
    assert_eq!(s.on_request_body(&host, 1, true), Flow::Pause);
    assert_eq!(host.last_sent().unwrap().status, 201, "replayed");
}

mod detached_and_waiting {
    use super::*;
    use crate::stream::REPLAYED_HEADER;
    use crate::worker::Answer;

    const DETACHED: &str = r#"{"unknown_hold_ms":1000,"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up","upstream_timeout_ms":900}]}"#;

    fn answers(actions: &[RootAction]) -> Vec<&Answer> {
        actions
            .iter()
            .filter_map(|a| match a {
                RootAction::Answer(answer) => Some(answer),
                _ => None,
            })
            .collect()
    }

    /// Sends a detached request on stream 7; returns the root's callout token and the callout.
    fn start(w: &World, key: &str) -> (Stream, FakeHost, crate::host::Callout) {
        w.worker.set_doorbell(1);
        let (s, h, flow) = w.send(&post(key, b"{\"amount\":1}"));
        assert_eq!(flow, Flow::Pause, "the router never sees the request");
        assert_eq!(h.woke_root.get(), 1);
        assert_eq!(h.count_of(Metric::DetachedExecuted), 1);
        let mut out = w.worker.start_detached();
        assert_eq!(out.len(), 1);
        let RootAction::Send(callout, purpose) = out.remove(0) else {
            panic!()
        };
        assert_eq!(callout.cluster, "up");
        assert_eq!(callout.timeout_ms, 900);
        assert!(callout
            .headers
            .contains(&(":path".into(), "/payments".into())));
        assert_eq!(callout.body, b"{\"amount\":1}");
        w.worker.sent(40, purpose, w.clock.get());
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
        let (_, actions) = w.worker.on_reply(
            40,
            Some(201),
            headers,
            b"{\"id\":1}".to_vec(),
            &w.shared,
            w.clock.get(),
        );
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
        let (_, actions) = w.worker.on_reply(
            40,
            Some(504),
            vec![],
            b"upstream request timeout".to_vec(),
            &w.shared,
            w.clock.get(),
        );
        assert_eq!(answers(&actions)[0].status, 504);
        assert!(actions
            .iter()
            .any(|a| matches!(a, RootAction::Count(Metric::UnknownOutcome))));
        let (_, retry, _) = w.send(&post("slow", b"{\"amount\":1}"));
        assert_eq!(retry.last_sent().unwrap().status, 409);

        start(&w, "down");
        let (_, actions) = w.worker.on_reply(
            40,
            Some(503),
            vec![],
            b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure".to_vec(),
            &w.shared,
            w.clock.get(),
        );
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
}

#[test]
fn observe_mode_forwards_everything_and_counts_what_enforce_would_answer() {
    let w = World::new(r#"{"mode":"observe","routes":[{"exact":"/payments","required":true}]}"#);
    let enforce_cfg =
        crate::testing::with_test_secret(r#"{"routes":[{"exact":"/payments","required":true}]}"#);
    let (mut s, mut h, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue);
    let (_, dup, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue, "in flight: forwarded");
    assert_eq!(dup.observed_of(Metric::Conflict), 1);
    w.respond(&mut s, &mut h, 201, b"paid");
    assert_eq!(h.observed_of(Metric::Executed), 1);
    assert_eq!(h.count_of(Metric::Executed), 0, "observe counts apart");
    for (req, metric) in [
        (post("k", b"a"), Metric::Replayed),
        (post("k", b"b"), Metric::Mismatch),
        (
            Req {
                key: None,
                ..post("k", b"a")
            },
            Metric::MissingKey,
        ),
        (post("", b"a"), Metric::InvalidKey),
    ] {
        let (_, h, flow) = w.send(&req);
        assert_eq!(flow, Flow::Continue, "{metric:?}");
        assert!(h.sent.borrow().is_empty(), "{metric:?}: no local reply");
        assert_eq!(h.observed_of(metric), 1, "{metric:?}");
    }
    // The record was stored as usual: the same key under enforce replays it.
    let enforce = Worker::new(
        Config::parse(enforce_cfg.as_bytes()).unwrap(),
        NearCache {
            slots: w.worker.cache.slots,
            slot_budget: w.worker.cache.slot_budget,
        },
    );
    let h = FakeHost::new(&w.shared, &w.clock, &w.ids);
    let mut host = h;
    host.request_headers = vec![
        (":method".into(), b"POST".to_vec()),
        (":path".into(), b"/payments".to_vec()),
        ("idempotency-key".into(), b"k".to_vec()),
        ("authorization".into(), b"Bearer alice".to_vec()),
    ];
    host.request_body = b"a".to_vec();
    let mut s = Stream::new(Rc::new(enforce));
    s.on_request_headers(&host, false);
    s.on_request_body(&host, 1, true);
    assert_eq!(host.last_sent().unwrap().body, b"paid", "warm store");
}

const OLD_SECRET: &str = "old-secret-0123456789abcdef0123456789";
const NEW_SECRET: &str = "new-secret-0123456789abcdef0123456789";

#[test]
fn after_a_rotation_records_of_the_previous_secret_replay_from_l1() {
    let old = World::new(&format!(r#"{{"hmac_secret":"{OLD_SECRET}"}}"#));
    let (mut s, mut h, _) = old.send(&post("k", b"a"));
    old.respond(&mut s, &mut h, 201, b"{\"id\":1}");
    let rotated = old.sharing(&format!(
        r#"{{"hmac_secrets":["{NEW_SECRET}","{OLD_SECRET}"]}}"#
    ));
    let (_, h2, _) = rotated.send(&post("k", b"a"));
    let sent = h2.last_sent().unwrap();
    assert_eq!(
        (sent.status, sent.body.as_slice()),
        (201, &b"{\"id\":1}"[..])
    );
    assert_eq!(h2.count_of(Metric::Executed), 0);
    // Another payload under the same key is still a reuse, across the rotation.
    let (_, h3, _) = rotated.send(&post("k", b"b"));
    assert_eq!(h3.last_sent().unwrap().status, 422);
    // A key never used before executes under the new secret.
    let (_, h4, flow) = rotated.send(&post("fresh", b"a"));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h4.count_of(Metric::Executed), 1);
    // Without the old secret in the list, the old record is not found: the key executes again.
    let forgotten = old.sharing(&format!(r#"{{"hmac_secret":"{NEW_SECRET}"}}"#));
    let (_, h5, flow) = forgotten.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h5.count_of(Metric::Executed), 1);
}

mod rotation_with_keystore {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    fn cfg() -> String {
        format!(
            r#"{{"hmac_secrets":["{NEW_SECRET}","{OLD_SECRET}"],"keystore":{{"cluster":"ks","token":"s3cret"}},"failure_mode":"fail_closed"}}"#
        )
    }

    fn body_of(c: &crate::host::Callout) -> Value {
        crate::testing::callout_json(c)
    }

    fn path_of(c: &crate::host::Callout) -> String {
        c.headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    fn hex32(v: &Value) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(v.as_str().unwrap(), &mut out).unwrap();
        out
    }

    /// A record of the lookup's key and fingerprint, sealed under `secret`.
    fn completed(lookup: &crate::host::Callout, secret: &str) -> String {
        let b = body_of(lookup);
        let record = crate::record::Record {
            fingerprint: hex32(&b["fingerprint"]),
            created_ms: 0,
            expires_ms: u64::MAX,
            outcome: Outcome::Replayable(crate::record::StoredResponse {
                status: 201,
                headers: vec![],
                body: b"old".to_vec(),
            }),
        };
        let sealed = record.seal(
            &crate::scope::RecordKey(hex32(&b["key"])),
            secret.as_bytes(),
        );
        format!(
            r#"{{"outcome":"completed","record":"{}"}}"#,
            B64.encode(sealed)
        )
    }

    #[test]
    fn a_record_under_the_previous_secret_is_found_before_claiming() {
        let w = World::new(&cfg());
        let (mut s, h, flow) = w.send(&post("k", b"a"));
        assert_eq!(flow, Flow::Pause);
        let (token, lookup) = h.last_callout().unwrap();
        assert_eq!(path_of(&lookup), "/v1/lookup");
        s.on_callout_response(
            &h,
            token,
            Some(200),
            completed(&lookup, OLD_SECRET).as_bytes(),
        );
        let sent = h.last_sent().unwrap();
        assert_eq!((sent.status, sent.body.as_slice()), (201, &b"old"[..]));
        assert_eq!(h.count_of(Metric::Replayed), 1);
        assert_eq!(
            h.callouts.borrow().len(),
            1,
            "no claim under the new secret"
        );
    }

    #[test]
    fn nothing_under_the_previous_secret_then_the_claim_goes_under_the_new_one() {
        let w = World::new(&cfg());
        let (mut s, h, _) = w.send(&post("k", b"a"));
        let (token, lookup) = h.last_callout().unwrap();
        s.on_callout_response(&h, token, Some(200), br#"{"outcome":"absent"}"#);
        let (_, claim) = h.last_callout().unwrap();
        assert_eq!(path_of(&claim), "/v1/claim");
        assert_ne!(body_of(&claim)["key"], body_of(&lookup)["key"]);
        assert_ne!(
            body_of(&claim)["fingerprint"],
            body_of(&lookup)["fingerprint"]
        );
    }

    #[test]
    fn observe_mode_goes_on_after_a_lookup_under_the_previous_secret() {
        let observe = cfg().replacen('{', r#"{"mode":"observe","#, 1);
        let w = World::new(&observe);
        let (mut s, h, flow) = w.send(&post("k", b"a"));
        assert_eq!(flow, Flow::Pause, "the lookup holds the request");
        let (token, lookup) = h.last_callout().unwrap();
        s.on_callout_response(
            &h,
            token,
            Some(200),
            completed(&lookup, OLD_SECRET).as_bytes(),
        );
        assert!(
            h.last_sent().is_none(),
            "observe mode never answers locally"
        );
        assert_eq!(h.resumed_request.get(), 1, "the paused request goes on");
        assert_eq!(h.observed_of(Metric::Replayed), 1);
        assert_eq!(h.count_of(Metric::Replayed), 0);
    }

    #[test]
    fn in_flight_or_forged_under_the_previous_secret() {
        let w = World::new(&cfg());
        let (mut s, h, _) = w.send(&post("k", b"a"));
        let (token, _) = h.last_callout().unwrap();
        s.on_callout_response(
            &h,
            token,
            Some(200),
            br#"{"outcome":"in_flight","retry_after_ms":5}"#,
        );
        assert_eq!(h.last_sent().unwrap().status, 409);

        let (mut s, h, _) = w.send(&post("k2", b"a"));
        let (token, lookup) = h.last_callout().unwrap();
        let forged = completed(&lookup, "a-guess-at-the-secret-0123456789abc");
        s.on_callout_response(&h, token, Some(200), forged.as_bytes());
        assert_eq!(h.last_sent().unwrap().status, 503);
        assert_eq!(h.count_of(Metric::UnverifiedRecord), 1);
        assert_eq!(h.count_of(Metric::Replayed), 0);
    }
}

/// Answers that create or replay a record say until when the key is honoured.
mod expiry_header {
    use super::*;
    use crate::expiry::http_date;

    const NAME: &str = "idempotency-expires";
    const RETENTION_MS: u64 = 60_000;

    fn set_on_first_answer(h: &FakeHost) -> Option<Vec<u8>> {
        h.response_headers_set
            .borrow()
            .iter()
            .find(|(n, _)| n == NAME)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn the_first_answer_and_every_replay_carry_the_records_expiry() {
        let w = World::new(r#"{"retention_s":60}"#);
        let created = w.clock.get();
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        w.respond(&mut s, &mut h, 201, b"{}");
        let expected = http_date(created + RETENTION_MS).into_bytes();
        assert_eq!(set_on_first_answer(&h), Some(expected.clone()));

        // Later replays name the same instant, not one counted from their own time.
        w.advance(5_000);
        let (_, h2, _) = w.send(&post("k", b"a"));
        let replay = h2.last_sent().unwrap();
        assert_eq!(replay.status, 201);
        assert_eq!(replay.header(NAME), Some(expected.as_slice()));
        assert_eq!(
            replay.headers.iter().filter(|(n, _)| n == NAME).count(),
            1,
            "one field"
        );
    }

    #[test]
    fn an_upstreams_own_field_of_that_name_is_replaced_on_replay() {
        let w = World::new("{}");
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        h.response_headers = vec![
            (":status".into(), b"201".to_vec()),
            ("Idempotency-Expires".into(), b"never".to_vec()),
        ];
        h.response_body = b"{}".to_vec();
        let _ = s.on_response_headers(&h, false);
        let _ = s.on_response_body(&h, 2, true);
        let (_, h2, _) = w.send(&post("k", b"a"));
        let replay = h2.last_sent().unwrap();
        let fields: Vec<&[u8]> = replay
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(NAME))
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(fields, [set_on_first_answer(&h).unwrap().as_slice()]);
    }

    #[test]
    fn off_or_renamed_by_configuration() {
        for doc in [r#"{"expires_header":false}"#, r#"{"expires_header":null}"#] {
            let w = World::new(doc);
            let (mut s, mut h, _) = w.send(&post("k", b"a"));
            w.respond(&mut s, &mut h, 201, b"{}");
            assert!(h.response_headers_set.borrow().is_empty(), "{doc}");
            let (_, h2, _) = w.send(&post("k", b"a"));
            let replay = h2.last_sent().unwrap();
            assert_eq!(replay.status, 201);
            assert_eq!(replay.header(NAME), None, "{doc}");
        }
        let w = World::new(r#"{"expires_header":"Key-Valid-Until"}"#);
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        w.respond(&mut s, &mut h, 201, b"{}");
        let first = h.response_headers_set.borrow().clone();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, "key-valid-until");
        let (_, h2, _) = w.send(&post("k", b"a"));
        let replay = h2.last_sent().unwrap();
        assert_eq!(
            replay.header("key-valid-until"),
            Some(first[0].1.as_slice())
        );
        assert_eq!(replay.header(NAME), None);
    }

    #[test]
    fn problem_answers_and_released_keys_carry_none() {
        let w = World::new(r#"{"max_response_bytes":64}"#);
        // In flight: 409. Another payload: 422.
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        let (_, dup, _) = w.send(&post("k", b"a"));
        assert_eq!(dup.last_sent().unwrap().status, 409);
        assert_eq!(dup.last_sent().unwrap().header(NAME), None);
        w.respond(&mut s, &mut h, 201, b"{}");
        let (_, other, _) = w.send(&post("k", b"b"));
        assert_eq!(other.last_sent().unwrap().status, 422);
        assert_eq!(other.last_sent().unwrap().header(NAME), None);
        // A 5xx releases the key: no record, no expiry.
        let (mut s, mut h, _) = w.send(&post("released", b"a"));
        w.respond(&mut s, &mut h, 503, b"{}");
        assert!(h.response_headers_set.borrow().is_empty());
        // Too large to keep: retries get 410, without the header.
        let (mut s, h, _) = w.send(&post("large", b"a"));
        let mut h = h;
        h.response_headers = vec![(":status".into(), b"200".to_vec())];
        let _ = s.on_response_headers(&h, false);
        let _ = s.on_response_body(&h, 65, false);
        let (_, retry, _) = w.send(&post("large", b"a"));
        assert_eq!(retry.last_sent().unwrap().status, 410);
        assert_eq!(retry.last_sent().unwrap().header(NAME), None);
    }

    #[test]
    fn observe_mode_adds_nothing() {
        let w = World::new(r#"{"mode":"observe"}"#);
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        w.respond(&mut s, &mut h, 201, b"{}");
        assert!(h.response_headers_set.borrow().is_empty());
        let (_, h2, flow) = w.send(&post("k", b"a"));
        assert_eq!(flow, Flow::Continue, "forwarded, not replayed");
        assert!(h2.sent.borrow().is_empty());
        assert_eq!(h2.observed_of(Metric::Replayed), 1);
    }

    #[test]
    fn a_replay_from_the_key_store_carries_the_same_value() {
        const CFG: &str = r#"{"keystore":{"cluster":"ks","token":"s3cret"}}"#;
        let answer = |s: &mut Stream, h: &FakeHost, body: &str| {
            let (token, _) = h.last_callout().unwrap();
            s.on_callout_response(h, token, Some(200), body.as_bytes());
        };
        let w = World::new(CFG);
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        answer(&mut s, &h, r#"{"outcome":"claimed","token":"T1"}"#);
        w.respond(&mut s, &mut h, 201, b"{}");
        let first = set_on_first_answer(&h).unwrap();
        let (_, complete) = h.last_callout().unwrap();
        let v = crate::testing::callout_json(&complete);
        let record = v["record"].as_str().unwrap().to_string();
        answer(&mut s, &h, r#"{"outcome":"stored"}"#);

        w.advance(3_000);
        let other = w.sharing(CFG);
        let other = World {
            shared: FakeShared::default(),
            ..other
        };
        other.worker.cache.ensure_slots(&other.shared).unwrap();
        let (mut s2, h2, _) = other.send(&post("k", b"a"));
        answer(
            &mut s2,
            &h2,
            &format!(r#"{{"outcome":"completed","record":"{record}"}}"#),
        );
        let replay = h2.last_sent().unwrap();
        assert_eq!(replay.status, 201);
        assert_eq!(replay.header(NAME), Some(first.as_slice()));
    }

    #[test]
    fn a_detached_answer_and_its_replay_carry_the_same_value() {
        let w = World::new(
            r#"{"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up"}]}"#,
        );
        w.worker.set_doorbell(1);
        let (_s, _h, _) = w.send(&post("k", b"a"));
        let mut out = w.worker.start_detached();
        let RootAction::Send(_, purpose) = out.remove(0) else {
            panic!("the detached request is sent")
        };
        w.worker.sent(40, purpose, w.clock.get());
        let now = w.clock.get();
        let (_, actions) = w.worker.on_reply(
            40,
            Some(201),
            vec![(":status".to_string(), b"201".to_vec())],
            b"{}".to_vec(),
            &w.shared,
            now,
        );
        let first = actions
            .iter()
            .find_map(|a| match a {
                RootAction::Answer(answer) => Some(answer.clone()),
                _ => None,
            })
            .unwrap();
        let value = first
            .headers
            .iter()
            .find(|(n, _)| n == NAME)
            .map(|(_, v)| v.clone());
        assert_eq!(value, Some(http_date(now + 86_400_000).into_bytes()));
        w.advance(1_000);
        let (_, retry, _) = w.send(&post("k", b"a"));
        assert_eq!(retry.last_sent().unwrap().header(NAME), value.as_deref());
    }
}
