//! Wire types of the key-store API v1 and their validation.
//!
//! Bodies are parsed field by field (not with a derived `Deserialize`) so that every 400 names
//! the offending field, which is what the filter logs when it misbehaves.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest accepted lease: one day. A longer lease would lock a key long after any sane route timeout.
pub const MAX_LEASE_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest accepted retention: one year.
pub const MAX_RETENTION_MS: u64 = 365 * 24 * 60 * 60 * 1000;
/// Longest accepted fencing token; ours are 32 characters, the bound only stops abuse.
pub const MAX_TOKEN_LEN: usize = 256;
/// Longest a claim may wait for an in-flight key: a minute, past any sane route timeout, and short
/// enough that a waiting request does not pin a connection for long.
pub const MAX_WAIT_MS: u64 = 60_000;

/// A malformed request: the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn field(name: &str, what: &str) -> Self {
        Self(format!("{name}: {what}"))
    }
}

/// A key or fingerprint: 64 lowercase hex characters (a keyed SHA-256 made by the filter).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hex64(String);

impl Hex64 {
    /// Validates `s`; `None` unless it is exactly 64 lowercase hex characters.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(s.to_owned()))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `POST /v1/claim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub key: Hex64,
    pub fingerprint: Hex64,
    pub lease_ms: u64,
    /// How long to hold the request while the key is in flight with this fingerprint (0: answer
    /// at once).
    pub wait_ms: u64,
    /// The fencing token the caller proposes for the claim, if any (else the key store makes one).
    /// A caller that knows its token before the answer can release a claim whose answer it lost.
    pub token: Option<String>,
}

impl ClaimRequest {
    /// The token a granted claim gets.
    pub fn token_or_new(&self) -> String {
        self.token.clone().unwrap_or_else(crate::backend::new_token)
    }
}

/// `POST /v1/lookup`: what a key holds, changing nothing (a filter looking for a record stored
/// under a secret it has since rotated away from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupRequest {
    pub key: Hex64,
    pub fingerprint: Hex64,
}

impl LookupRequest {
    /// Parses and validates a JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let obj = object(body)?;
        Ok(Self {
            key: hex64(&obj, "key")?,
            fingerprint: hex64(&obj, "fingerprint")?,
        })
    }
}

/// `POST /v1/complete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteRequest {
    pub key: Hex64,
    pub token: String,
    /// The decoded record bytes (base64 on the wire).
    pub record: Vec<u8>,
    pub retention_ms: u64,
}

/// `POST /v1/release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    pub key: Hex64,
    pub token: String,
}

/// `POST /v1/renew`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewRequest {
    pub key: Hex64,
    pub token: String,
    /// The new lease, counted from the renewal.
    pub lease_ms: u64,
}

impl ClaimRequest {
    /// Parses and validates a JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let obj = object(body)?;
        Ok(Self {
            key: hex64(&obj, "key")?,
            fingerprint: hex64(&obj, "fingerprint")?,
            lease_ms: millis(&obj, "lease_ms", MAX_LEASE_MS)?,
            wait_ms: optional_millis(&obj, "wait_ms", MAX_WAIT_MS)?,
            token: match obj.get("token") {
                None | Some(Value::Null) => None,
                Some(_) => Some(token(&obj)?),
            },
        })
    }
}

impl CompleteRequest {
    /// Parses and validates a JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let obj = object(body)?;
        let record = string(&obj, "record")?;
        let record = BASE64
            .decode(record)
            .map_err(|_| ProtocolError::field("record", "must be standard padded base64"))?;
        Ok(Self {
            key: hex64(&obj, "key")?,
            token: token(&obj)?,
            record,
            retention_ms: millis(&obj, "retention_ms", MAX_RETENTION_MS)?,
        })
    }
}

impl ReleaseRequest {
    /// Parses and validates a JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let obj = object(body)?;
        Ok(Self {
            key: hex64(&obj, "key")?,
            token: token(&obj)?,
        })
    }
}

impl RenewRequest {
    /// Parses and validates a JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let obj = object(body)?;
        Ok(Self {
            key: hex64(&obj, "key")?,
            token: token(&obj)?,
            lease_ms: millis(&obj, "lease_ms", MAX_LEASE_MS)?,
        })
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ProtocolError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ProtocolError("body: must be a JSON object".into())),
        Err(e) => Err(ProtocolError(format!("body: invalid JSON: {e}"))),
    }
}

fn string<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, ProtocolError> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(ProtocolError::field(name, "missing")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ProtocolError::field(name, "must be a string")),
    }
}

fn hex64(obj: &Map<String, Value>, name: &str) -> Result<Hex64, ProtocolError> {
    Hex64::parse(string(obj, name)?)
        .ok_or_else(|| ProtocolError::field(name, "must be 64 lowercase hex characters"))
}

fn token(obj: &Map<String, Value>) -> Result<String, ProtocolError> {
    let t = string(obj, "token")?;
    if t.is_empty() || t.len() > MAX_TOKEN_LEN {
        return Err(ProtocolError::field(
            "token",
            &format!("must be 1 to {MAX_TOKEN_LEN} characters"),
        ));
    }
    Ok(t.to_owned())
}

