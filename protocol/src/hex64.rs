//! Keys and fingerprints: keyed SHA-256 digests made by the filter, so that only hashes leave Envoy.

use serde::{Deserialize, Serialize};

/// A key or fingerprint: 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hex64(String);

impl Hex64 {
    /// Validates `s`; `None` unless it is exactly 64 lowercase hex characters.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(s.to_owned()))
    }

    /// The hex of a 32-byte digest.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
