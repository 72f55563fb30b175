//! The compact body format (`content-type: application/vnd.idempotency.v1+postcard`): the same
//! messages as [`crate::json`], as one marker byte ([`MARKER`]) followed by their postcard
//! encoding. Keys and fingerprints travel as their 32 raw bytes, records as raw bytes, numbers as
//! varints, so a claim is ~80 bytes instead of ~200 and a record is not inflated by base64.
//!
//! Field order is the layout (README, "Key-store API"); a body is read to its last byte (trailing
//! bytes are an error). Requests go through the same [`Request::from_wire`] as JSON ones, so the
//! limits and the field named in an error are the same.

use crate::bounded::{too_many, BoundedVec, Listed};
use crate::error::ProtocolError;
use crate::hex64::Hex64;
use crate::limits::MAX_RENEW_BATCH;
use crate::request::{
    ClaimRequest, CompleteRequest, LookupRequest, ReleaseRequest, RenewBatchRequest, RenewRequest,
    Request,
};
use crate::response::{
    ClaimAnswer, ClaimResponse, FencedResponse, LookupResponse, RenewBatchResponse, RenewOutcome,
};
use crate::wire;
use serde::{Deserialize, Serialize};

/// The media type of the compact format.
pub const CONTENT_TYPE: &str = "application/vnd.idempotency.v1+postcard";

/// The first byte of every compact body: the format's version, which no JSON text starts with,
/// so a body says which format it is in.
pub const MARKER: u8 = 0x01;

/// A message with a compact form.
pub trait Compact: Sized {
    /// Writes the message in the compact format.
    fn to_compact(&self) -> Vec<u8>;

    /// Reads (and, for a request, validates) a compact body; the error names the field at fault,
    /// or `body` when the body does not have the layout.
    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError>;
}

fn write<T: Serialize>(value: &T) -> Vec<u8> {
    // Writing to a growable vector fails only on types postcard cannot express; ours are plain.
    postcard::to_extend(value, vec![MARKER]).unwrap_or_default()
}

fn read<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ProtocolError> {
    let rest = match body.split_first() {
        Some((&MARKER, rest)) => rest,
        _ => {
            return Err(ProtocolError::body(format!(
                "a compact body starts with the byte {MARKER:#04x}"
            )))
        }
    };
    match postcard::take_from_bytes(rest) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(ProtocolError::body(format!(
            "trailing bytes after the {what}"
        ))),
        Err(e) => Err(ProtocolError::body(format!("not a compact {what}: {e}"))),
    }
}

/// The raw bytes of a key or fingerprint.
fn raw(h: &Hex64) -> [u8; 32] {
    let mut out = [0u8; 32];
    // A `Hex64` is 64 hex characters by construction, so this does not fail.
    let _ = hex::decode_to_slice(h.as_str(), &mut out);
    out
}

fn hex(bytes: &[u8; 32]) -> Option<String> {
    Some(Hex64::from_bytes(bytes).as_str().to_owned())
}

#[derive(Serialize, Deserialize)]
struct Claim<'a> {
    key: [u8; 32],
    fingerprint: [u8; 32],
    lease_ms: u64,
    wait_ms: u64,
    #[serde(borrow)]
    token: Option<&'a str>,
}

