//! The state machine driven through the fake host, as Envoy would drive it: several streams
//! (workers) over one shared-data map and one clock.

use crate::config::Config;
use crate::l1::NearCache;
use crate::metrics::Metric;
use crate::stream::{Flow, Stream};
use crate::testing::{FakeHost, FakeShared, Sent};
use serde_json::Value;
use std::cell::Cell;
use std::rc::Rc;

struct World {
    cfg: Rc<Config>,
    cache: Rc<NearCache>,
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
        let cfg = Config::parse(json.as_bytes()).unwrap();
        let cache = NearCache {
            slots: cfg.l1_slots,
            slot_budget: cfg.max_response_bytes + 4096,
        };
        let shared = FakeShared::default();
        cache.ensure_slots(&shared).unwrap();
        World {
            cfg: Rc::new(cfg),
            cache: Rc::new(cache),
            shared,
            clock: Rc::new(Cell::new(1_000)),
            ids: Rc::new(Cell::new(0)),
        }
    }

    /// Runs the request side; returns the stream, its host and what the last request callback returned.
    fn send(&self, req: &Req) -> (Stream, FakeHost, Flow) {
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
        let mut stream = Stream::new(self.cfg.clone(), self.cache.clone());
        let mut flow = stream.on_request_headers(&host, req.body.is_empty());
        if !req.body.is_empty() && host.sent.borrow().is_empty() {
            flow = stream.on_request_body(&host, req.body.len(), true);
        }
        (stream, host, flow)
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
fn keys_are_scoped_to_the_caller_and_anonymous_can_be_refused() {
    let w = World::new("{}");
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

    let strict = World::new(r#"{"anonymous":"reject"}"#);
    let (_, h, _) = strict.send(&Req {
        caller: None,
        ..post("k", b"a")
    });
    assert_eq!(h.last_sent().unwrap().status, 401);
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
fn a_reset_or_client_disconnect_releases_the_claim() {
    let w = World::new("{}");
    let (mut s, h, _) = w.send(&post("k", b"a"));
    s.on_done(&h);
    assert!(
        s.take_deferred().is_empty(),
        "no key store: nothing to hand over"
    );
    assert_eq!(h.count_of(Metric::Released), 1);
    let (_, h, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue);
    assert!(h.sent.borrow().is_empty());
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
        ("idempotency-key".into(), b"t".to_vec()),
    ];
    host.request_body = b"chunk".to_vec();
    let mut s = Stream::new(w.cfg.clone(), w.cache.clone());
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
        let body = String::from_utf8(claim.body.clone()).unwrap();
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
        let v: Value = serde_json::from_slice(&complete.body).unwrap();
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
        let mut s = Stream::new(w.cfg.clone(), w.cache.clone());
        let mut h = h;
        h.request_headers = vec![
            (":method".into(), b"POST".to_vec()),
            (":path".into(), b"/payments".to_vec()),
            ("idempotency-key".into(), b"z".to_vec()),
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
        assert_eq!(
            serde_json::from_slice::<Value>(&rel.body).unwrap()["token"],
            "T1"
        );
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
        let deferred = s.take_deferred();
        assert_eq!(deferred.len(), 1);
        assert_eq!(deferred[0].callout, complete);
        assert_eq!(deferred[0].until_ms, w.clock.get() + w.cfg.lock_lease_ms);
        assert!(s.take_deferred().is_empty());

        let (mut s, mut h, _) = w.send(&post("j", b"a"));
        answer(
            &mut s,
            &h,
            Some(200),
            r#"{"outcome":"claimed","token":"T2"}"#,
        );
        w.respond(&mut s, &mut h, 201, b"{}");
        answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
        assert!(s.take_deferred().is_empty(), "stored: nothing to retry");
    }

    #[test]
    fn a_client_gone_mid_request_hands_the_key_store_release_over() {
        let w = World::new(CFG);
        let (mut s, h, _) = w.send(&post("k", b"a"));
        answer(
            &mut s,
            &h,
            Some(200),
            r#"{"outcome":"claimed","token":"T9"}"#,
        );
        s.on_done(&h);
        let deferred = s.take_deferred();
        assert_eq!(deferred.len(), 1, "a release for the root context");
        let release = &deferred[0].callout;
        assert!(release
            .headers
            .contains(&(":path".into(), "/v1/release".into())));
        assert_eq!(
            serde_json::from_slice::<Value>(&release.body).unwrap()["token"],
            "T9"
        );
        assert_eq!(deferred[0].until_ms, w.clock.get() + w.cfg.lock_lease_ms);
        s.on_done(&h);
        assert!(s.take_deferred().is_empty(), "only once");
        let (_, h2, _) = w.send(&post("k", b"a"));
        assert_eq!(h2.callouts.borrow().len(), 1, "L1 was released at once");
    }

    #[test]
    fn a_record_for_another_fingerprint_is_never_replayed() {
        let w = World::new(CFG);
        let other = crate::record::Record {
            fingerprint: [9; 32],
            created_ms: 0,
            expires_ms: u64::MAX,
            response: None,
        };
        let (mut s, h, _) = w.send(&post("k", b"a"));
        answer(
            &mut s,
            &h,
            Some(200),
            &format!(
                r#"{{"outcome":"completed","record":"{}"}}"#,
                B64.encode(other.encode())
            ),
        );
        assert_eq!(h.last_sent().unwrap().status, 422);
    }
}

#[test]
fn stream_headers_mode_lets_headers_go_and_holds_the_body() {
    let w = World::new(r#"{"headers_mode":"stream"}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    w.respond(&mut s, &mut h, 201, b"1");
    let mut host = FakeHost::new(&w.shared, &w.clock, &w.ids);
    host.request_headers = vec![
        (":method".into(), b"POST".to_vec()),
        (":path".into(), b"/payments".to_vec()),
        ("idempotency-key".into(), b"k".to_vec()),
        ("authorization".into(), b"Bearer alice".to_vec()),
    ];
    host.request_body = b"a".to_vec();
    let mut s = Stream::new(w.cfg.clone(), w.cache.clone());
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(
        s.on_request_body(&host, 1, false),
        Flow::Pause,
        "the body waits for the decision"
    );
    assert_eq!(s.on_request_body(&host, 1, true), Flow::Pause);
    assert_eq!(host.last_sent().unwrap().status, 201, "replayed");
}
