//! Routed replays: the outer filter sends a gRPC retry (or a `replay: "routed"` rule's) to the
//! replay listener, whose filter answers it from L1 with the stored message, headers and trailers.

use super::*;
use crate::host::SharedData;
use crate::replay::{CONTENT_TYPE, CONTENT_TYPE_HEADER, FILTER_STATE, PATH, TICKET_HEADER};

const OUTER: &str = r#"{"routed_replay":true,"routes":[{"prefix":"/payments","required":true},{"prefix":"/routed","required":true,"replay":"routed"}],"anonymous_scope":"t"}"#;
pub(super) const LISTENER: &str = r#"{"replay_listener":true,"routes":[{"prefix":"/payments"}]}"#;

fn grpc_req<'a>(key: &'a str, body: &'a [u8]) -> Req<'a> {
    post(key, body)
}

fn trailers() -> Vec<(String, Vec<u8>)> {
    vec![
        ("grpc-status".into(), b"0".to_vec()),
        ("x-trailer".into(), b"t1".to_vec()),
        ("x-bin-bin".into(), b"AAEC".to_vec()),
    ]
}

const MESSAGE: &[u8] = b"\0\0\0\0\x02ok";

/// The first call of `key` runs and its answer (message and trailers) is kept in L1.
fn first_call(w: &World, key: &str) {
    let (mut s, mut h, flow) = send_as(w, &grpc_req(key, b"m"), "application/grpc");
    assert_eq!(flow, Flow::Continue, "the first call executes");
    h.response_headers = vec![
        (":status".into(), b"200".to_vec()),
        ("content-type".into(), b"application/grpc".to_vec()),
        ("x-served".into(), b"yes".to_vec()),
    ];
    h.response_body = MESSAGE.to_vec();
    h.response_trailers = trailers();
    s.on_response_headers(&h, false);
    s.on_response_body(&h, MESSAGE.len(), false);
    s.on_response_trailers(&h);
}

/// The replay listener's filter given the request the outer filter routed.
pub(super) fn at_listener(w: &World, outer: &FakeHost) -> (Stream, FakeHost, Flow) {
    let listener = w.sharing(LISTENER);
    let mut host = FakeHost::new(&w.shared, &w.clock, &w.ids);
    host.request_headers = outer.request_headers.clone();
    for (name, value) in outer.request_headers_set.borrow().iter() {
        host.request_headers.retain(|(n, _)| n != name);
        host.request_headers.push((name.clone(), value.clone()));
    }
    host.properties.insert(
        vec!["request".into(), "protocol".into()],
        b"HTTP/2".to_vec(),
    );
    let mut stream = Stream::new(listener.worker.clone());
    let flow = stream.on_request_headers(&host, false);
    (stream, host, flow)
}

#[test]
fn a_grpc_retry_is_routed_and_the_listener_answers_it_whole() {
    let w = World::new(OUTER);
    first_call(&w, "k1");
    let (mut s, mut h, flow) = send_as(&w, &grpc_req("k1", b"m"), "application/grpc");
    assert_eq!(flow, Flow::Continue, "routed: the request goes on");
    assert!(h.sent.borrow().is_empty(), "no local reply");
    assert_eq!(
        h.filter_state.borrow().get(FILTER_STATE).map(Vec::as_slice),
        Some(&b"routed"[..])
    );
    assert!(h.route_cache_cleared.get() >= 1);
    let set = h.request_headers_set.borrow().clone();
    assert!(set.contains(&("content-type".into(), CONTENT_TYPE.to_vec())));
    assert!(set.contains(&(CONTENT_TYPE_HEADER.into(), b"application/grpc".to_vec())));
    assert!(set.iter().any(|(n, _)| n == TICKET_HEADER));
    // A path no service serves: without the route to the listener, nothing runs again.
    assert!(set.contains(&(":path".into(), PATH.as_bytes().to_vec())));

    let (mut ls, lh, flow) = at_listener(&w, &h);
    assert_eq!(flow, Flow::Pause);
    let sent = lh.last_sent().unwrap();
    assert_eq!(sent.status, 200);
    assert_eq!(sent.body, MESSAGE);
    assert_eq!(sent.header("content-type"), Some(&b"application/grpc"[..]));
    assert_eq!(sent.header("x-served"), Some(&b"yes"[..]));
    assert_eq!(sent.header("idempotent-replayed"), Some(&b"true"[..]));
    ls.on_response_headers(&lh, false);
    assert_eq!(
        *lh.response_headers_removed.borrow(),
        vec!["content-length"]
    );
    ls.on_response_body(&lh, MESSAGE.len(), true);
    assert_eq!(*lh.response_trailers_added.borrow(), trailers());

    // The outer filter counts the replay when the listener's answer arrives.
    h.response_headers = sent.headers.clone();
    assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
    assert_eq!(h.count_of(Metric::Replayed), 1);
}

