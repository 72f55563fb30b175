//! One Envoy, no key store: what an answer does to its key (stored and replayed byte-exact,
//! released, locked as an unknown outcome) and what a replay never carries.

use super::*;

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
fn a_replay_without_a_body_gets_back_the_content_type_envoy_drops() {
    let w = World::new("{}");
    for (key, body) in [("empty", &b""[..]), ("full", &b"{}"[..])] {
        let (mut s, mut h, _) = w.send(&post(key, b"a"));
        w.respond(&mut s, &mut h, 201, body);
        let (mut s, mut h, flow) = w.send(&post(key, b"a"));
        assert_eq!(flow, Flow::Pause, "{key}: replayed");
        assert_eq!(
            h.last_sent().unwrap().header("content-type"),
            Some(&b"application/json"[..])
        );
        // The local reply passes back through the response callbacks, as Envoy sent it: without
        // `content-type` when it has no body.
        h.response_headers = vec![(":status".into(), b"201".to_vec())];
        s.on_response_headers(&h, body.is_empty());
        let set = h.response_headers_set.borrow().clone();
        if body.is_empty() {
            assert_eq!(
                set,
                [("content-type".to_string(), b"application/json".to_vec())]
            );
        } else {
            assert!(set.is_empty(), "a reply with a body keeps its own: {set:?}");
        }
    }
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
    h.response_body = b"abc".to_vec();
    assert_eq!(
        s.on_response_body(&h, 3, false),
        Flow::Continue,
        "the body streams on while it is copied"
    );
    s.on_done(&h);
    assert_eq!(h.count_of(Metric::UnknownOutcome), 1);
    let (_, h2, _) = w.send(&post("cut", b"a"));
    assert_eq!(h2.last_sent().unwrap().status, 409);
    let _ = &mut h;
}

#[test]
fn oversized_response_is_completed_but_not_replayable() {
    let w = World::new(r#"{"max_response_bytes":64}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    h.response_headers = vec![(":status".into(), b"200".to_vec())];
    assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
    h.response_body = vec![b'x'; 65];
    assert_eq!(
        s.on_response_body(&h, 65, false),
        Flow::Continue,
        "too large: streamed on"
    );
    assert_eq!(
        w.worker.budget.used(),
        0,
        "the copy stopped, its bytes given back"
    );
    h.response_body = b"tail".to_vec();
    assert_eq!(s.on_response_body(&h, 4, false), Flow::Continue);
    assert_eq!(h.count_of(Metric::NotReplayable), 0, "settled at the end");
    h.response_body.clear();
    assert_eq!(s.on_response_body(&h, 0, true), Flow::Continue);
    assert_eq!(h.count_of(Metric::NotReplayable), 1);
    let (_, h2, _) = w.send(&post("k", b"a"));
    let sent = h2.last_sent().unwrap();
    assert_eq!(sent.status, 410);
    problem(&sent);
    assert_eq!(h2.count_of(Metric::Executed), 0);
    let _ = &mut h;
}

/// A replay is a local reply, to which the router adds no `x-envoy-upstream-service-time`: the
/// stored one comes back, in its place, with `content-length` before it as in the first answer.
#[test]
fn a_replay_carries_the_stored_service_time_and_length_in_place() {
    let w = World::new("{}");
    let (mut s, mut h, _) = w.send(&post("svc", b"a"));
    h.response_headers = vec![
        (":status".into(), b"201".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
        ("content-length".into(), b"2".to_vec()),
        ("x-envoy-upstream-service-time".into(), b"7".to_vec()),
        ("date".into(), b"Mon".to_vec()),
    ];
    h.response_body = b"{}".to_vec();
    s.on_response_headers(&h, false);
    s.on_response_body(&h, 2, true);
    let (_, h, _) = w.send(&post("svc", b"a"));
    let sent = h.last_sent().unwrap();
    let names: Vec<(&str, &[u8])> = sent
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        names[..3],
        [
            ("content-type", &b"application/json"[..]),
            ("content-length", b"2"),
            ("x-envoy-upstream-service-time", b"7")
        ]
    );
}
