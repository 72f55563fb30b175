//! Was a detached request executed? The plugin's own callout has no response flags (the root
//! context can read no stream property), so the answer comes from what Envoy hands back: the
//! dispatch's error, the reply's status, its headers and Envoy's own reply text. An inline
//! stream reads the same texts with the same function ([`ending`]) when its router saw a plain
//! `503`/`504` (no response flags) that would free the key: a sidecar wrote it. Checked on
//! Envoy 1.40 cause by cause (the table in docs/hardening.md, "Detached: never sent").
//!
//! - The dispatch failed: Envoy finished the request inside the call, which only a local reply
//!   does (no healthy host, circuit breaker open, pending overflow, no cluster): never sent.
//! - Envoy's own texts are read whether this Envoy wrote them or a proxy on the way did (a
//!   sidecar, or a listener of this gateway the cluster points at: then the answer carries
//!   `x-envoy-upstream-service-time`, as any answer through a router does). They say what the last
//!   proxy before the service saw. A 503 is never sent when it carries `x-envoy-overloaded`, says
//!   `no healthy upstream`, or is "upstream connect error ... reset reason: R" with R one of
//!   [`NEVER_SENT_REASONS`] (the connection never opened, or the peer refused the stream). Any
//!   other reset, a cut answer (no headers) and a timeout may come after the request was written:
//!   the outcome is unknown. Read as the service's own 5xx, a proxied reset would release the key
//!   and let a retry execute a second time.
//! - Anything else is the service's answer.

/// How the plugin's own upstream request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The upstream answered with this status.
    Answered(u16),
    /// Envoy never sent the request (no connection, no healthy host, overflow): the key is freed.
    NotSent,
    /// The request was sent, or may have been, and no answer came back in time.
    TimedOut,
    /// The request was sent, or may have been, and the exchange was cut.
    Reset,
}

/// Envoy's reset reasons that mean no byte of the request reached an upstream: the connection
/// was never established (refused, timed out, failed locally), the request waited for one and was
/// turned away (overflow), or the HTTP/2 peer refused the stream (which guarantees it did not
/// process it).
pub const NEVER_SENT_REASONS: [&str; 6] = [
    "connection timeout",
    "remote connection failure",
    "local connection failure",
    "connection failure",
    "overflow",
    "remote refused stream reset",
];

/// The prefix of Envoy's text for a reset before the answer's headers.
const RESET_TEXT: &str = "upstream connect error or disconnect/reset before headers. ";
const REASON_LABEL: &str = "reset reason: ";

/// Envoy's reply text when no upstream host can take the request.
const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";

/// Envoy's reply text when the callout's own timeout fired.
const TIMEOUT_TEXT: &str = "upstream request timeout";

/// Whether an answer with this status may be Envoy's own text (a reset or timeout, written by
/// this Envoy or by a proxy on the way), which [`ending`] reads from its body. An inline stream
/// reads such an answer whole before it frees a key (`stream/settle.rs`).
pub fn may_be_envoy_text(status: u16) -> bool {
    matches!(status, 503 | 504)
}

/// The ending of a callout whose dispatch Envoy refused (an error from the dispatch call).
pub fn dispatch_failed() -> Ending {
    Ending::NotSent
}

/// The ending of a callout from its reply: the status (`None` when the reply had no headers, a
/// reset), the headers and the body.
pub fn ending(status: Option<u16>, headers: &[(String, Vec<u8>)], body: &[u8]) -> Ending {
    let Some(status) = status else {
        return Ending::Reset;
    };
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let text = String::from_utf8_lossy(body);
    match status {
        504 if text == TIMEOUT_TEXT => Ending::TimedOut,
        503 if has("x-envoy-overloaded") || text == NO_HEALTHY_UPSTREAM => Ending::NotSent,
        503 if text.starts_with(RESET_TEXT) => match reset_reason(&text) {
            Some(reason) if NEVER_SENT_REASONS.contains(&reason) => Ending::NotSent,
            _ => Ending::Reset,
        },
        _ => Ending::Answered(status),
    }
}

