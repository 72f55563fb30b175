//! One Envoy, no key store: who holds a key (409 while in flight, 422 for another payload), and
//! how long (renewals, retention, lease expiry).

use super::*;

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
