//! Caller scoping: the record key is a keyed hash of (route scope, caller, key), so keys never
//! collide across callers or routes and nothing raw (key, credential) leaves Envoy or reaches a log.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// The keyed hash under which a record is stored, in L1 and in the key store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey(pub [u8; 32]);

impl RecordKey {
    /// Derives the record key. `caller` is `None` for the anonymous scope, which is distinct from
    /// any caller value, including an empty one.
    pub fn derive(secret: &[u8], route_scope: &str, caller: Option<&[u8]>, key: &str) -> RecordKey {
        // HMAC accepts keys of any length, so this never fails; the fallback keeps clippy's no-panic rule.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return RecordKey([0; 32]);
        };
        mac.update(b"idempotency-record-v1");
        for part in [Some(route_scope.as_bytes()), caller, Some(key.as_bytes())] {
            match part {
                Some(bytes) => {
                    mac.update(&[1]);
                    mac.update(&(bytes.len() as u64).to_be_bytes());
                    mac.update(bytes);
                }
                None => mac.update(&[0]),
            }
        }
        RecordKey(mac.finalize().into_bytes().into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short prefix for log lines: enough to correlate, nothing to reverse.
    pub fn short(&self) -> String {
        hex::encode(self.0.get(..6).unwrap_or_default())
    }

    /// The L1 slot this key lives in.
    pub fn slot(&self, slots: u32) -> u32 {
        let mut first = [0u8; 8];
        first.copy_from_slice(self.0.get(..8).unwrap_or(&[0; 8]));
        (u64::from_be_bytes(first) % u64::from(slots.max(1))) as u32
    }
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordKey({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_by_caller_route_and_secret() {
        let base = RecordKey::derive(b"s", "exact:/p", Some(b"Bearer a"), "k");
        assert_eq!(
            base,
            RecordKey::derive(b"s", "exact:/p", Some(b"Bearer a"), "k")
        );
        assert_ne!(
            base,
            RecordKey::derive(b"s", "exact:/p", Some(b"Bearer b"), "k")
        );
        assert_ne!(
            base,
            RecordKey::derive(b"s", "exact:/q", Some(b"Bearer a"), "k")
        );
        assert_ne!(
            base,
            RecordKey::derive(b"t", "exact:/p", Some(b"Bearer a"), "k")
        );
        assert_ne!(base, RecordKey::derive(b"s", "exact:/p", None, "k"));
        assert_ne!(
            RecordKey::derive(b"s", "r", None, "k"),
            RecordKey::derive(b"s", "r", Some(b""), "k")
        );
    }

    #[test]
    fn hex_hides_the_inputs() {
        let k = RecordKey::derive(b"s", "r", Some(b"secret-token"), "my-key");
        let h = k.hex();
        assert_eq!(h.len(), 64);
        assert!(!h.contains("my-key"));
        assert!(k.slot(7) < 7);
    }
}
