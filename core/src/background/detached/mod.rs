//! Detached execution: the plugin sends the first request of a key upstream itself, from its root
//! context, so the answer is captured and stored even when the client has gone. This module builds
//! that upstream request and reads its answer (pure, below the worker); [`crate::background::worker`] runs it
//! and `settle` carries out its end.

use crate::budget::Held;
use crate::claim::Claim;
use crate::host::Callout;
use crate::record::HOP_BY_HOP;

/// How a detached request ended, and how that is read from its callout's reply.
pub use crate::outcome::callout::{ending, Ending};

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

/// A detached execution: the request, where to answer, and the claim it runs under.
#[derive(Debug)]
pub struct DetachedJob {
    /// The client's stream, answered from the root context if it is still there.
    pub stream_id: u32,
    /// The request to send; moved out (and its body freed) when the root context sends it.
    pub upstream: Callout,
    pub claim: Claim,
    /// The request's bytes in the worker's memory budget, given back once it is dispatched
    /// (Envoy then holds its own copy) or settled without being sent.
    pub held: Option<Held>,
    /// The client's call is gRPC: the filter's own answers are gRPC statuses.
    pub grpc: bool,
    /// The first answer goes through the replay listener (`crate::background::routed`).
    pub routed: bool,
}

/// A copy of a job holds no share of the budget: the bytes are given back once, by the original.
impl Clone for DetachedJob {
    fn clone(&self) -> DetachedJob {
        DetachedJob {
            stream_id: self.stream_id,
            upstream: self.upstream.clone(),
            claim: self.claim.clone(),
            held: None,
            grpc: self.grpc,
            routed: self.routed,
        }
    }
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
}
