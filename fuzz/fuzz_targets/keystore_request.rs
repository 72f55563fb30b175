//! The key store's request parsing (every request, a renew-batch included), in both body formats
//! (`json::decode_request` and `Compact::from_compact` of each request, and
//! `body::decode_request`, which picks one by the first byte): every body is a request or a 400
//! naming a field, the abandoned-claim fields (`abandoned`, a claim's `retention_ms`, and their
//! compact extension after the first layout) included. What is accepted is what the README's API
//! promises, and an accepted compact request writes back to the same request.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use idempotency_protocol::json::decode_request;
use idempotency_protocol::{
    body, AbandonedPolicy, ClaimRequest, Compact, CompleteRequest, LookupRequest, ProtocolError, ReleaseRequest, RenewBatchRequest,
    RenewRequest, Request, MAX_LEASE_MS, MAX_RENEW_BATCH, MAX_RETENTION_MS, MAX_TOKEN_LEN, MAX_WAIT_MS,
};
use std::fmt::Debug;

/// Decodes `data` as a compact `R` (directly and by sniffing); an accepted one is checked by
/// `valid` and must survive a write and a read; a refused one names its field.
fn compact<R: Request + Compact + PartialEq + Debug>(data: &[u8], valid: impl Fn(&R) -> bool) {
    let direct = R::from_compact(data);
    match &direct {
        Ok(r) => {
            assert!(valid(r), "{r:?}");
            assert_eq!(R::from_compact(&r.to_compact()).as_ref(), Ok(r));
        }
        Err(e) => named(e),
    }
    if data.first() == Some(&idempotency_protocol::compact::MARKER) {
        assert_eq!(body::decode_request::<R>(data), direct);
    } else if let Err(e) = body::decode_request::<R>(data) {
        named(&e);
    }
}

fn named(e: &ProtocolError) {
    assert!(!e.field.is_empty() && !e.problem.is_empty());
}
use libfuzzer_sys::fuzz_target;

fn hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A body's `abandoned` field, read as the decoder reads a body: every other field is skipped
/// without checking its UTF-8 or its numbers' range (a `serde_json::Value` would refuse both).
#[derive(serde::Deserialize)]
struct PolicyField {
    #[serde(default)]
    abandoned: Option<String>,
}

/// A complete's `record` field, read the same way.
#[derive(serde::Deserialize)]
struct RecordField {
    record: String,
}

/// The `abandoned` policy a JSON body names: absent or null is none, else its name.
fn json_policy(data: &[u8]) -> Option<AbandonedPolicy> {
    let field: PolicyField = serde_json::from_slice(data).unwrap();
    field.abandoned.map(|name| AbandonedPolicy::parse(&name).unwrap())
}

fn valid_claim(c: &ClaimRequest) -> bool {
    hex64(c.key.as_str())
        && hex64(c.fingerprint.as_str())
        && (1..=MAX_LEASE_MS).contains(&c.lease_ms)
        && c.wait_ms <= MAX_WAIT_MS
        && c.token.as_ref().map_or(true, |t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
        && c.retention_ms.map_or(true, |n| (1..=MAX_RETENTION_MS).contains(&n))
}

fn valid_renew(r: &RenewRequest) -> bool {
    hex64(r.key.as_str()) && !r.token.is_empty() && r.token.len() <= MAX_TOKEN_LEN && (1..=MAX_LEASE_MS).contains(&r.lease_ms)
}

fn valid_batch(b: &RenewBatchRequest) -> bool {
    (1..=MAX_RENEW_BATCH).contains(&b.renewals.len()) && b.renewals.iter().all(valid_renew)
}

fuzz_target!(|data: &[u8]| {
    match decode_request::<ClaimRequest>(data) {
        Ok(c) => {
            assert!(valid_claim(&c), "{c:?}");
            // The policy accepted is the one named, and only "report" or "take_over" is one.
            assert_eq!(c.abandoned, json_policy(data));
        }
        Err(e) => assert!(!e.field.is_empty() && !e.problem.is_empty()),
    }
    match decode_request::<LookupRequest>(data) {
        Ok(l) => {
            assert!(hex64(l.key.as_str()) && hex64(l.fingerprint.as_str()));
            assert_eq!(l.abandoned, json_policy(data));
        }
        Err(e) => assert!(!e.field.is_empty() && !e.problem.is_empty()),
    }
    match decode_request::<CompleteRequest>(data) {
        Ok(c) => {
            assert!(hex64(c.key.as_str()));
            assert!(!c.token.is_empty() && c.token.len() <= MAX_TOKEN_LEN);
            assert!((1..=MAX_RETENTION_MS).contains(&c.retention_ms));
            // The record is kept byte-exact: its base64 is the one canonical encoding that was sent.
            let field: RecordField = serde_json::from_slice(data).unwrap();
            assert_eq!(field.record, B64.encode(&c.record));
        }
        Err(e) => assert!(!e.field.is_empty() && !e.problem.is_empty()),
    }
    match decode_request::<ReleaseRequest>(data) {
        Ok(r) => {
            assert!(hex64(r.key.as_str()));
            assert!(!r.token.is_empty() && r.token.len() <= MAX_TOKEN_LEN);
        }
        Err(e) => assert!(!e.field.is_empty() && !e.problem.is_empty()),
    }
    match decode_request::<RenewRequest>(data) {
        Ok(r) => {
            assert!(hex64(r.key.as_str()));
            assert!(!r.token.is_empty() && r.token.len() <= MAX_TOKEN_LEN);
            assert!((1..=MAX_LEASE_MS).contains(&r.lease_ms));
        }
        Err(e) => assert!(!e.field.is_empty() && !e.problem.is_empty()),
    }
    match decode_request::<RenewBatchRequest>(data) {
        Ok(b) => assert!(valid_batch(&b), "{b:?}"),
        Err(e) => named(&e),
    }
    compact::<RenewBatchRequest>(data, valid_batch);
    compact::<ClaimRequest>(data, valid_claim);
    compact::<LookupRequest>(data, |l| hex64(l.key.as_str()) && hex64(l.fingerprint.as_str()));
    compact::<CompleteRequest>(data, |c| {
        hex64(c.key.as_str())
            && !c.token.is_empty()
            && c.token.len() <= MAX_TOKEN_LEN
            && (1..=MAX_RETENTION_MS).contains(&c.retention_ms)
    });
    compact::<ReleaseRequest>(data, |r| hex64(r.key.as_str()) && !r.token.is_empty() && r.token.len() <= MAX_TOKEN_LEN);
    compact::<RenewRequest>(data, valid_renew);
});
