//! The worker's memory budget: what a stream takes from it, when it gives it back, and what a
//! request gets when there is no room (refused before anything runs, nothing claimed).

use super::*;

/// Detached, one rule, with a 1 MiB budget (the smallest allowed) and 600 KB bodies.
const DETACHED: &str = r#"{"memory_budget_bytes":1048576,"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up","upstream_timeout_ms":900,"in_flight":"wait"}]}"#;
const INLINE: &str =
    r#"{"memory_budget_bytes":1048576,"routes":[{"prefix":"/","in_flight":"wait"}]}"#;

fn big() -> Vec<u8> {
    vec![b'x'; 600_000]
}

fn assert_memory_budget(h: &FakeHost) {
    let sent = h.last_sent().expect("a local reply");
    assert_eq!(sent.status, 503);
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert!(
        body["type"].as_str().unwrap().ends_with("memory-budget"),
        "{body}"
    );
    assert!(sent.headers.iter().any(|(n, _)| n == "retry-after"));
    assert_eq!(h.count_of(Metric::OverBudget), 1);
}

#[test]
fn a_detached_request_holds_its_bytes_until_dispatched() {
    let w = World::new(DETACHED);
    w.worker.set_doorbell(1);
    let (_s, _h, flow) = w.send(&post("a", &big()));
    assert_eq!(flow, Flow::Pause);
    let held = w.worker.budget.used();
    assert!(held >= 600_000, "body and headers held: {held}");

    // No room for a second one: refused before the key is claimed.
    let (_s2, h2, _) = w.send(&post("b", &big()));
    assert_memory_budget(&h2);
    assert_eq!(h2.count_of(Metric::DetachedExecuted), 0);
    assert_eq!(
        w.worker.budget.used(),
        held,
        "a refused request holds nothing"
    );

    // Dispatched: Envoy has the body; the budget has room again, and the job kept no copy.
    let mut out = w.worker.start_detached();
    let RootAction::Send(callout, purpose) = out.remove(0) else {
        panic!()
    };
    assert_eq!(callout.body.len(), 600_000);
    if let Purpose::Detached(job) = &purpose {
        assert!(
            job.upstream.body.is_empty(),
            "the job keeps no copy of the body"
        );
    }
    w.worker.sent(40, purpose, w.clock.get());
    drop(callout);
    assert_eq!(w.worker.budget.used(), 0);
    let (_s3, h3, flow) = w.send(&post("c", &big()));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(h3.count_of(Metric::OverBudget), 0);
}

#[test]
fn a_request_never_sent_gives_its_bytes_back() {
    let w = World::new(DETACHED);
    w.worker.set_doorbell(1);
    let _ = w.send(&post("a", &big()));
    let mut out = w.worker.start_detached();
    let RootAction::Send(_, purpose) = out.remove(0) else {
        panic!()
    };
    let _ = w
        .worker
        .not_sent(purpose, "no cluster", &w.shared, w.clock.get());
    assert_eq!(w.worker.budget.used(), 0);
}

#[test]
fn a_client_that_leaves_before_dispatch_still_holds_until_the_root_context_runs() {
    let w = World::new(DETACHED);
    w.worker.set_doorbell(1);
    let (mut s, h, _) = w.send(&post("a", &big()));
    s.on_done(&h);
    drop(s);
    assert!(
        w.worker.budget.used() >= 600_000,
        "the queued job still holds the body"
    );
    let out = w.worker.start_detached();
    for action in out {
        if let RootAction::Send(_, purpose) = action {
            w.worker.sent(41, purpose, w.clock.get());
        }
    }
    assert_eq!(w.worker.budget.used(), 0);
}

#[test]
fn an_inline_body_is_held_only_while_it_is_fingerprinted() {
    let w = World::new(INLINE);
    let (_s, h, flow) = w.send(&post("a", &big()));
    assert_eq!(flow, Flow::Continue, "forwarded");
    assert_eq!(h.count_of(Metric::OverBudget), 0);
    assert_eq!(w.worker.budget.used(), 0);
}

#[test]
fn waiting_duplicates_take_their_share_and_give_it_back() {
    let w = World::new(INLINE);
    let (_first, _h, _) = w.send(&post("k", b"{}"));
    let (mut dup, hd, flow) = w.send(&post("k", b"{}"));
    assert_eq!(flow, Flow::Pause, "the duplicate waits");
    assert_eq!(w.worker.budget.used(), crate::budget::WAITER_BYTES);
    dup.on_done(&hd);
    assert_eq!(
        w.worker.budget.used(),
        0,
        "a waiter that left gives its share back"
    );
}

#[test]
fn a_full_budget_refuses_waiting_duplicates() {
    let w = World::new(INLINE);
    let _first = w.send(&post("k", b"{}"));
    // Someone else holds everything.
    let _all = w.worker.budget.take(w.worker.budget.limit()).unwrap();
    let (_dup, hd, _) = w.send(&post("k", b"{}"));
    assert_memory_budget(&hd);
    assert_eq!(w.worker.waiters.borrow().len(), 0);
}