#[test]
fn envoys_own_answer_on_the_replay_route_is_not_a_replay() {
    let w = World::new(OUTER);
    first_call(&w, "k1");
    let (mut s, mut h, _) = send_as(&w, &grpc_req("k1", b"m"), "application/grpc");
    h.response_headers = vec![
        (":status".into(), b"200".to_vec()),
        ("grpc-status".into(), b"14".to_vec()),
    ];
    assert_eq!(s.on_response_headers(&h, true), Flow::Continue);
    assert_eq!(h.count_of(Metric::Replayed), 0);
}

#[test]
fn plain_http_is_routed_only_where_the_rule_says() {
    let w = World::new(OUTER);
    for path in ["/payments", "/routed"] {
        let req = Req {
            path,
            ..post("h1", b"{}")
        };
        let (mut s, mut h, _) = send_as(&w, &req, "application/json");
        w.respond(&mut s, &mut h, 201, b"{\"id\":1}");
        let (_, h, flow) = send_as(&w, &req, "application/json");
        if path == "/routed" {
            assert_eq!(flow, Flow::Continue);
            assert!(h.sent.borrow().is_empty());
            let (_, lh, _) = at_listener(&w, &h);
            let sent = lh.last_sent().unwrap();
            assert_eq!(
                (sent.status, sent.body.as_slice()),
                (201, &b"{\"id\":1}"[..])
            );
        } else {
            assert_eq!(h.last_sent().unwrap().status, 201, "a local reply");
            assert_eq!(h.route_cache_cleared.get(), 0);
        }
    }
}

#[test]
fn a_trailers_only_record_is_one_header_block_with_its_content_type() {
    let w = World::new(OUTER);
    let (mut s, mut h, _) = send_as(&w, &grpc_req("e1", b"m"), "application/grpc");
    h.response_headers = vec![
        (":status".into(), b"200".to_vec()),
        ("content-type".into(), b"application/grpc".to_vec()),
        ("grpc-status".into(), b"9".to_vec()),
        ("grpc-message".into(), b"nope".to_vec()),
    ];
    s.on_response_headers(&h, true);
    let (_, h, _) = send_as(&w, &grpc_req("e1", b"m"), "application/grpc");
    let (mut ls, lh, _) = at_listener(&w, &h);
    let sent = lh.last_sent().unwrap();
    assert!(sent.body.is_empty());
    assert_eq!(sent.header("grpc-status"), Some(&b"9"[..]));
    ls.on_response_headers(&lh, true);
    assert!(lh
        .response_headers_set
        .borrow()
        .contains(&("content-type".into(), b"application/grpc".to_vec())));
    assert_eq!(
        *lh.response_headers_removed.borrow(),
        vec!["content-length"]
    );
}

