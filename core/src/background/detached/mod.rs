//! Detached execution: the plugin sends the first request of a key upstream itself, from its root
//! context, so the answer is captured and stored even when the client has gone. This module builds
//! that upstream request and reads its answer (pure, below the worker); [`crate::background::worker`] runs it
//! and `settle` carries out its end.

use crate::budget::Held;
use crate::claim::Claim;
use crate::host::{Callout, Forwarded};
use crate::record::HOP_BY_HOP;

/// How a detached request ended, and how that is read from its callout's reply.
pub use crate::outcome::callout::{ending, Ending};

/// Request headers the plugin does not forward besides the hop-by-hop ones: `expect` asks the
/// client's connection for a `100 Continue` the callout never sends; `grpc-timeout` is the gRPC
/// client's deadline, which a gRPC service enforces by abandoning the call with
/// `DEADLINE_EXCEEDED` when the client gives up, the very case detached execution is for (the
/// rule's `upstream_timeout_ms` bounds the call instead).
const NOT_FORWARDED: [&str; 2] = ["expect", "grpc-timeout"];

/// The pseudo-headers a callout carries (Envoy requires all three).
const PSEUDO_FORWARDED: [&str; 3] = [":method", ":path", ":authority"];

/// The client's request as a callout to `cluster`, as the router would forward it: method, path
/// with query, authority, headers in order with their values as bytes (less hop-by-hop ones;
/// `content-length` stays when it is the body's; `te: trailers` stays, as the router keeps it)
/// and body.
pub fn upstream_request(
    cluster: &str,
    timeout_ms: u64,
    headers: &[(String, Vec<u8>)],
    body: Vec<u8>,
) -> Callout {
    let forwarded = headers
        .iter()
        .filter(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with(':') {
                PSEUDO_FORWARDED.contains(&lower.as_str())
            } else if lower == "content-length" {
                // Kept where the client put it, as the router forwards it: Envoy sets a callout's
                // length in place when the field is there, and appends it after the others when not.
                value.as_slice() == body.len().to_string().as_bytes()
            } else if lower == "te" {
                value.trim_ascii().eq_ignore_ascii_case(b"trailers")
            } else {
                !HOP_BY_HOP.contains(&lower.as_str()) && !NOT_FORWARDED.contains(&lower.as_str())
            }
        })
        .cloned()
        .collect();
    Callout {
        cluster: cluster.to_string(),
        headers: Vec::new(),
        body,
        timeout_ms,
        forwarded: Some(Box::new(Forwarded { headers: forwarded })),
    }
}

/// A detached execution: the request, where to answer, and the claim it runs under.
#[derive(Debug)]
pub struct DetachedJob {
    /// The client's stream, answered from the root context if it is still there.
    pub stream_id: u32,
    /// The request to send; moved out (and its body freed) when the root context sends it.
    pub upstream: Callout,
    pub claim: Claim,
    /// When the root context dispatched it (0 until then): its answer's
    /// `x-envoy-upstream-service-time` counts from here.
    pub sent_ms: u64,
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
            sent_ms: self.sent_ms,
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

    fn names(c: &Callout) -> Vec<&str> {
        let forwarded = c.forwarded.as_ref().unwrap();
        forwarded.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn forwards_the_request_less_hop_by_hop_headers() {
        let headers = vec![
            (":method".to_string(), b"POST".to_vec()),
            (":path".to_string(), b"/payments?x=1".to_vec()),
            (":authority".to_string(), b"api".to_vec()),
            (":scheme".to_string(), b"http".to_vec()),
            ("connection".to_string(), b"keep-alive".to_vec()),
            ("content-length".to_string(), b"2".to_vec()),
            ("te".to_string(), b"trailers".to_vec()),
            ("x-a".to_string(), b"1".to_vec()),
            ("x-bin".to_string(), vec![0xff, b'a']),
            ("x-a".to_string(), b"2".to_vec()),
            ("expect".to_string(), b"100-continue".to_vec()),
            ("grpc-timeout".to_string(), b"499m".to_vec()),
        ];
        let c = upstream_request("up", 900, &headers, b"{}".to_vec());
        assert_eq!(c.cluster, "up");
        assert_eq!(c.timeout_ms, 900);
        assert!(c.headers.is_empty(), "every field is in `forwarded`");
        assert_eq!(
            names(&c),
            [
                ":method",
                ":path",
                ":authority",
                "content-length",
                "te",
                "x-a",
                "x-bin",
                "x-a"
            ]
        );
        let forwarded = c.forwarded.as_ref().unwrap();
        assert_eq!(
            forwarded.headers[6].1,
            [0xff, b'a'],
            "bytes as the client sent them"
        );
        assert_eq!(c.body, b"{}");
        let other_length = upstream_request("up", 900, &headers, b"{}!".to_vec());
        assert!(
            !names(&other_length).contains(&"content-length"),
            "a length that is not the body's is left to Envoy"
        );
        let te_other = vec![("te".to_string(), b"gzip".to_vec())];
        let c = upstream_request("up", 1, &te_other, Vec::new());
        assert!(
            names(&c).is_empty(),
            "the router drops `te` unless it is `trailers`"
        );
    }
}
