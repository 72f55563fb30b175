//! With a key store: what a stream hands to its root context when it cannot finish the work itself
//! (the client gone, a local reply during the claim, a claim answered after the stream ended), and
//! renewals sent with the claim's token.

use super::keystore::{answer, body_of, claimed, CFG};
use super::*;

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