#[test]
fn the_listener_refuses_requests_without_a_valid_ticket_and_evicted_records_are_unavailable() {
    let w = World::new(OUTER);
    first_call(&w, "k1");
    let (_, h, _) = send_as(&w, &grpc_req("k1", b"m"), "application/grpc");

    // No ticket, or a forged one: refused (PERMISSION_DENIED for a gRPC caller).
    let mut forged = FakeHost::new(&w.shared, &w.clock, &w.ids);
    forged.request_headers = vec![("content-type".into(), b"application/grpc".to_vec())];
    let listener = w.sharing(LISTENER);
    Stream::new(listener.worker.clone()).on_request_headers(&forged, false);
    assert_eq!(
        forged.last_sent().unwrap().header("grpc-status"),
        Some(&b"7"[..])
    );
    let ticket = h
        .request_headers_set
        .borrow()
        .iter()
        .find(|(n, _)| n == TICKET_HEADER)
        .map(|(_, v)| v.clone())
        .unwrap();
    let mut altered = ticket.clone();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
    forged.request_headers = vec![(TICKET_HEADER.into(), altered)];
    Stream::new(listener.worker.clone()).on_request_headers(&forged, false);
    let refused = forged.last_sent().unwrap();
    assert_eq!(refused.status, 403);

    // An expired ticket is refused too.
    w.advance(crate::replay::TICKET_TTL_MS + 1);
    let (_, lh, _) = at_listener(&w, &h);
    assert_eq!(
        lh.last_sent().unwrap().header("grpc-status"),
        Some(&b"7"[..])
    );
    w.advance(0);

    // A valid ticket for a record L1 no longer holds: UNAVAILABLE with pushback, never another
    // answer.
    let w = World::new(OUTER);
    first_call(&w, "k2");
    let (_, h, _) = send_as(&w, &grpc_req("k2", b"m"), "application/grpc");
    for slot in 0..w.worker.cfg.l1_slots {
        let _ = w
            .shared
            .shared_set(&format!("idempotency.v1.slot.{slot}"), &[], None);
    }
    let (_, lh, _) = at_listener(&w, &h);
    let sent = lh.last_sent().unwrap();
    assert_eq!(sent.header("grpc-status"), Some(&b"14"[..]));
    assert!(sent.header("grpc-retry-pushback-ms").is_some());
    assert!(sent.header("idempotent-replayed").is_none());
}

