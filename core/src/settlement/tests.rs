//! The rule as a table: one row per way an attempt can end, under each policy.

use super::*;
use crate::config::Config;

fn rule(json: &str) -> RouteRule {
    let cfg = Config::parse(crate::testing::with_test_secret(json).as_bytes()).unwrap();
    cfg.route_for("POST", "/payments").unwrap().clone()
}

#[test]
fn each_ending_settles_as_the_behaviour_table_says() {
    const NOW: u64 = 10_000;
    let lock = r#"{"unknown_hold_ms":1000,"routes":[{"prefix":"/"}]}"#;
    let release = r#"{"unknown_outcome":"release","routes":[{"prefix":"/"}]}"#;
    let store_5xx = r#"{"store_5xx":true,"routes":[{"prefix":"/"}]}"#;
    let keep = |r: &RouteRule| Verdict::Keep {
        created_ms: NOW,
        expires_ms: NOW + r.retention_ms,
    };
    let locked = |r: &RouteRule| {
        Verdict::Lock(record(
            r,
            [1; 32],
            Outcome::Unknown {
                hold_until_ms: NOW + 1_000,
            },
            NOW,
        ))
    };
    type Row<'a> = (
        &'a str,
        Ending,
        &'a dyn Fn(&RouteRule) -> Verdict,
        &'a [Metric],
    );
    let rows: &[Row] = &[
        (lock, Ending::Answered(201), &keep, &[]),
        (lock, Ending::Answered(404), &keep, &[]),
        (
            lock,
            Ending::Answered(409),
            &|_| Verdict::Release,
            &[Metric::Released],
        ),
        (
            lock,
            Ending::Answered(429),
            &|_| Verdict::Release,
            &[Metric::Released],
        ),
        (
            lock,
            Ending::Answered(500),
            &|_| Verdict::Release,
            &[Metric::Released],
        ),
        (store_5xx, Ending::Answered(500), &keep, &[]),
        (
            lock,
            Ending::NotExecuted,
            &|_| Verdict::Release,
            &[Metric::Released],
        ),
        (lock, Ending::Unknown, &locked, &[Metric::UnknownOutcome]),
        (
            release,
            Ending::Unknown,
            &|_| Verdict::Release,
            &[Metric::UnknownOutcome, Metric::Released],
        ),
    ];
    for (json, ending, verdict, counts) in rows {
        let r = rule(json);
        let got = settle(&r, [1; 32], *ending, NOW);
        assert_eq!(got.verdict, verdict(&r), "{json} {ending:?}");
        assert_eq!(got.counts, *counts, "{json} {ending:?}");
    }
}

#[test]
fn a_kept_answer_too_large_is_stored_as_not_replayable() {
    let headers = vec![("x-a".to_string(), b"12".to_vec())];
    assert!(fits(&headers, 3, 8), "5 bytes of headers and 3 of body");
    assert!(!fits(&headers, 4, 8));
    assert_eq!(
        captured(201, headers.clone(), None),
        (Outcome::NotReplayable, Some(Metric::NotReplayable))
    );
    let (outcome, metric) = captured(201, headers, Some((b"{}".to_vec(), Vec::new())));
    assert!(matches!(outcome, Outcome::Replayable(ref r) if r.status == 201 && r.body == b"{}"));
    assert_eq!(metric, None);
}

#[test]
fn trailers_are_kept_and_a_grpc_status_in_the_headers_alone_is_trailers_only() {
    let grpc = |extra: &[(&str, &[u8])]| {
        let mut headers = vec![("content-type".to_string(), b"application/grpc".to_vec())];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_vec())));
        headers
    };
    let trailers = grpc(&[("grpc-status", b"0"), ("x-bin-bin", b"AAEC")]);
    let replayable = |kept| match captured(200, grpc(&[]), Some(kept)).0 {
        Outcome::Replayable(r) => r,
        other => panic!("{other:?}"),
    };
    let message = replayable((b"\0\0\0\0\x01a".to_vec(), trailers.clone()));
    assert_eq!((message.trailers, message.trailers_only), (trailers, false));
    // An error sent trailers-only: the status is in the one header block.
    let Outcome::Replayable(error) = captured(
        200,
        grpc(&[("grpc-status", b"9"), ("grpc-message", b"nope")]),
        Some((Vec::new(), Vec::new())),
    )
    .0
    else {
        panic!("not replayable")
    };
    assert!(error.trailers_only);
    // An empty plain answer is not.
    assert!(!replayable((Vec::new(), Vec::new())).trailers_only);
    // Trailers count toward the size kept.
    assert_eq!(header_bytes(&grpc(&[("ab", b"cd")])), 32);
}
