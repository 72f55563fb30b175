//! The compact body format (`content-type: application/vnd.idempotency.v1+postcard`): the same
//! messages as [`crate::json`], as one marker byte ([`MARKER`]) followed by their postcard
//! encoding. Keys and fingerprints travel as their 32 raw bytes, records as raw bytes, numbers as
//! varints, so a claim is ~80 bytes instead of ~200 and a record is not inflated by base64.
//!
//! Field order is the layout (README, "Key-store API"); a body is read to its last byte (trailing
//! bytes are an error). Fields added to a request after its first layout (a claim's and a
//! lookup's `abandoned`, a claim's `retention_ms`) follow that layout, and only when present, so an
//! older writer's body reads as before. Requests go through the same [`Request::from_wire`] as
//! JSON ones, so the limits and the field named in an error are the same. The answers are in
//! [`answers`].

use crate::bounded::{too_many, BoundedVec, Listed};
use crate::error::ProtocolError;
use crate::hex64::Hex64;
use crate::limits::MAX_RENEW_BATCH;
use crate::request::{
    AbandonedPolicy, ClaimRequest, CompleteRequest, LookupRequest, ReleaseRequest,
    RenewBatchRequest, RenewRequest, Request,
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
    match read_prefix(body, what)? {
        (value, []) => Ok(value),
        _ => Err(ProtocolError::body(format!(
            "trailing bytes after the {what}"
        ))),
    }
}

/// Reads a message that may be followed by an extension (fields added after the first layout,
/// which older writers leave out): the message and the bytes after it.
fn read_prefix<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    what: &str,
) -> Result<(T, &'a [u8]), ProtocolError> {
    let rest = match body.split_first() {
        Some((&MARKER, rest)) => rest,
        _ => {
            return Err(ProtocolError::body(format!(
                "a compact body starts with the byte {MARKER:#04x}"
            )))
        }
    };
    postcard::take_from_bytes(rest)
        .map_err(|e| ProtocolError::body(format!("not a compact {what}: {e}")))
}

/// Reads an extension: absent (no bytes left) or one `T` to the last byte.
fn read_extension<'a, T: Deserialize<'a>>(
    rest: &'a [u8],
    what: &str,
) -> Result<Option<T>, ProtocolError> {
    if rest.is_empty() {
        return Ok(None);
    }
    match postcard::take_from_bytes(rest) {
        Ok((value, [])) => Ok(Some(value)),
        Ok(_) => Err(ProtocolError::body(format!(
            "trailing bytes after the {what}"
        ))),
        Err(e) => Err(ProtocolError::body(format!("not a compact {what}: {e}"))),
    }
}

/// An `abandoned` policy as one byte: 0 absent, 1 `report`, 2 `take_over`.
fn policy_byte(policy: Option<AbandonedPolicy>) -> u8 {
    match policy {
        None => 0,
        Some(AbandonedPolicy::Report) => 1,
        Some(AbandonedPolicy::TakeOver) => 2,
    }
}

/// The policy a byte names, as its wire name (so that validation names a bad one).
fn policy_name(byte: u8) -> Option<String> {
    match byte {
        0 => None,
        1 => Some("report".to_owned()),
        2 => Some("take_over".to_owned()),
        other => Some(format!("byte {other}")),
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

/// What a claim says about abandoned keys, after the first layout: the policy byte, then
/// `retention_ms` (a varint, 0: absent). Left out when both are absent, so an older filter's
/// claim reads as one without them.
#[derive(Serialize, Deserialize)]
struct ClaimExtension {
    abandoned: u8,
    retention_ms: u64,
}

impl Compact for ClaimRequest {
    fn to_compact(&self) -> Vec<u8> {
        let mut body = write(&Claim {
            key: raw(&self.key),
            fingerprint: raw(&self.fingerprint),
            lease_ms: self.lease_ms,
            wait_ms: self.wait_ms,
            token: self.token.as_deref(),
        });
        if self.abandoned.is_some() || self.retention_ms.is_some() {
            let extension = ClaimExtension {
                abandoned: policy_byte(self.abandoned),
                retention_ms: self.retention_ms.unwrap_or(0),
            };
            body = postcard::to_extend(&extension, body).unwrap_or_default();
        }
        body
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let (c, rest): (Claim, _) = read_prefix(body, "claim")?;
        let extension: Option<ClaimExtension> = read_extension(rest, "claim")?;
        Self::from_wire(wire::Claim {
            key: hex(&c.key),
            fingerprint: hex(&c.fingerprint),
            lease_ms: Some(c.lease_ms),
            wait_ms: Some(c.wait_ms),
            token: c.token.map(str::to_owned),
            abandoned: extension.as_ref().and_then(|e| policy_name(e.abandoned)),
            retention_ms: extension.map(|e| e.retention_ms).filter(|&n| n != 0),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Lookup {
    key: [u8; 32],
    fingerprint: [u8; 32],
}

/// A lookup is followed by the `abandoned` policy byte when it names one.
impl Compact for LookupRequest {
    fn to_compact(&self) -> Vec<u8> {
        let mut body = write(&Lookup {
            key: raw(&self.key),
            fingerprint: raw(&self.fingerprint),
        });
        if self.abandoned.is_some() {
            body.push(policy_byte(self.abandoned));
        }
        body
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let (l, rest): (Lookup, _) = read_prefix(body, "lookup")?;
        let policy: Option<u8> = read_extension(rest, "lookup")?;
        Self::from_wire(wire::Lookup {
            key: hex(&l.key),
            fingerprint: hex(&l.fingerprint),
            abandoned: policy.and_then(policy_name),
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

pub mod answers;
pub mod batch;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
