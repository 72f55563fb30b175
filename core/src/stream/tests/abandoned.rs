//! Abandoned claims: a key whose holder let its key-store lease run out without an answer (a
//! gateway killed mid-request). Under `unknown_outcome: "lock"` the claim asks the key store to
//! report it, and the key answers as a stored unknown-outcome record would: 409 until the route's
//! `unknown_hold_ms` has passed since the lease ended, then the terminal 410. Under `"release"`
//! the claim takes the key over and executes.

use super::keystore::answer;
use super::*;

const LOCK: &str = r#"{"keystore":{"cluster":"ks"},"unknown_hold_ms":5000,"retention_s":600,"routes":[{"prefix":"/payments"},{"prefix":"/retry","unknown_outcome":"release","retention_s":60}]}"#;

fn abandoned(ms_ago: u64) -> String {
    format!(r#"{{"outcome":"abandoned","lease_ended_ms_ago":{ms_ago}}}"#)
}

#[test]
fn the_claim_names_the_policy_and_the_retention_of_its_route() {
    let w = World::new(LOCK);
    let (_s, h, _) = w.send(&post("k", b"a"));
    let (_, claim) = h.last_callout().unwrap();
    let v = crate::testing::callout_json(&claim);
    assert_eq!(v["abandoned"], "report");
    assert_eq!(v["retention_ms"], 600_000);
    let (_s, h, _) = w.send(&Req {
        path: "/retry",
        ..post("k", b"a")
    });
    let (_, claim) = h.last_callout().unwrap();
    let v = crate::testing::callout_json(&claim);
    assert_eq!(v["abandoned"], "take_over");
    assert_eq!(v["retention_ms"], 60_000);
}

#[test]
fn an_abandoned_key_is_held_then_answers_outcome_unknown() {
    let w = World::new(LOCK);
    w.advance(60_000);
    // The lease ended 1.5 s ago: 3.5 s of the 5 s hold are left.
    let (mut s, h, _) = w.send(&post("k", b"a"));
    answer(&mut s, &h, Some(200), &abandoned(1_500));
    let sent = h.last_sent().unwrap();
    assert_eq!(sent.status, 409);
    assert_eq!(sent.header("retry-after"), Some(&b"4"[..]));
    assert_eq!(
        problem(&sent)["type"]
            .as_str()
            .map(|t| t.ends_with("request-in-progress")),
        Some(true)
    );
    assert_eq!(h.count_of(Metric::Conflict), 1);
    assert_eq!(h.count_of(Metric::Executed), 0);
    // L1's claim was given back: the next retry asks the key store again, and once the hold has
    // passed it gets the terminal answer.
    let (mut s, h, _) = w.send(&post("k", b"a"));
    assert_eq!(h.callouts.borrow().len(), 1, "asked the key store again");
    answer(&mut s, &h, Some(200), &abandoned(5_000));
    let sent = h.last_sent().unwrap();
    assert_eq!(sent.status, 410);
    assert!(problem(&sent)["type"]
        .as_str()
        .is_some_and(|t| t.ends_with("outcome-unknown")));
    assert_eq!(h.count_of(Metric::UnknownOutcomeAnswered), 1);
    assert_eq!(h.count_of(Metric::Executed), 0);
    // Another payload under the key is still the key store's mismatch, not an abandonment.
    let (mut s, h, _) = w.send(&post("k", b"b"));
    answer(&mut s, &h, Some(200), r#"{"outcome":"mismatch"}"#);
    assert_eq!(h.last_sent().unwrap().status, 422);
}

#[test]
fn a_waiting_claim_that_finds_the_key_abandoned_answers_the_same() {
    let cfg = LOCK.replace(
        r#""unknown_hold_ms":5000"#,
        r#""unknown_hold_ms":5000,"in_flight":"wait","max_wait_ms":3000"#,
    );
    let w = World::new(&cfg);
    w.advance(60_000);
    let (mut s, h, _) = w.send(&post("k", b"a"));
    let (_, claim) = h.last_callout().unwrap();
    assert_eq!(crate::testing::callout_json(&claim)["wait_ms"], 3000);
    answer(&mut s, &h, Some(200), &abandoned(9_000));
    assert_eq!(h.last_sent().unwrap().status, 410);
}

#[test]
fn an_abandoned_key_under_a_previous_secret_answers_under_lock_and_is_passed_under_release() {
    let secrets = r#""hmac_secrets":["new-secret-0123456789abcdef0123456789","old-secret-0123456789abcdef0123456789"],"#;
    let w = World::new(&LOCK.replacen('{', &format!("{{{secrets}"), 1));
    let (mut s, h, _) = w.send(&post("k", b"a"));
    let (_, lookup) = h.last_callout().unwrap();
    assert_eq!(crate::testing::callout_json(&lookup)["abandoned"], "report");
    answer(&mut s, &h, Some(200), &abandoned(0));
    assert_eq!(h.last_sent().unwrap().status, 409);
    assert_eq!(
        h.callouts.borrow().len(),
        1,
        "no claim under the new secret"
    );

    let (mut s, h, _) = w.send(&Req {
        path: "/retry",
        ..post("k", b"a")
    });
    answer(&mut s, &h, Some(200), &abandoned(0));
    assert!(h.last_sent().is_none());
    let (_, claim) = h.last_callout().unwrap();
    let v = crate::testing::callout_json(&claim);
    assert_eq!(
        v["abandoned"], "take_over",
        "the claim under the new secret"
    );
}
