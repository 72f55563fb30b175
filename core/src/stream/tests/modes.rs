//! The filter's modes: request headers streamed ahead of the decision, and observe mode.

use super::*;

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

#[test]
fn hold_mode_lets_the_headers_of_an_expect_100_continue_request_go() {
    for (config, expect, want) in [
        ("{}", None, Flow::Pause),
        ("{}", Some(&b"100-continue"[..]), Flow::Continue),
        ("{}", Some(&b"100-Continue "[..]), Flow::Continue),
        // A detached rule runs it inline (below).
        (
            r#"{"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up"}]}"#,
            Some(&b"100-continue"[..]),
            Flow::Continue,
        ),
        (
            r#"{"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up"}]}"#,
            None,
            Flow::Pause,
        ),
    ] {
        let w = World::new(config);
        let mut host = w.host(&post("k", b"a"));
        if let Some(value) = expect {
            host.request_headers.push(("expect".into(), value.to_vec()));
        }
        let mut s = Stream::new(w.worker.clone());
        assert_eq!(
            s.on_request_headers(&host, false),
            want,
            "{config} expect {expect:?}"
        );
        assert_eq!(
            s.on_request_body(&host, 1, false),
            Flow::Pause,
            "the body still waits for the decision"
        );
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
    let enforce = configure(enforce_cfg.as_bytes(), &w.shared).unwrap();
    assert_eq!(
        (enforce.cache.slots, enforce.cache.slot_budget),
        (w.worker.cache.slots, w.worker.cache.slot_budget),
        "the same near cache"
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

/// A proxied `Expect: 100-continue` on a detached rule: the client waits for the upstream's `100`
/// before it sends the body, and only the router can bring that back, so the request runs inline
/// (in either headers mode): forwarded by the router, captured, and replayed to a retry.
#[test]
fn a_detached_rule_runs_an_expect_100_continue_request_inline() {
    for mode in ["hold", "stream"] {
        let w = World::new(&format!(
            r#"{{"headers_mode":"{mode}","routes":[{{"prefix":"/","execution":"detached","upstream_cluster":"up"}}]}}"#
        ));
        w.worker.set_doorbell(1);
        let mut h = w.host(&post("k", b"a"));
        h.request_headers
            .push(("expect".into(), b"100-continue".to_vec()));
        let mut s = Stream::new(w.worker.clone());
        assert_eq!(s.on_request_headers(&h, false), Flow::Continue, "{mode}");
        assert_eq!(
            s.on_request_body(&h, 1, true),
            Flow::Continue,
            "{mode}: executed through the router"
        );
        assert!(w.worker.start_detached().is_empty(), "{mode}: no callout");
        assert_eq!(h.count_of(Metric::DetachedExecuted), 0);
        w.respond(&mut s, &mut h, 201, b"paid");
        let (_, retry, flow) = w.send(&post("k", b"a"));
        assert_eq!(flow, Flow::Pause);
        assert_eq!(retry.last_sent().unwrap().body, b"paid", "{mode}: replayed");
    }
}
