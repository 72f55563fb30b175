//! One table, both drivers: for each way an attempt can end, an inline stream and a detached
//! execution count what the settlement rule says and leave the key as it says (kept and replayed,
//! locked, or free again).

use super::*;
use crate::outcome::flags;
use crate::settlement::{self, Ending, Verdict};

/// What a retry of the key meets afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Replays(u16),
    Locked,
    Executes,
}

struct Row {
    /// Settings shared by the inline and the detached configuration.
    settings: &'static str,
    ending: Ending,
    retry: Retry,
}

fn retry_meets(w: &World, key: &str) -> Retry {
    let (_, h, _) = w.send(&post(key, b"{\"amount\":1}"));
    match h.last_sent() {
        None => Retry::Executes,
        Some(sent) if sent.status == 409 => Retry::Locked,
        Some(sent) => Retry::Replays(sent.status),
    }
}

/// Ends an inline attempt as `ending` says.
fn inline(w: &World, key: &str, ending: Ending) -> FakeHost {
    let (mut s, mut h, _) = w.send(&post(key, b"{\"amount\":1}"));
    match ending {
        Ending::Answered(status) => {
            w.respond(&mut s, &mut h, status, b"{}");
        }
        Ending::NotExecuted => {
            respond_as_envoy(w, &mut s, &mut h, 503, flags::UPSTREAM_CONNECTION_FAILURE);
        }
        Ending::Unknown => {
            respond_as_envoy(w, &mut s, &mut h, 504, flags::UPSTREAM_REQUEST_TIMEOUT);
        }
    }
    s.on_done(&h);
    h
}

/// Ends a detached attempt as `ending` says; returns the counters it added.
fn detached(w: &World, key: &str, ending: Ending) -> Vec<Metric> {
    let (mut s, h) = w.hold_detached(&post(key, b"{\"amount\":1}"), None);
    w.dispatch();
    let upstream = vec![("x-envoy-upstream-service-time".to_string(), b"1".to_vec())];
    let (status, headers, body) = match ending {
        Ending::Answered(status) => (Some(status), upstream, b"{}".to_vec()),
        Ending::NotExecuted => (Some(503), vec![], b"no healthy upstream".to_vec()),
        Ending::Unknown => (Some(504), vec![], ENVOY_TIMEOUT.to_vec()),
    };
    let actions = w.reply(40, status, headers, &body);
    s.on_done(&h);
    actions
        .iter()
        .filter_map(|a| match a {
            RootAction::Count(m) => Some(*m),
            _ => None,
        })
        .collect()
}

