//! The requests of API v1, validated: a value of these types is a request the key store
//! accepts. They serialize to their wire form directly; they deserialize through [`crate::wire`]
//! and [`Request::from_wire`], which names the field at fault.

use crate::error::ProtocolError;
use crate::hex64::Hex64;
use crate::limits::{MAX_LEASE_MS, MAX_RENEW_BATCH, MAX_RETENTION_MS, MAX_TOKEN_LEN, MAX_WAIT_MS};
use crate::wire;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A request body: its unvalidated shape, and the validation that turns one into the other.
pub trait Request: Serialize + Sized {
    /// The serde shape of the body before validation.
    type Wire: DeserializeOwned;

    /// Validates a body; the error names the first field at fault.
    fn from_wire(wire: Self::Wire) -> Result<Self, ProtocolError>;
}

/// `POST /v1/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimRequest {
    pub key: Hex64,
    pub fingerprint: Hex64,
    pub lease_ms: u64,
    /// How long to hold the request while the key is in flight with this fingerprint (0: answer
    /// at once, and the field is left out).
    #[serde(skip_serializing_if = "is_zero")]
    pub wait_ms: u64,
    /// The fencing token the caller proposes for the claim, if any (else the key store makes one).
    /// A caller that knows its token before the answer can release a claim whose answer it lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// What the caller wants when the key holds an abandoned claim (a claim whose lease ran out
    /// without complete or release). Present, it also says that the caller understands the
    /// `abandoned` outcome; absent (a filter older than abandoned claims), the key store answers
    /// `in_flight` instead, so that such a caller fails closed (409, never a second execution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<AbandonedPolicy>,
    /// How long the key store keeps this claim once its lease ran out without an answer (the
    /// caller's retention; absent: [`crate::DEFAULT_ABANDONED_RETENTION_MS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
}

/// A claim's policy for an abandoned key (README, "Key-store API").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbandonedPolicy {
    /// Answer `abandoned` with how long ago the lease ended; the key stays taken (exactly once:
    /// the abandoned request may have reached the upstream).
    Report,
    /// Take the key over atomically with a new token, fencing the old one (at least once).
    TakeOver,
}

impl AbandonedPolicy {
    /// The policy named on the wire.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "report" => Some(Self::Report),
            "take_over" => Some(Self::TakeOver),
            _ => None,
        }
    }
}

/// `POST /v1/lookup`: what a key holds, changing nothing (a filter looking for a record stored
/// under a secret it has since rotated away from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LookupRequest {
    pub key: Hex64,
    pub fingerprint: Hex64,
    /// Present (either value), the caller understands the `abandoned` answer; absent, an
    /// abandoned key is reported as `in_flight`, as to a claim. A lookup changes nothing, so the
    /// value itself does not matter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<AbandonedPolicy>,
}

/// `POST /v1/complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompleteRequest {
    pub key: Hex64,
    pub token: String,
    /// The record, opaque to the key store (base64 in JSON).
    #[serde(with = "crate::record_bytes")]
    pub record: Vec<u8>,
    pub retention_ms: u64,
}

/// `POST /v1/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseRequest {
    pub key: Hex64,
    pub token: String,
}

/// `POST /v1/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenewRequest {
    pub key: Hex64,
    pub token: String,
    /// The new lease, counted from the renewal.
    pub lease_ms: u64,
}

/// `POST /v1/renew-batch`: several renewals in one call (1 to [`MAX_RENEW_BATCH`]), each one
/// validated as a `renew` and answered in order, so a filter renews all its claims due at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenewBatchRequest {
    pub renewals: Vec<RenewRequest>,
}

impl Request for ClaimRequest {
    type Wire = wire::Claim;

    fn from_wire(w: wire::Claim) -> Result<Self, ProtocolError> {
        Ok(Self {
            key: hex64(w.key, "key")?,
            fingerprint: hex64(w.fingerprint, "fingerprint")?,
            lease_ms: millis(w.lease_ms, "lease_ms", MAX_LEASE_MS)?,
            wait_ms: optional_millis(w.wait_ms, "wait_ms", MAX_WAIT_MS)?,
            token: w.token.map(|t| token(Some(t))).transpose()?,
            abandoned: policy(w.abandoned)?,
            retention_ms: w
                .retention_ms
                .map(|n| millis(Some(n), "retention_ms", MAX_RETENTION_MS))
                .transpose()?,
        })
    }
}

