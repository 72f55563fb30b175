//! Answers that create or replay a record say until when the key is honoured.

use super::*;
use crate::expiry::http_date;

const NAME: &str = "idempotency-expires";
const RETENTION_MS: u64 = 60_000;

fn set_on_first_answer(h: &FakeHost) -> Option<Vec<u8>> {
    h.response_headers_set
        .borrow()
        .iter()
        .find(|(n, _)| n == NAME)
        .map(|(_, v)| v.clone())
}

#[test]
fn the_first_answer_and_every_replay_carry_the_records_expiry() {
    let w = World::new(r#"{"retention_s":60}"#);
    let created = w.clock.get();
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    w.respond(&mut s, &mut h, 201, b"{}");
    let expected = http_date(created + RETENTION_MS).into_bytes();
    assert_eq!(set_on_first_answer(&h), Some(expected.clone()));

    // Later replays name the same instant, not one counted from their own time.
    w.advance(5_000);
    let (_, h2, _) = w.send(&post("k", b"a"));
    let replay = h2.last_sent().unwrap();
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header(NAME), Some(expected.as_slice()));
    assert_eq!(
        replay.headers.iter().filter(|(n, _)| n == NAME).count(),
        1,
        "one field"
    );
}

#[test]
fn an_upstreams_own_field_of_that_name_is_replaced_on_replay() {
    let w = World::new("{}");
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    h.response_headers = vec![
        (":status".into(), b"201".to_vec()),
        ("Idempotency-Expires".into(), b"never".to_vec()),
    ];
    h.response_body = b"{}".to_vec();
    let _ = s.on_response_headers(&h, false);
    let _ = s.on_response_body(&h, 2, true);
    let (_, h2, _) = w.send(&post("k", b"a"));
    let replay = h2.last_sent().unwrap();
    let fields: Vec<&[u8]> = replay
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(NAME))
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(fields, [set_on_first_answer(&h).unwrap().as_slice()]);
}

#[test]
fn off_or_renamed_by_configuration() {
    for doc in [r#"{"expires_header":false}"#, r#"{"expires_header":null}"#] {
        let w = World::new(doc);
        let (mut s, mut h, _) = w.send(&post("k", b"a"));
        w.respond(&mut s, &mut h, 201, b"{}");
        assert!(h.response_headers_set.borrow().is_empty(), "{doc}");
        let (_, h2, _) = w.send(&post("k", b"a"));
        let replay = h2.last_sent().unwrap();
        assert_eq!(replay.status, 201);
        assert_eq!(replay.header(NAME), None, "{doc}");
    }
    let w = World::new(r#"{"expires_header":"Key-Valid-Until"}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    w.respond(&mut s, &mut h, 201, b"{}");
    let first = h.response_headers_set.borrow().clone();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "key-valid-until");
    let (_, h2, _) = w.send(&post("k", b"a"));
    let replay = h2.last_sent().unwrap();
    assert_eq!(
        replay.header("key-valid-until"),
        Some(first[0].1.as_slice())
    );
    assert_eq!(replay.header(NAME), None);
}

#[test]
fn problem_answers_and_released_keys_carry_none() {
    let w = World::new(r#"{"max_response_bytes":64}"#);
    // In flight: 409. Another payload: 422.
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    let (_, dup, _) = w.send(&post("k", b"a"));
    assert_eq!(dup.last_sent().unwrap().status, 409);
    assert_eq!(dup.last_sent().unwrap().header(NAME), None);
    w.respond(&mut s, &mut h, 201, b"{}");
    let (_, other, _) = w.send(&post("k", b"b"));
    assert_eq!(other.last_sent().unwrap().status, 422);
    assert_eq!(other.last_sent().unwrap().header(NAME), None);
    // A 5xx releases the key: no record, no expiry.
    let (mut s, mut h, _) = w.send(&post("released", b"a"));
    w.respond(&mut s, &mut h, 503, b"{}");
    assert!(h.response_headers_set.borrow().is_empty());
    // Too large to keep: retries get 410, without the header.
    let (mut s, h, _) = w.send(&post("large", b"a"));
    let mut h = h;
    h.response_headers = vec![(":status".into(), b"200".to_vec())];
    let _ = s.on_response_headers(&h, false);
    h.response_body = vec![b'x'; 65];
    let _ = s.on_response_body(&h, 65, true);
    let (_, retry, _) = w.send(&post("large", b"a"));
    assert_eq!(retry.last_sent().unwrap().status, 410);
    assert_eq!(retry.last_sent().unwrap().header(NAME), None);
}

#[test]
fn observe_mode_adds_nothing() {
    let w = World::new(r#"{"mode":"observe"}"#);
    let (mut s, mut h, _) = w.send(&post("k", b"a"));
    w.respond(&mut s, &mut h, 201, b"{}");
    assert!(h.response_headers_set.borrow().is_empty());
    let (_, h2, flow) = w.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue, "forwarded, not replayed");
    assert!(h2.sent.borrow().is_empty());
    assert_eq!(h2.observed_of(Metric::Replayed), 1);
}

#[test]
fn a_replay_from_the_key_store_carries_the_same_value() {
    const CFG: &str = r#"{"keystore":{"cluster":"ks","token":"s3cret"}}"#;
    let answer = |s: &mut Stream, h: &FakeHost, body: &str| {
        let (token, _) = h.last_callout().unwrap();
        s.on_callout_response(h, token, Some(200), body.as_bytes());
    };
    let w = World::new(CFG);
    let (mut s, mut h) = super::keystore::claimed(&w, "k", "T1");
    w.respond(&mut s, &mut h, 201, b"{}");
    let first = set_on_first_answer(&h).unwrap();
    let (_, complete) = h.last_callout().unwrap();
    let v = crate::testing::callout_json(&complete);
    let record = v["record"].as_str().unwrap().to_string();
    answer(&mut s, &h, r#"{"outcome":"stored"}"#);

    w.advance(3_000);
    let other = w.sharing(CFG);
    let other = World {
        shared: FakeShared::default(),
        ..other
    };
    other.worker.cache.ensure_slots(&other.shared).unwrap();
    let (mut s2, h2, _) = other.send(&post("k", b"a"));
    answer(
        &mut s2,
        &h2,
        &format!(r#"{{"outcome":"completed","record":"{record}"}}"#),
    );
    let replay = h2.last_sent().unwrap();
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header(NAME), Some(first.as_slice()));
}

#[test]
fn a_detached_answer_and_its_replay_carry_the_same_value() {
    let w =
        World::new(r#"{"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up"}]}"#);
    let (_s, _h) = w.hold_detached(&post("k", b"a"), None);
    w.dispatch();
    let now = w.clock.get();
    let actions = w.reply(
        40,
        Some(201),
        vec![(":status".to_string(), b"201".to_vec())],
        b"{}",
    );
    let first = actions
        .iter()
        .find_map(|a| match a {
            RootAction::Answer(answer) => Some(answer.clone()),
            _ => None,
        })
        .unwrap();
    let value = first
        .headers
        .iter()
        .find(|(n, _)| n == NAME)
        .map(|(_, v)| v.clone());
    assert_eq!(value, Some(http_date(now + 86_400_000).into_bytes()));
    w.advance(1_000);
    let (_, retry, _) = w.send(&post("k", b"a"));
    assert_eq!(retry.last_sent().unwrap().header(NAME), value.as_deref());
}