#[test]
fn inline_and_detached_settle_every_ending_as_the_rule_says() {
    let rows = [
        Row {
            settings: "",
            ending: Ending::Answered(201),
            retry: Retry::Replays(201),
        },
        Row {
            settings: "",
            ending: Ending::Answered(500),
            retry: Retry::Executes,
        },
        Row {
            settings: r#""store_5xx":true,"#,
            ending: Ending::Answered(500),
            retry: Retry::Replays(500),
        },
        Row {
            settings: "",
            ending: Ending::NotExecuted,
            retry: Retry::Executes,
        },
        Row {
            settings: "",
            ending: Ending::Unknown,
            retry: Retry::Locked,
        },
        Row {
            settings: r#""unknown_outcome":"release","#,
            ending: Ending::Unknown,
            retry: Retry::Executes,
        },
    ];
    for row in rows {
        let inline_cfg = format!(r#"{{{}"routes":[{{"prefix":"/"}}]}}"#, row.settings);
        let detached_cfg = format!(
            r#"{{{}"routes":[{{"prefix":"/","execution":"detached","upstream_cluster":"up"}}]}}"#,
            row.settings
        );
        let w = World::new(&inline_cfg);
        let rule = w.worker.cfg.route_for("POST", "/payments").unwrap().clone();
        let expected = settlement::settle(&rule, [0; 32], row.ending, w.clock.get());
        let expected_retry = match expected.verdict {
            Verdict::Keep { .. } => "kept",
            Verdict::Lock(_) => "locked",
            Verdict::Release => "released",
        };
        let what = format!("{} {:?} ({expected_retry})", row.settings, row.ending);

        let h = inline(&w, "k", row.ending);
        for metric in [
            Metric::Released,
            Metric::UnknownOutcome,
            Metric::NotReplayable,
        ] {
            let times = expected.counts.iter().filter(|m| **m == metric).count() as u64;
            assert_eq!(h.count_of(metric), times, "inline {what}: {metric:?}");
        }
        assert_eq!(retry_meets(&w, "k"), row.retry, "inline {what}");

        let w = World::new(&detached_cfg);
        let counts = detached(&w, "k", row.ending);
        assert_eq!(counts, expected.counts, "detached {what}");
        let retry = retry_meets(&w, "k");
        // A detached retry that executes is paused for the root context, so nothing is sent.
        assert_eq!(retry, row.retry, "detached {what}");
    }
}

/// An inline route whose upstream is another proxy (a sidecar): its `503`/`504` carrying Envoy's
/// reset or timeout text reaches this filter with no response flags, and is read as the detached
/// path reads a callout's answer, by the same function.
#[test]
fn inline_reads_a_sidecars_reset_text_as_the_detached_path_does() {
    let reset = |reason: &str| {
        format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}")
    };
    let rows: [(&str, u16, String, Retry); 8] = [
        ("", 503, reset("connection termination"), Retry::Locked),
        ("", 503, reset("remote reset"), Retry::Locked),
        ("", 504, "upstream request timeout".into(), Retry::Locked),
        (
            r#""unknown_outcome":"release","#,
            503,
            reset("connection termination"),
            Retry::Executes,
        ),
        ("", 503, reset("remote connection failure"), Retry::Executes),
        ("", 503, "busy".into(), Retry::Executes),
        // Longer than any text of Envoy's: only its start is copied, and it is the service's.
        ("", 503, "busy ".repeat(2000), Retry::Executes),
        // A rule that keeps 5xx keeps the answer whoever wrote it: it never executes again either.
        (
            r#""store_5xx":true,"#,
            503,
            reset("connection termination"),
            Retry::Replays(503),
        ),
    ];
    for (settings, status, text, expected) in rows {
        let w = World::new(&format!(r#"{{{settings}"routes":[{{"prefix":"/"}}]}}"#));
        let (mut s, mut h, _) = w.send(&post("k", b"{\"amount\":1}"));
        // Headers first, then the body in two parts: the verdict waits for the whole text.
        h.response_headers = vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-length".into(), text.len().to_string().into_bytes()),
            ("content-type".into(), b"text/plain".to_vec()),
            ("x-envoy-upstream-service-time".into(), b"2".to_vec()),
        ];
        assert_eq!(s.on_response_headers(&h, false), Flow::Continue);
        let (head, tail) = text.as_bytes().split_at(text.len() / 2);
        h.response_body = head.to_vec();
        assert_eq!(s.on_response_body(&h, head.len(), false), Flow::Continue);
        assert_eq!(
            h.count_of(Metric::Released),
            0,
            "{settings} {text}: not yet"
        );
        h.response_body = tail.to_vec();
        s.on_response_body(&h, tail.len(), true);
        s.on_done(&h);
        let what = format!("{settings} {status} {text}");
        let (unknown, released) = match expected {
            Retry::Locked => (1, 0),
            Retry::Executes if settings.contains("release") => (1, 1),
            Retry::Executes => (0, 1),
            Retry::Replays(_) => (0, 0),
        };
        assert_eq!(h.count_of(Metric::UnknownOutcome), unknown, "{what}");
        assert_eq!(h.count_of(Metric::Released), released, "{what}");
        assert_eq!(retry_meets(&w, "k"), expected, "{what}");
    }
}
