//! Detached execution: the plugin sends the first request of a key upstream itself, from its root
//! context, so the answer is captured and stored even when the client has gone. This module builds
//! that upstream request and reads its answer (pure, below the worker); [`crate::background::worker`] runs it
//! and `settle` carries out its end.

use crate::claim::Claim;
use crate::host::Callout;
use crate::record::HOP_BY_HOP;

/// Request headers the plugin does not forward besides the hop-by-hop ones: `expect` asks the
/// client's connection for a `100 Continue` the callout never sends.
const NOT_FORWARDED: [&str; 1] = ["expect"];

/// The pseudo-headers a callout carries (Envoy requires all three).
const PSEUDO_FORWARDED: [&str; 3] = [":method", ":path", ":authority"];

/// A header whose value is not UTF-8, which a callout cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnforwardableHeader(pub String);

/// The client's request as a callout to `cluster`: method, path with query, authority, headers
/// (less hop-by-hop; `content-length` stays when it is the body's), body.
pub fn upstream_request(
    cluster: &str,
    timeout_ms: u64,
    headers: &[(String, Vec<u8>)],
    body: Vec<u8>,
) -> Result<Callout, UnforwardableHeader> {
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let forwarded = if lower.starts_with(':') {
            PSEUDO_FORWARDED.contains(&lower.as_str())
        } else if lower == "content-length" {
            // Kept where the client put it, as the router forwards it: Envoy sets a callout's
            // length in place when the field is there, and appends it after the others when not.
            value.as_slice() == body.len().to_string().as_bytes()
        } else {
            !HOP_BY_HOP.contains(&lower.as_str()) && !NOT_FORWARDED.contains(&lower.as_str())
        };
        if !forwarded {
            continue;
        }
        let text = String::from_utf8(value.clone()).map_err(|_| UnforwardableHeader(lower))?;
        out.push((name.clone(), text));
    }
    Ok(Callout {
        cluster: cluster.to_string(),
        headers: out,
        body,
        timeout_ms,
    })
}

/// How the plugin's own upstream request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The upstream answered with this status.
    Answered(u16),
    /// Envoy could not reach the upstream (connection refused, no healthy host): never sent.
    NotSent,
    /// The request was sent and no answer came back whole (timeout, reset).
    TimedOut,
    Reset,
}

/// Reads a callout's answer. Envoy reports its own failures as ordinary responses (503, 504) with
/// its plain-text reasons, and only a reset comes without headers; the reasons tell a connection
/// that never opened from a request that may have run.
pub fn ending(status: Option<u16>, headers: &[(String, Vec<u8>)], body: &[u8]) -> Ending {
    let Some(status) = status else {
        return Ending::Reset;
    };
    let from_envoy = !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("x-envoy-upstream-service-time"));
    let text = String::from_utf8_lossy(body);
    match status {
        504 if from_envoy && text == "upstream request timeout" => Ending::TimedOut,
        503 if from_envoy && text == "no healthy upstream" => Ending::NotSent,
        503 if from_envoy && text.starts_with("upstream connect error") => {
            if text.contains("connection failure") || text.contains("overflow") {
                Ending::NotSent
            } else {
                Ending::Reset
            }
        }
        _ => Ending::Answered(status),
    }
}

/// A detached execution: the request, where to answer, and the claim it runs under.
#[derive(Debug, Clone)]
pub struct DetachedJob {
    /// The client's stream, answered from the root context if it is still there.
    pub stream_id: u32,
    pub upstream: Callout,
    pub claim: Claim,
}

mod settle;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_the_request_less_hop_by_hop_headers() {
        let headers = vec![
            (":method".to_string(), b"POST".to_vec()),
            (":path".to_string(), b"/payments?x=1".to_vec()),
            (":authority".to_string(), b"api".to_vec()),
            (":scheme".to_string(), b"http".to_vec()),
            ("connection".to_string(), b"keep-alive".to_vec()),
            ("content-length".to_string(), b"2".to_vec()),
            ("x-a".to_string(), b"1".to_vec()),
            ("x-a".to_string(), b"2".to_vec()),
        ];
        let c = upstream_request("up", 900, &headers, b"{}".to_vec()).unwrap();
        assert_eq!(c.cluster, "up");
        assert_eq!(c.timeout_ms, 900);
        let names: Vec<&str> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                ":method",
                ":path",
                ":authority",
                "content-length",
                "x-a",
                "x-a"
            ]
        );
        assert_eq!(c.body, b"{}");
        let other_length = upstream_request("up", 900, &headers, b"{}!".to_vec()).unwrap();
        assert!(
            other_length
                .headers
                .iter()
                .all(|(n, _)| n != "content-length"),
            "a length that is not the body's is left to Envoy"
        );
        let bad = vec![("x-bin".to_string(), vec![0xff])];
        assert_eq!(
            upstream_request("up", 1, &bad, vec![]).unwrap_err(),
            UnforwardableHeader("x-bin".into())
        );
    }

    #[test]
    fn envoy_failures_are_told_from_upstream_answers() {
        let none: Vec<(String, Vec<u8>)> = vec![];
        let upstream = vec![("x-envoy-upstream-service-time".to_string(), b"3".to_vec())];
        assert_eq!(ending(None, &none, b""), Ending::Reset);
        assert_eq!(
            ending(Some(504), &none, b"upstream request timeout"),
            Ending::TimedOut
        );
        assert_eq!(
            ending(Some(503), &none, b"no healthy upstream"),
            Ending::NotSent
        );
        assert_eq!(
            ending(
                Some(503),
                &none,
                b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: 111"
            ),
            Ending::NotSent
        );
        assert_eq!(
            ending(
                Some(503),
                &none,
                b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            ),
            Ending::Reset
        );
        assert_eq!(
            ending(Some(504), &upstream, b"upstream request timeout"),
            Ending::Answered(504),
            "the upstream's own 504"
        );
        assert_eq!(ending(Some(201), &none, b"{}"), Ending::Answered(201));
    }
}