#[test]
fn observe_mode_forwards_the_retry_and_counts_it() {
    let w = World::new(&OUTER.replacen('{', r#"{"mode":"observe","#, 1));
    first_call(&w, "o1");
    let (_, h, flow) = send_as(&w, &grpc_req("o1", b"m"), "application/grpc");
    assert_eq!(flow, Flow::Continue);
    assert!(
        h.request_headers_set.borrow().is_empty(),
        "nothing rerouted"
    );
    assert_eq!(h.route_cache_cleared.get(), 0);
    assert_eq!(h.observed_of(Metric::Replayed), 1);
}

#[test]
fn a_request_whose_headers_went_ahead_is_not_rerouted() {
    let w = World::new(OUTER);
    let req = Req {
        path: "/routed",
        ..post("c1", b"{}")
    };
    let (mut s, mut h, _) = send_as(&w, &req, "application/json");
    w.respond(&mut s, &mut h, 201, b"{\"id\":1}");
    // `Expect: 100-continue` on an inline rule: the headers go on before the body is read.
    let mut host = w.host(&req);
    host.request_headers
        .push(("expect".into(), b"100-continue".to_vec()));
    let mut stream = Stream::new(w.worker.clone());
    assert_eq!(stream.on_request_headers(&host, false), Flow::Continue);
    stream.on_request_body(&host, 2, true);
    assert_eq!(host.route_cache_cleared.get(), 0);
    assert_eq!(host.last_sent().unwrap().status, 201, "the local reply");
}

#[test]
fn a_record_under_a_previous_secret_is_routed_and_found_by_the_listener() {
    const OLD: &str = "old-secret-0123456789abcdef0123456789";
    const NEW: &str = "new-secret-0123456789abcdef0123456789";
    let routes = r#""routes":[{"prefix":"/payments","required":true}],"anonymous_scope":"t""#;
    let old = World::new(&format!(
        r#"{{"hmac_secret":"{OLD}","routed_replay":true,{routes}}}"#
    ));
    first_call(&old, "r1");
    let rotated = old.sharing(&format!(
        r#"{{"hmac_secrets":["{NEW}","{OLD}"],"routed_replay":true,{routes}}}"#
    ));
    let (_, h, flow) = send_as(&rotated, &grpc_req("r1", b"m"), "application/grpc");
    assert_eq!(flow, Flow::Continue, "routed");
    // The listener checks the ticket under the current secret and finds the record under the
    // previous secret's record key, which the ticket names.
    let listener = old.sharing(&format!(
        r#"{{"hmac_secrets":["{NEW}","{OLD}"],"replay_listener":true}}"#
    ));
    let mut host = FakeHost::new(&old.shared, &old.clock, &old.ids);
    host.request_headers = h.request_headers_set.borrow().clone();
    Stream::new(listener.worker.clone()).on_request_headers(&host, false);
    let sent = host.last_sent().unwrap();
    assert_eq!((sent.status, sent.body.as_slice()), (200, MESSAGE));
}

#[test]
fn the_listener_frames_a_replay_as_the_first_answer_was_framed() {
    let w = World::new(OUTER);
    for (key, length) in [("chunked", None), ("sized", Some(&b"8"[..]))] {
        let req = Req {
            path: "/routed",
            ..post(key, b"{}")
        };
        let (mut s, mut h, _) = send_as(&w, &req, "application/json");
        h.response_headers = vec![
            (":status".into(), b"201".to_vec()),
            ("content-type".into(), b"application/json".to_vec()),
        ];
        if let Some(length) = length {
            h.response_headers
                .push(("content-length".into(), length.to_vec()));
        }
        h.response_body = b"{\"id\":1}".to_vec();
        s.on_response_headers(&h, false);
        s.on_response_body(&h, 8, true);

        let (_, h, _) = send_as(&w, &req, "application/json");
        let (mut ls, lh, _) = at_listener(&w, &h);
        assert_eq!(lh.last_sent().unwrap().body, b"{\"id\":1}");
        ls.on_response_headers(&lh, false);
        let removed = lh.response_headers_removed.borrow().clone();
        // Envoy gives every local reply a length: an answer that had none loses it again.
        let expected: Vec<String> = match length {
            None => vec!["content-length".into()],
            Some(_) => vec![],
        };
        assert_eq!(removed, expected, "{key}");
    }
}

#[test]
fn a_bodiless_routed_replay_gets_its_content_type_back_in_place() {
    let w = World::new(OUTER);
    let req = Req {
        path: "/routed",
        ..post("e201", b"{}")
    };
    let (mut s, mut h, _) = send_as(&w, &req, "application/json");
    h.response_headers = vec![
        (":status".into(), b"201".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
        ("content-length".into(), b"0".to_vec()),
        ("x-envoy-upstream-service-time".into(), b"3".to_vec()),
    ];
    s.on_response_headers(&h, true);
    let (_, h, flow) = send_as(&w, &req, "application/json");
    assert_eq!(flow, Flow::Continue, "routed");
    let (mut ls, mut lh, _) = at_listener(&w, &h);
    let sent = lh.last_sent().unwrap();
    assert!(sent.body.is_empty());
    let after: Vec<String> = sent
        .headers
        .iter()
        .skip_while(|(n, _)| n != "content-type")
        .skip(1)
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        after.first().map(String::as_str),
        Some("content-length"),
        "the record keeps the length in place: {:?}",
        sent.headers
    );
    // What the filter sees of it: no `content-type` (Envoy drops it from a reply without a body)
    // and no `content-length` (the HTTP/1 codec appends `content-length: 0` after every field).
    lh.response_headers = sent
        .headers
        .iter()
        .filter(|(n, _)| n != "content-type" && n != "content-length")
        .cloned()
        .collect();
    ls.on_response_headers(&lh, true);
    // `content-type` is set again, then every field the reply had after it is moved after it
    // (removed, then set: appended), the length included, so the fields come in the stored order.
    let set = lh.response_headers_set.borrow().clone();
    let set_names: Vec<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected = vec!["content-type"];
    expected.extend(after.iter().map(String::as_str));
    assert_eq!(set_names, expected);
    assert_eq!(
        set.first().map(|(_, v)| v.as_slice()),
        Some(&b"application/json"[..])
    );
    assert_eq!(*lh.response_headers_removed.borrow(), after);
    assert!(set.contains(&("content-length".into(), b"0".to_vec())));
}