impl Compact for ClaimRequest {
    fn to_compact(&self) -> Vec<u8> {
        write(&Claim {
            key: raw(&self.key),
            fingerprint: raw(&self.fingerprint),
            lease_ms: self.lease_ms,
            wait_ms: self.wait_ms,
            token: self.token.as_deref(),
        })
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let c: Claim = read(body, "claim")?;
        Self::from_wire(wire::Claim {
            key: hex(&c.key),
            fingerprint: hex(&c.fingerprint),
            lease_ms: Some(c.lease_ms),
            wait_ms: Some(c.wait_ms),
            token: c.token.map(str::to_owned),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Lookup {
    key: [u8; 32],
    fingerprint: [u8; 32],
}

impl Compact for LookupRequest {
    fn to_compact(&self) -> Vec<u8> {
        write(&Lookup {
            key: raw(&self.key),
            fingerprint: raw(&self.fingerprint),
        })
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let l: Lookup = read(body, "lookup")?;
        Self::from_wire(wire::Lookup {
            key: hex(&l.key),
            fingerprint: hex(&l.fingerprint),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Complete<'a> {
    key: [u8; 32],
    token: &'a str,
    record: &'a [u8],
    retention_ms: u64,
}

impl Compact for CompleteRequest {
    fn to_compact(&self) -> Vec<u8> {
        write(&Complete {
            key: raw(&self.key),
            token: &self.token,
            record: &self.record,
            retention_ms: self.retention_ms,
        })
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let c: Complete = read(body, "complete")?;
        Self::from_wire(wire::Complete {
            key: hex(&c.key),
            token: Some(c.token.to_owned()),
            record: Some(c.record.to_vec()),
            retention_ms: Some(c.retention_ms),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Release<'a> {
    key: [u8; 32],
    token: &'a str,
}

impl Compact for ReleaseRequest {
    fn to_compact(&self) -> Vec<u8> {
        write(&Release {
            key: raw(&self.key),
            token: &self.token,
        })
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let r: Release = read(body, "release")?;
        Self::from_wire(wire::Release {
            key: hex(&r.key),
            token: Some(r.token.to_owned()),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Renew<'a> {
    key: [u8; 32],
    token: &'a str,
    lease_ms: u64,
}

impl Compact for RenewRequest {
    fn to_compact(&self) -> Vec<u8> {
        write(&Renew::of(self))
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let r: Renew = read(body, "renew")?;
        Self::from_wire(r.wire())
    }
}

impl Renew<'_> {
    fn of(r: &RenewRequest) -> Renew<'_> {
        Renew {
            key: raw(&r.key),
            token: &r.token,
            lease_ms: r.lease_ms,
        }
    }

    fn wire(&self) -> wire::Renew {
        wire::Renew {
            key: hex(&self.key),
            token: Some(self.token.to_owned()),
            lease_ms: Some(self.lease_ms),
        }
    }
}

impl Listed for Renew<'_> {
    const PLURAL: &'static str = "renewals";
}

/// A batch of renewals: their count (a varint), then each as a renew. A count past
/// [`MAX_RENEW_BATCH`] is refused before any renewal is read.
#[derive(Serialize)]
struct RenewBatch<'a> {
    renewals: Vec<Renew<'a>>,
}

/// The batch as read, its bound checked while reading.
#[derive(Deserialize)]
struct RenewBatchIn<'a> {
    #[serde(borrow)]
    renewals: BoundedVec<Renew<'a>, MAX_RENEW_BATCH>,
}

/// Refuses a batch whose declared count is past the bound, naming the field as JSON would: the
/// count is the varint right after the marker.
fn check_batch_count(body: &[u8]) -> Result<(), ProtocolError> {
    let Some((&MARKER, rest)) = body.split_first() else {
        return Ok(());
    };
    match postcard::take_from_bytes::<u64>(rest) {
        Ok((n, _)) if n > MAX_RENEW_BATCH as u64 => Err(ProtocolError::field(
            "renewals",
            too_many(MAX_RENEW_BATCH, "renewals"),
        )),
        _ => Ok(()),
    }
}

impl Compact for RenewBatchRequest {
    fn to_compact(&self) -> Vec<u8> {
        write(&RenewBatch {
            renewals: self.renewals.iter().map(Renew::of).collect(),
        })
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        check_batch_count(body)?;
        let b: RenewBatchIn = read(body, "renew batch")?;
        Self::from_wire(wire::RenewBatch {
            renewals: Some(BoundedVec(b.renewals.0.iter().map(Renew::wire).collect())),
        })
    }
}

/// A batch's answer: the count, then each outcome's index (0 `renewed`, 1 `stale`).
impl Compact for RenewBatchResponse {
    fn to_compact(&self) -> Vec<u8> {
        write(&self.outcomes)
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let outcomes: BoundedVec<RenewOutcome, MAX_RENEW_BATCH> = read(body, "renew batch answer")?;
        Ok(Self {
            outcomes: outcomes.into_inner(),
        })
    }
}

/// A claim's answer: the outcome (its variant index first), then `waited`.
#[derive(Serialize, Deserialize)]
enum Outcome<'a> {
    Claimed { token: &'a str },
    InFlight { retry_after_ms: u64 },
    Completed { record: &'a [u8] },
    Mismatch,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
