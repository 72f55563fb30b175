//! With a key store: the claim, the store and the replay from it, duplicates on one Envoy, the
//! failure modes, and records that must never be replayed (another fingerprint, a bad signature).

use super::*;
use crate::background::deferred::MAX_RETRY_PAST_LEASE_MS;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

pub(super) const CFG: &str = r#"{"keystore":{"cluster":"ks","token":"s3cret"},"routes":[{"prefix":"/payments","failure_mode":"fail_closed"},{"prefix":"/open","failure_mode":"fail_open"}]}"#;

pub(super) fn answer(s: &mut Stream, h: &FakeHost, status: Option<u16>, body: &str) {
    let (token, _) = h.last_callout().unwrap();
    s.on_callout_response(h, token, status, body.as_bytes());
}

/// The key store grants the claim the stream's last callout made, with `token`.
pub(super) fn grant(s: &mut Stream, h: &FakeHost, token: &str) {
    let claimed = format!(r#"{{"outcome":"claimed","token":"{token}"}}"#);
    answer(s, h, Some(200), &claimed);
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
    grant(&mut s, &h, "T1");
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
    answer(&mut s2, &h2, Some(200), &completed_reply(&record));
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
    let (mut s, mut h) = claimed(&w, "k", "T1");
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
    let (mut s, mut h) = claimed(&w, "k", "T1");
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
    // Retried past the lease, while the key store keeps the claim (abandoned): a late write wins.
    assert_eq!(
        deferred[0].until_ms,
        w.clock.get() + w.worker.cfg.lock_lease_ms + MAX_RETRY_PAST_LEASE_MS
    );
    assert!(w.handed_over().is_empty());

    let (mut s, mut h) = claimed(&w, "j", "T2");
    w.respond(&mut s, &mut h, 201, b"{}");
    answer(&mut s, &h, Some(200), r#"{"outcome":"stored"}"#);
    assert!(w.handed_over().is_empty(), "stored: nothing to retry");
}

/// A request whose claim the key store granted with `token`: it goes on to the upstream.
pub(super) fn claimed(w: &World, key: &str, token: &str) -> (Stream, FakeHost) {
    let (mut s, h, _) = w.send(&post(key, b"a"));
    grant(&mut s, &h, token);
    (s, h)
}

/// The key store's answer to a claim or lookup that found `record` (base64).
fn completed_reply(record: &str) -> String {
    format!(r#"{{"outcome":"completed","record":"{record}"}}"#)
}

pub(super) fn body_of(callout: &crate::host::Callout) -> Value {
    crate::testing::callout_json(callout)
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
        &completed_reply(&B64.encode(other.seal(&key, crate::testing::TEST_SECRET.as_bytes()))),
    );
    assert_eq!(h.last_sent().unwrap().status, 422);
}

/// A 32-byte field (`key`, `fingerprint`) of the claim callout `h` made.
fn claim_field(h: &FakeHost, name: &str) -> [u8; 32] {
    let (_, claim) = h.last_callout().unwrap();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(body_of(&claim)[name].as_str().unwrap(), &mut bytes).unwrap();
    bytes
}

/// The record key of the claim callout `h` made.
fn claim_key(h: &FakeHost) -> crate::scope::RecordKey {
    crate::scope::RecordKey(claim_field(h, "key"))
}

#[test]
fn a_record_that_fails_verification_is_answered_as_such_never_replayed_nor_executed() {
    let w = World::new(CFG);
    // The first attempt's claim shows the record key and keyed fingerprint (what an attacker
    // with access to the store sees); the key store then fails, which frees L1.
    let (mut s, h, _) = w.send(&post("k", b"a"));
    let key = claim_key(&h);
    let fingerprint = claim_field(&h, "fingerprint");
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
            ..Default::default()
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
        answer(&mut s, &h, Some(200), &completed_reply(&B64.encode(blob)));
        let sent = h.last_sent().unwrap();
        assert_eq!(sent.status, 502, "forgery {i}");
        assert!(problem(&sent)["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("record-unverifiable")));
        assert_ne!(sent.body, b"forged");
        assert_eq!(h.count_of(Metric::UnverifiedRecord), 1, "forgery {i}");
        assert_eq!(
            h.count_of(Metric::StoreError),
            0,
            "forgery {i}: the key store answered"
        );
        assert_eq!(h.count_of(Metric::Replayed), 0);
    }
    // Under fail_open too: the key store answered, and the key may hold an execution.
    let (mut s, h, _) = w.send(&Req {
        path: "/open",
        ..post("k", b"a")
    });
    answer(
        &mut s,
        &h,
        Some(200),
        &completed_reply(&B64.encode(forged.encode())),
    );
    assert_eq!(h.last_sent().unwrap().status, 502);
    assert_eq!(h.count_of(Metric::Executed), 0);
    assert_eq!(h.count_of(Metric::FailOpen), 0);
}
