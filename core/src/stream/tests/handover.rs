//! With a key store: what a stream hands to its root context when it cannot finish the work itself
//! (the client gone, a local reply during the claim, a claim answered after the stream ended), and
//! renewals sent with the claim's token.

use super::keystore::{body_of, claimed, grant, CFG};
use super::*;
use crate::background::deferred::MAX_RETRY_PAST_LEASE_MS;

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
    // Retried past the lease, while the key store keeps the claim (abandoned): a late write wins.
    assert_eq!(
        deferred[0].until_ms,
        w.clock.get() + w.worker.cfg.lock_lease_ms + MAX_RETRY_PAST_LEASE_MS
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

/// The root context was handed one write: the release of the claim `token` names.
fn assert_release_handed_over(w: &World, token: &str) {
    let deferred = w.handed_over();
    assert_eq!(deferred.len(), 1);
    assert_eq!(body_of(&deferred[0].callout)["token"], token);
    assert!(deferred[0]
        .callout
        .headers
        .contains(&(":path".into(), "/v1/release".into())));
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
    grant(&mut s, &h, &proposed);
    assert_eq!(h.resumed_request.get(), 0, "never forwarded");
    assert_eq!(h.count_of(Metric::Executed), 0);
    assert_release_handed_over(&w, &proposed);
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
    assert_release_handed_over(&w, &proposed);
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
    let Purpose::Renewal(keys) = purpose else {
        panic!("{purpose:?}")
    };
    assert_eq!(keys.len(), 1);
    assert!(callout
        .headers
        .contains(&(":path".into(), "/v1/renew-batch".into())));
    let body = body_of(callout);
    assert_eq!(
        (
            body["renewals"][0]["token"].as_str(),
            body["renewals"][0]["lease_ms"].as_u64()
        ),
        (Some("T5"), Some(3000))
    );
    w.worker.sent(77, purpose.clone(), w.clock.get());
    let (reply, actions) = w.worker.on_reply(
        77,
        Some(200),
        Vec::new(),
        br#"{"outcomes":["stale"]}"#.to_vec(),
        &w.shared,
        w.clock.get(),
    );
    assert_eq!(
        reply,
        crate::background::worker::RootReply::Renewals {
            renewed: 0,
            refused: keys.clone()
        }
    );
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

/// Renewal batches sent at one tick: their keys and the tokens of their entries.
fn renewal_batches(out: &[RootAction]) -> Vec<(Purpose, Vec<String>)> {
    out.iter()
        .filter_map(|a| match a {
            RootAction::Send(c, p @ Purpose::Renewal(_)) => {
                let tokens = body_of(c)["renewals"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["token"].as_str().unwrap().to_owned())
                    .collect();
                Some((p.clone(), tokens))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn streams_in_flight_renew_in_one_callout_per_tick_and_a_stale_one_is_counted() {
    let w = World::new(
        r#"{"lock_lease_ms":3000,"keystore":{"cluster":"ks"},"routes":[{"prefix":"/"}]}"#,
    );
    let mut streams: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, k)| claimed(&w, k, &format!("T{i}")))
        .collect();
    w.advance(1000);
    let out = w.worker.on_tick(&w.shared, w.clock.get());
    let batches = renewal_batches(&out);
    assert_eq!(out.len(), 1, "one callout for every claim due: {out:?}");
    let (purpose, mut tokens) = batches[0].clone();
    let Purpose::Renewal(keys) = &purpose else {
        unreachable!()
    };
    assert_eq!(keys.len(), 4);
    tokens.sort();
    assert_eq!(tokens, ["T0", "T1", "T2", "T3"]);
    // The second entry was taken over; the others are renewed.
    w.worker.sent(90, purpose.clone(), w.clock.get());
    let (reply, actions) = w.worker.on_reply(
        90,
        Some(200),
        Vec::new(),
        br#"{"outcomes":["renewed","stale","renewed","renewed"]}"#.to_vec(),
        &w.shared,
        w.clock.get(),
    );
    assert_eq!(
        reply,
        crate::background::worker::RootReply::Renewals {
            renewed: 3,
            refused: vec![keys[1]]
        }
    );
    assert!(matches!(
        actions[..],
        [RootAction::Count(Metric::RenewalRefused)]
    ));
    // A failed batch is a failed renewal of each key, tried again at the next period.
    w.advance(1000);
    let (purpose, _) = renewal_batches(&w.worker.on_tick(&w.shared, w.clock.get()))[0].clone();
    w.worker.sent(91, purpose, w.clock.get());
    let (reply, actions) = w.worker.on_reply(
        91,
        Some(503),
        Vec::new(),
        br#"{"error":"backend unavailable: x"}"#.to_vec(),
        &w.shared,
        w.clock.get(),
    );
    assert!(
        matches!(
            reply,
            crate::background::worker::RootReply::RenewalFailed { keys: 4, .. }
        ),
        "{reply:?}"
    );
    assert_eq!(actions.len(), 4);
    assert!(actions
        .iter()
        .all(|a| matches!(a, RootAction::Count(Metric::StoreError))));
    w.advance(999);
    assert!(renewal_batches(&w.worker.on_tick(&w.shared, w.clock.get())).is_empty());
    w.advance(1);
    assert_eq!(
        renewal_batches(&w.worker.on_tick(&w.shared, w.clock.get()))[0]
            .1
            .len(),
        4,
        "retried at the next period"
    );
    // Answered streams leave the batch.
    for (s, h) in streams.iter_mut().take(3) {
        w.respond(s, h, 201, b"{}");
    }
    w.advance(1000);
    let batches = renewal_batches(&w.worker.on_tick(&w.shared, w.clock.get()));
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].1, ["T3"]);
}

#[test]
fn more_claims_than_a_batch_holds_go_in_further_callouts() {
    use idempotency_protocol::MAX_RENEW_BATCH;
    let w = World::new(
        r#"{"lock_lease_ms":3000,"keystore":{"cluster":"ks"},"routes":[{"prefix":"/"}]}"#,
    );
    let _streams: Vec<_> = (0..=MAX_RENEW_BATCH)
        .map(|i| claimed(&w, &format!("k{i}"), &format!("T{i}")))
        .collect();
    w.advance(1000);
    let out = w.worker.on_tick(&w.shared, w.clock.get());
    let sizes: Vec<usize> = renewal_batches(&out).iter().map(|(_, t)| t.len()).collect();
    assert_eq!(sizes, [MAX_RENEW_BATCH, 1]);
}
