//! RFC 9457 problem details for every answer the filter makes itself.

use crate::grpc::Code;
use crate::host::Headers;
use serde::Serialize;

/// One kind of problem the filter answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    MissingKey,
    InvalidKey,
    Conflict,
    Mismatch,
    BodyTooLarge,
    NotReplayable,
    OutcomeUnknown,
    Unauthenticated,
    StoreUnavailable,
    BodyUnreadable,
    UpstreamUnavailable,
    UpstreamTimeout,
    UpstreamReset,
    /// The worker holds its whole memory budget for other requests: this one did not run.
    MemoryBudget,
    /// The key store returned a record for the key that fails its seal check: the filter cannot
    /// vouch for it, so it neither replays it nor executes the request again.
    RecordUnverifiable,
    /// A request to the replay listener without a valid ticket from the outer filter.
    ReplayRefused,
    /// A routed replay found no record to answer with (evicted from L1 between the outer filter
    /// and the replay listener): nothing ran, a retry gets the record from the key store or here.
    ReplayUnavailable,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    pub fn status(self) -> u16 {
        match self {
            Problem::MissingKey | Problem::InvalidKey => 400,
            Problem::Unauthenticated => 401,
            Problem::Conflict => 409,
            Problem::NotReplayable | Problem::OutcomeUnknown => 410,
            Problem::BodyTooLarge => 413,
            Problem::Mismatch => 422,
            Problem::BodyUnreadable => 500,
            Problem::UpstreamReset => 502,
            Problem::UpstreamUnavailable => 503,
            Problem::UpstreamTimeout => 504,
            Problem::StoreUnavailable => 503,
            Problem::MemoryBudget => 503,
            Problem::RecordUnverifiable => 502,
            Problem::ReplayRefused => 403,
            Problem::ReplayUnavailable => 503,
        }
    }

    /// The gRPC status a gRPC caller gets for this problem, and whether it carries server
    /// pushback: only the answers a retry may safely repeat (nothing ran, or the key stops a
    /// second execution) are `UNAVAILABLE`, the one code retry policies and client libraries
    /// retry by default; the README's "gRPC" section gives the reasons row by row.
    pub fn grpc(self) -> (Code, bool) {
        match self {
            Problem::MissingKey | Problem::InvalidKey => (Code::InvalidArgument, false),
            Problem::Unauthenticated => (Code::Unauthenticated, false),
            // The key is in flight (or held after an unknown outcome): a retry gets the record,
            // or this answer again, and never a second execution.
            Problem::Conflict => (Code::Unavailable, true),
            // The key names another request: only a new key helps.
            Problem::Mismatch => (Code::AlreadyExists, false),
            Problem::NotReplayable => (Code::FailedPrecondition, false),
            // It may have executed: nothing must retry it automatically.
            Problem::OutcomeUnknown => (Code::Unknown, false),
            Problem::BodyTooLarge => (Code::ResourceExhausted, false),
            Problem::BodyUnreadable => (Code::Internal, false),
            // Nothing ran.
            Problem::StoreUnavailable | Problem::MemoryBudget | Problem::UpstreamUnavailable => {
                (Code::Unavailable, true)
            }
            // May have executed; the key keeps a retry from running it again.
            Problem::UpstreamTimeout => (Code::DeadlineExceeded, false),
            Problem::UpstreamReset => (Code::Unknown, false),
            Problem::RecordUnverifiable => (Code::DataLoss, false),
            Problem::ReplayRefused => (Code::PermissionDenied, false),
            // Nothing ran; the record is still kept (key store) or the key answers again.
            Problem::ReplayUnavailable => (Code::Unavailable, true),
        }
    }

    /// The title a client reads, the same in a problem body and a `grpc-message`.
    pub fn title(self) -> &'static str {
        self.slug_and_title().1
    }

    fn slug_and_title(self) -> (&'static str, &'static str) {
        match self {
            Problem::MissingKey => ("missing-key", "Idempotency-Key is missing"),
            Problem::InvalidKey => ("invalid-key", "Idempotency-Key is invalid"),
            Problem::Conflict => (
                "request-in-progress",
                "A request with this Idempotency-Key is being processed",
            ),
            Problem::Mismatch => (
                "key-reused",
                "Idempotency-Key is already used with another request",
            ),
            Problem::BodyTooLarge => ("body-too-large", "Request body is too large to fingerprint"),
            Problem::NotReplayable => (
                "response-not-replayable",
                "The response to this request was not kept",
            ),
            Problem::OutcomeUnknown => (
                "outcome-unknown",
                "The first request with this Idempotency-Key may have executed; it will not execute again",
            ),
            Problem::Unauthenticated => ("no-caller", "The request has no caller identity"),
            Problem::BodyUnreadable => ("body-unreadable", "The request body could not be read"),
            Problem::UpstreamUnavailable => ("upstream-unavailable", "The upstream could not be reached"),
            Problem::UpstreamTimeout => ("upstream-timeout", "The upstream did not answer in time"),
            Problem::UpstreamReset => ("upstream-reset", "The upstream reset the request"),
            Problem::StoreUnavailable => (
                "store-unavailable",
                "The idempotency key store is unavailable",
            ),
            Problem::MemoryBudget => (
                "memory-budget",
                "The gateway holds too many request bytes to take this request now",
            ),
            Problem::RecordUnverifiable => (
                "record-unverifiable",
                "The stored record for this Idempotency-Key fails verification",
            ),
            Problem::ReplayRefused => (
                "replay-refused",
                "The replay listener answers only replays routed by the gateway's filter",
            ),
            Problem::ReplayUnavailable => (
                "replay-unavailable",
                "The stored answer could not be replayed right now",
            ),
        }
    }

    /// The local reply: status, headers, JSON body. A conflict tells the client when to come back
    /// (`retry_after_s`, at least 1).
    pub fn response(self, detail: &str, retry_after_s: u64) -> (u16, Headers, Vec<u8>) {
        let (slug, title) = self.slug_and_title();
        let body = Body {
            kind: format!("urn:envoy-idempotency:problem:{slug}"),
            title,
            status: self.status(),
            detail,
        };
        let mut headers = vec![(
            "content-type".to_string(),
            b"application/problem+json".to_vec(),
        )];
        if matches!(
            self,
            Problem::Conflict | Problem::MemoryBudget | Problem::ReplayUnavailable
        ) {
            let seconds = retry_after_s.max(1).to_string();
            headers.push(("retry-after".to_string(), seconds.into_bytes()));
        }
        (
            self.status(),
            headers,
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_has_the_rfc_9457_fields() {
        let (status, headers, body) = Problem::Mismatch.response("the body differs", 0);
        assert_eq!(status, 422);
        assert_eq!(headers[0].1, b"application/problem+json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["detail"], "the body differs");
        assert!(v["type"].as_str().unwrap().ends_with("key-reused"));
        assert!(v["title"].is_string());
        let (_, headers, _) = Problem::Conflict.response("", 0);
        assert!(headers.contains(&("retry-after".to_string(), b"1".to_vec())));
        let (_, headers, _) = Problem::Conflict.response("", 12);
        assert!(headers.contains(&("retry-after".to_string(), b"12".to_vec())));
        let (status, headers, _) = Problem::OutcomeUnknown.response("", 0);
        assert_eq!(status, 410);
        assert!(!headers.iter().any(|(n, _)| n == "retry-after"));
    }
}
