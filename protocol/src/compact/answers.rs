//! The compact form of the key store's answers: each outcome as its variant index (in
//! declaration order, new outcomes appended so that older readers keep their indexes) and its
//! fields.

use super::{read, write, Compact, MARKER};
use crate::error::ProtocolError;
use crate::response::{
    ClaimAnswer, ClaimResponse, FencedResponse, LookupResponse, RenewBatchResponse, RenewOutcome,
};
use serde::{Deserialize, Serialize};

/// A batch's answer: the count, then each outcome's index (0 `renewed`, 1 `stale`).
impl Compact for RenewBatchResponse {
    fn to_compact(&self) -> Vec<u8> {
        write(&self.outcomes)
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let outcomes: Vec<RenewOutcome> = read(body, "renew batch answer")?;
        Ok(Self { outcomes })
    }
}

/// A claim's answer: the outcome (its variant index first), then `waited`.
#[derive(Serialize, Deserialize)]
enum Outcome<'a> {
    Claimed { token: &'a str },
    InFlight { retry_after_ms: u64 },
    Completed { record: &'a [u8] },
    Mismatch,
    Abandoned { lease_ended_ms_ago: u64 },
}

impl Compact for ClaimAnswer {
    fn to_compact(&self) -> Vec<u8> {
        let outcome = match &self.response {
            ClaimResponse::Claimed { token } => Outcome::Claimed { token },
            ClaimResponse::InFlight { retry_after_ms } => Outcome::InFlight {
                retry_after_ms: *retry_after_ms,
            },
            ClaimResponse::Completed { record } => Outcome::Completed { record },
            ClaimResponse::Mismatch => Outcome::Mismatch,
            ClaimResponse::Abandoned { lease_ended_ms_ago } => Outcome::Abandoned {
                lease_ended_ms_ago: *lease_ended_ms_ago,
            },
        };
        write(&(outcome, self.waited))
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let (outcome, waited): (Outcome, bool) = read(body, "claim answer")?;
        let response = match outcome {
            Outcome::Claimed { token } => ClaimResponse::Claimed {
                token: token.to_owned(),
            },
            Outcome::InFlight { retry_after_ms } => ClaimResponse::InFlight { retry_after_ms },
            Outcome::Completed { record } => ClaimResponse::Completed {
                record: record.to_vec(),
            },
            Outcome::Mismatch => ClaimResponse::Mismatch,
            Outcome::Abandoned { lease_ended_ms_ago } => {
                ClaimResponse::Abandoned { lease_ended_ms_ago }
            }
        };
        Ok(Self { response, waited })
    }
}

/// A lookup's answer, as its variant index and fields.
#[derive(Serialize, Deserialize)]
enum LookupOutcome<'a> {
    Absent,
    InFlight { retry_after_ms: u64 },
    Completed { record: &'a [u8] },
    Mismatch,
    Abandoned { lease_ended_ms_ago: u64 },
}

impl Compact for LookupResponse {
    fn to_compact(&self) -> Vec<u8> {
        write(&match self {
            Self::Absent => LookupOutcome::Absent,
            Self::InFlight { retry_after_ms } => LookupOutcome::InFlight {
                retry_after_ms: *retry_after_ms,
            },
            Self::Completed { record } => LookupOutcome::Completed { record },
            Self::Mismatch => LookupOutcome::Mismatch,
            Self::Abandoned { lease_ended_ms_ago } => LookupOutcome::Abandoned {
                lease_ended_ms_ago: *lease_ended_ms_ago,
            },
        })
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        Ok(match read(body, "lookup answer")? {
            LookupOutcome::Absent => Self::Absent,
            LookupOutcome::InFlight { retry_after_ms } => Self::InFlight { retry_after_ms },
            LookupOutcome::Completed { record } => Self::Completed {
                record: record.to_vec(),
            },
            LookupOutcome::Mismatch => Self::Mismatch,
            LookupOutcome::Abandoned { lease_ended_ms_ago } => {
                Self::Abandoned { lease_ended_ms_ago }
            }
        })
    }
}

/// The answer to a complete, release or renew: its variant index, in declaration order.
impl Compact for FencedResponse {
    fn to_compact(&self) -> Vec<u8> {
        let index: u8 = match self {
            Self::Stored => 0,
            Self::Released => 1,
            Self::Renewed => 2,
            Self::Stale => 3,
        };
        vec![MARKER, index]
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        match body {
            [MARKER, 0] => Ok(Self::Stored),
            [MARKER, 1] => Ok(Self::Released),
            [MARKER, 2] => Ok(Self::Renewed),
            [MARKER, 3] => Ok(Self::Stale),
            _ => Err(ProtocolError::body("not a compact fenced answer")),
        }
    }
}
