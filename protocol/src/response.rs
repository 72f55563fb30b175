//! The replies of API v1: a JSON object whose `outcome` names the case, and the error body of
//! every non-2xx answer the key store makes itself.

use serde::{Deserialize, Serialize};

/// Answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ClaimResponse {
    /// The caller holds the key until the lease ends, with this fencing token.
    Claimed { token: String },
    /// Another claim with this fingerprint holds the key.
    InFlight { retry_after_ms: u64 },
    /// The key's record (base64 in JSON).
    Completed {
        #[serde(with = "crate::record_bytes")]
        record: Vec<u8>,
    },
    /// The key is claimed or completed with another fingerprint.
    Mismatch,
    /// The key holds an abandoned claim with this fingerprint: its lease ended this many
    /// milliseconds ago without complete or release, so its request's outcome is unknown. Sent
    /// only to a claim that names an `abandoned` policy other than `take_over`.
    Abandoned { lease_ended_ms_ago: u64 },
}

/// The body of a claim's 200: the answer, and whether the key store held the request before
/// giving it (`waited`, present only when true), for the caller's wait metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimAnswer {
    #[serde(flatten)]
    pub response: ClaimResponse,
    #[serde(default, skip_serializing_if = "is_false")]
    pub waited: bool,
}

/// Answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LookupResponse {
    Absent,
    InFlight {
        retry_after_ms: u64,
    },
    Completed {
        #[serde(with = "crate::record_bytes")]
        record: Vec<u8>,
    },
    Mismatch,
    /// As a claim's `abandoned`; sent only to a lookup that names an `abandoned` policy.
    Abandoned {
        lease_ended_ms_ago: u64,
    },
}

/// Answer to a complete, release or renew; `Stale` goes out with 409.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FencedResponse {
    Stored,
    Released,
    Renewed,
    /// The token is no longer the current claim's: the claim was completed, released, taken
    /// over or dropped at the end of its retention.
    Stale,
}

/// One renewal's answer within a `renew-batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewOutcome {
    /// The claim's lease now ends `lease_ms` from the renewal.
    Renewed,
    /// The token is no longer the current live claim's (as a single renew's 409).
    Stale,
}

/// Answer to a `renew-batch` (always 200): one outcome per renewal, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewBatchResponse {
    pub outcomes: Vec<RenewOutcome>,
}

/// The body of an error the key store answers itself (400, 401, 413, 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}