impl Request for LookupRequest {
    type Wire = wire::Lookup;

    fn from_wire(w: wire::Lookup) -> Result<Self, ProtocolError> {
        Ok(Self {
            key: hex64(w.key, "key")?,
            fingerprint: hex64(w.fingerprint, "fingerprint")?,
            abandoned: policy(w.abandoned)?,
        })
    }
}

impl Request for CompleteRequest {
    type Wire = wire::Complete;

    fn from_wire(w: wire::Complete) -> Result<Self, ProtocolError> {
        Ok(Self {
            key: hex64(w.key, "key")?,
            token: token(w.token)?,
            record: w
                .record
                .ok_or_else(|| ProtocolError::field("record", "missing"))?,
            retention_ms: millis(w.retention_ms, "retention_ms", MAX_RETENTION_MS)?,
        })
    }
}

impl Request for ReleaseRequest {
    type Wire = wire::Release;

    fn from_wire(w: wire::Release) -> Result<Self, ProtocolError> {
        Ok(Self {
            key: hex64(w.key, "key")?,
            token: token(w.token)?,
        })
    }
}

impl Request for RenewRequest {
    type Wire = wire::Renew;

    fn from_wire(w: wire::Renew) -> Result<Self, ProtocolError> {
        Ok(Self {
            key: hex64(w.key, "key")?,
            token: token(w.token)?,
            lease_ms: millis(w.lease_ms, "lease_ms", MAX_LEASE_MS)?,
        })
    }
}

impl Request for RenewBatchRequest {
    type Wire = wire::RenewBatch;

    fn from_wire(w: wire::RenewBatch) -> Result<Self, ProtocolError> {
        let renewals = required(w.renewals, "renewals")?;
        if renewals.is_empty() || renewals.len() > MAX_RENEW_BATCH {
            return Err(ProtocolError::field(
                "renewals",
                format!("must hold 1 to {MAX_RENEW_BATCH} renewals"),
            ));
        }
        let renewals = renewals
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                RenewRequest::from_wire(r).map_err(|e| {
                    ProtocolError::field(format!("renewals[{i}].{}", e.field), e.problem)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { renewals })
    }
}

fn policy(value: Option<String>) -> Result<Option<AbandonedPolicy>, ProtocolError> {
    value
        .map(|name| {
            AbandonedPolicy::parse(&name).ok_or_else(|| {
                ProtocolError::field("abandoned", "must be \"report\" or \"take_over\"")
            })
        })
        .transpose()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn required<T>(value: Option<T>, name: &str) -> Result<T, ProtocolError> {
    value.ok_or_else(|| ProtocolError::field(name, "missing"))
}

fn hex64(value: Option<String>, name: &str) -> Result<Hex64, ProtocolError> {
    Hex64::parse(&required(value, name)?)
        .ok_or_else(|| ProtocolError::field(name, "must be 64 lowercase hex characters"))
}

fn token(value: Option<String>) -> Result<String, ProtocolError> {
    let t = required(value, "token")?;
    if t.is_empty() || t.len() > MAX_TOKEN_LEN {
        return Err(ProtocolError::field(
            "token",
            format!("must be 1 to {MAX_TOKEN_LEN} characters"),
        ));
    }
    Ok(t)
}

fn millis(value: Option<u64>, name: &str, max: u64) -> Result<u64, ProtocolError> {
    Some(required(value, name)?)
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ProtocolError::field(name, format!("must be an integer from 1 to {max}")))
}

/// An optional duration: absent or null is 0, which means "not at all".
fn optional_millis(value: Option<u64>, name: &str, max: u64) -> Result<u64, ProtocolError> {
    match value {
        None => Ok(0),
        Some(n) if n <= max => Ok(n),
        Some(_) => Err(ProtocolError::field(
            name,
            format!("must be an integer from 0 to {max}"),
        )),
    }
}
