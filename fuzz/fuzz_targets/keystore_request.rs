//! The key store's request parsing (`idempotency_protocol::json::decode_request` of each request): every body
//! is a request or a 400 naming a field. What is accepted is what the README's API promises.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use idempotency_protocol::json::decode_request;
use idempotency_protocol::{
    ClaimRequest, CompleteRequest, LookupRequest, ReleaseRequest, RenewRequest, MAX_LEASE_MS, MAX_RETENTION_MS,
    MAX_TOKEN_LEN, MAX_WAIT_MS,
};
use libfuzzer_sys::fuzz_target;

fn hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    match decode_request::<ClaimRequest>(data) {
        Ok(c) => {
            assert!(hex64(c.key.as_str()) && hex64(c.fingerprint.as_str()));
            assert!((1..=MAX_LEASE_MS).contains(&c.lease_ms));
            assert!(c.wait_ms <= MAX_WAIT_MS);
        }
        Err(e) => assert!(!e.field.is_empty() && !e.problem.is_empty()),
    }
    match decode_request::<LookupRequest>(data) {
        Ok(l) => assert!(hex64(l.key.as_str()) && hex64(l.fingerprint.as_str())),
        Err(e) => assert!(!e.field.is_empty() && !e.problem.is_empty()),
    }
    match decode_request::<CompleteRequest>(data) {
        Ok(c) => {
            assert!(hex64(c.key.as_str()));
            assert!(!c.token.is_empty() && c.token.len() <= MAX_TOKEN_LEN);
            assert!((1..=MAX_RETENTION_MS).contains(&c.retention_ms));
            // The record is kept byte-exact: its base64 is the one canonical encoding that was sent.
            let v: serde_json::Value = serde_json::from_slice(data).unwrap();
            assert_eq!(v["record"].as_str(), Some(B64.encode(&c.record).as_str()));
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
});
