//! One Envoy, no key store: what is refused or scoped before a key is claimed (the caller, the
//! key, the body and its end).

use super::*;

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
fn a_body_that_cannot_be_read_is_refused_not_fingerprinted_as_empty() {
    let w = World::new("{}");
    let host = w.host(&Req {
        path: "/p",
        ..post("k", b"")
    });
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
fn trailers_end_the_request_body() {
    let w = World::new("{}");
    let host = w.host(&Req {
        path: "/p",
        ..post("t", b"chunk")
    });
    let mut s = Stream::new(w.worker.clone());
    assert_eq!(s.on_request_headers(&host, false), Flow::Pause);
    assert_eq!(s.on_request_body(&host, 5, false), Flow::Pause);
    assert_eq!(s.on_request_trailers(&host), Flow::Continue);
    assert_eq!(host.count_of(Metric::Executed), 1);
}