/// The reset reason in Envoy's reset text: what follows `reset reason: ` up to the next `,` (a
/// TLS failure adds `, transport failure reason: ...`) or the end.
fn reset_reason(text: &str) -> Option<&str> {
    let (_, after) = text.split_once(REASON_LABEL)?;
    Some(after.split(',').next().unwrap_or(after).trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers = Vec<(String, Vec<u8>)>;
    /// The cause, the reply's status, headers and body, and the ending they must give.
    type Case = (&'static str, Option<u16>, Headers, Vec<u8>, Ending);

    fn reset(reason: &str) -> Vec<u8> {
        format!("{RESET_TEXT}{REASON_LABEL}{reason}").into_bytes()
    }

    fn envoy() -> Headers {
        vec![
            ("content-length".into(), b"91".to_vec()),
            ("content-type".into(), b"text/plain".to_vec()),
        ]
    }

    fn upstream() -> Headers {
        vec![("x-envoy-upstream-service-time".into(), b"3".to_vec())]
    }

    /// Every cause observed on Envoy 1.40, as the root context saw it.
    #[test]
    fn what_envoy_returns_for_each_cause() {
        let overloaded = {
            let mut h = envoy();
            h.push(("x-envoy-overloaded".into(), b"true".to_vec()));
            h
        };
        let cases: Vec<Case> = vec![
            ("connection refused", Some(503), envoy(), reset("remote connection failure"), Ending::NotSent),
            (
                "connection refused, TLS detail",
                Some(503),
                envoy(),
                reset("remote connection failure, transport failure reason: delayed connect error: 111"),
                Ending::NotSent,
            ),
            ("connect timeout (and those queued behind it)", Some(503), envoy(), reset("connection timeout"), Ending::NotSent),
            ("local connection failure", Some(503), envoy(), reset("local connection failure"), Ending::NotSent),
            ("queued request overflowed", Some(503), overloaded.clone(), reset("overflow"), Ending::NotSent),
            ("overloaded, any text", Some(503), overloaded, b"".to_vec(), Ending::NotSent),
            ("HTTP/2 refused stream", Some(503), envoy(), reset("remote refused stream reset"), Ending::NotSent),
            ("no healthy upstream", Some(503), envoy(), b"no healthy upstream".to_vec(), Ending::NotSent),
            ("upstream read the request, then closed", Some(503), envoy(), reset("connection termination"), Ending::Reset),
            ("remote reset", Some(503), envoy(), reset("remote reset"), Ending::Reset),
            ("local reset", Some(503), envoy(), reset("local reset"), Ending::Reset),
            ("protocol error", Some(503), envoy(), reset("protocol error"), Ending::Reset),
            ("premature close", Some(503), envoy(), reset("http1 premature upstream close"), Ending::Reset),
            ("a reason that only contains a never-sent one", Some(503), envoy(), reset("overflow of something else"), Ending::Reset),
            ("headers, then the body cut: no headers at all", None, Vec::new(), Vec::new(), Ending::Reset),
            ("callout timeout", Some(504), envoy(), b"upstream request timeout".to_vec(), Ending::TimedOut),
            ("the upstream's 201", Some(201), upstream(), b"{}".to_vec(), Ending::Answered(201)),
            ("the service's own 504", Some(504), upstream(), b"gateway timeout".to_vec(), Ending::Answered(504)),
            ("a proxy's route timeout on the way", Some(504), upstream(), b"upstream request timeout".to_vec(), Ending::TimedOut),
            (
                "a proxy on the way could not connect to the service",
                Some(503),
                upstream(),
                reset("connection timeout"),
                Ending::NotSent,
            ),
            (
                "a proxy on the way saw the service reset after the request was written",
                Some(503),
                upstream(),
                reset("connection termination"),
                Ending::Reset,
            ),
            ("the service's own 503", Some(503), upstream(), b"busy".to_vec(), Ending::Answered(503)),
            ("an unknown 503 text from Envoy", Some(503), envoy(), b"something".to_vec(), Ending::Answered(503)),
        ];
        for (cause, status, headers, body, expected) in cases {
            assert_eq!(ending(status, &headers, &body), expected, "{cause}");
        }
    }

    #[test]
    fn a_refused_dispatch_was_never_sent() {
        assert_eq!(dispatch_failed(), Ending::NotSent);
    }

    #[test]
    fn the_reason_ends_at_a_comma_or_the_end() {
        assert_eq!(reset_reason("x. reset reason: overflow"), Some("overflow"));
        assert_eq!(reset_reason("x. reset reason: a, b"), Some("a"));
        assert_eq!(reset_reason("no reason here"), None);
    }
}