fn millis(obj: &Map<String, Value>, name: &str, max: u64) -> Result<u64, ProtocolError> {
    let bad = || ProtocolError::field(name, &format!("must be an integer from 1 to {max}"));
    match obj.get(name) {
        None | Some(Value::Null) => Err(ProtocolError::field(name, "missing")),
        Some(v) => v.as_u64().filter(|n| (1..=max).contains(n)).ok_or_else(bad),
    }
}

/// An optional duration: absent or null is 0, which means "not at all".
fn optional_millis(obj: &Map<String, Value>, name: &str, max: u64) -> Result<u64, ProtocolError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_u64().filter(|n| *n <= max).ok_or_else(|| {
            ProtocolError::field(name, &format!("must be an integer from 0 to {max}"))
        }),
    }
}

/// Answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ClaimResponse {
    Claimed { token: String },
    InFlight { retry_after_ms: u64 },
    Completed { record: String },
    Mismatch,
}

/// Answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LookupResponse {
    Absent,
    InFlight { retry_after_ms: u64 },
    Completed { record: String },
    Mismatch,
}

/// Answer to a complete, release or renew; `Stale` goes out with 409.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FencedResponse {
    Stored,
    Released,
    Renewed,
    Stale,
}

/// Encodes a record for the wire.
pub fn encode_record(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn claim_ok() {
        let body = format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5}}"#);
        let c = ClaimRequest::parse(body.as_bytes()).unwrap();
        assert_eq!(c.lease_ms, 5);
        assert_eq!(c.wait_ms, 0, "no wait unless asked");
        for (wait, expected) in [("null", 0), ("0", 0), ("60000", 60_000)] {
            let body =
                format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5,"wait_ms":{wait}}}"#);
            assert_eq!(
                ClaimRequest::parse(body.as_bytes()).unwrap().wait_ms,
                expected
            );
        }
    }

    #[test]
    fn renew_ok() {
        let body = format!(r#"{{"key":"{H}","token":"t","lease_ms":86400000}}"#);
        let r = RenewRequest::parse(body.as_bytes()).unwrap();
        assert_eq!((r.token.as_str(), r.lease_ms), ("t", 86_400_000));
    }

    #[test]
    fn errors_name_the_field() {
        let upper = H.to_uppercase();
        for (body, field) in [
            (format!(r#"{{"fingerprint":"{H}","lease_ms":5}}"#), "key"),
            (
                format!(r#"{{"key":"{upper}","fingerprint":"{H}","lease_ms":5}}"#),
                "key",
            ),
            (
                format!(r#"{{"key":"{H}","fingerprint":"ab","lease_ms":5}}"#),
                "fingerprint",
            ),
            (
                format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":0}}"#),
                "lease_ms",
            ),
            (
                format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":1.5}}"#),
                "lease_ms",
            ),
            (
                format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":"5"}}"#),
                "lease_ms",
            ),
            (
                format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5,"wait_ms":60001}}"#),
                "wait_ms",
            ),
            (
                format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5,"wait_ms":-1}}"#),
                "wait_ms",
            ),
            (
                format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5,"wait_ms":"9"}}"#),
                "wait_ms",
            ),
        ] {
            let e = ClaimRequest::parse(body.as_bytes()).unwrap_err();
            assert!(e.0.starts_with(field), "{body}: {e}");
        }
        let e = CompleteRequest::parse(
            format!(r#"{{"key":"{H}","token":"t","record":"@@","retention_ms":1}}"#).as_bytes(),
        )
        .unwrap_err();
        assert!(e.0.starts_with("record"));
        let e =
            ReleaseRequest::parse(format!(r#"{{"key":"{H}","token":""}}"#).as_bytes()).unwrap_err();
        assert!(e.0.starts_with("token"));
        for (body, field) in [
            (format!(r#"{{"key":"{H}","lease_ms":5}}"#), "token"),
            (format!(r#"{{"key":"{H}","token":"t"}}"#), "lease_ms"),
            (
                format!(r#"{{"key":"{H}","token":"t","lease_ms":0}}"#),
                "lease_ms",
            ),
            (r#"{"token":"t","lease_ms":5}"#.to_owned(), "key"),
        ] {
            let e = RenewRequest::parse(body.as_bytes()).unwrap_err();
            assert!(e.0.starts_with(field), "{body}: {e}");
        }
        assert!(ReleaseRequest::parse(b"[]")
            .unwrap_err()
            .0
            .starts_with("body"));
    }

    #[test]
    fn responses_serialize_as_documented() {
        let j = serde_json::to_string(&ClaimResponse::InFlight { retry_after_ms: 7 }).unwrap();
        assert_eq!(j, r#"{"outcome":"in_flight","retry_after_ms":7}"#);
        let j = serde_json::to_string(&FencedResponse::Stale).unwrap();
        assert_eq!(j, r#"{"outcome":"stale"}"#);
        let j = serde_json::to_string(&FencedResponse::Renewed).unwrap();
        assert_eq!(j, r#"{"outcome":"renewed"}"#);
    }
}
