//! Caller scoping: the record key is a keyed hash of (route scope, caller, key), so keys never
//! collide across callers or routes and nothing raw (key, credential) leaves Envoy or reaches a log.
//! The caller is the source it came from (a header, a property) with its value, or a named
//! anonymous scope: the same bytes from two sources, or a caller and an anonymous scope of the
//! same name, are never one caller.

use hmac::Mac;
use std::fmt;

/// The keyed hash under which a record is stored, in L1 and in the key store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey(pub [u8; 32]);

/// Who a request is scoped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A value from one of the configured sources; `source` is its label (`header:authorization`).
    Source { source: &'a str, value: &'a [u8] },
    /// No source named the caller, and the configuration names this anonymous scope.
    Anonymous { scope: &'a str },
}

impl RecordKey {
    /// Derives the record key under `secret`.
    pub fn derive(secret: &[u8], route_scope: &str, caller: &Caller, key: &str) -> RecordKey {
        // HMAC accepts keys of any length, so this never fails; the fallback keeps clippy's no-panic rule.
        let Some(mut mac) = crate::mac::keyed(secret) else {
            return RecordKey([0; 32]);
        };
        mac.update(b"idempotency-record-v2");
        let (kind, source, value): (u8, &[u8], &[u8]) = match caller {
            Caller::Source { source, value } => (1, source.as_bytes(), value),
            Caller::Anonymous { scope } => (0, b"", scope.as_bytes()),
        };
        mac.update(&[kind]);
        for part in [route_scope.as_bytes(), source, value, key.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
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

    fn who(value: &[u8]) -> Caller<'_> {
        Caller::Source {
            source: "header:authorization",
            value,
        }
    }

    #[test]
    fn scoped_by_caller_source_route_and_secret() {
        let base = RecordKey::derive(b"s", "exact:/p", &who(b"Bearer a"), "k");
        assert_eq!(
            base,
            RecordKey::derive(b"s", "exact:/p", &who(b"Bearer a"), "k")
        );
        assert_ne!(
            base,
            RecordKey::derive(b"s", "exact:/p", &who(b"Bearer b"), "k")
        );
        assert_ne!(
            base,
            RecordKey::derive(b"s", "exact:/q", &who(b"Bearer a"), "k")
        );
        assert_ne!(
            base,
            RecordKey::derive(b"t", "exact:/p", &who(b"Bearer a"), "k")
        );
        let other_source = Caller::Source {
            source: r#"property:["connection","uri_san_peer_certificate"]"#,
            value: b"Bearer a",
        };
        assert_ne!(
            base,
            RecordKey::derive(b"s", "exact:/p", &other_source, "k")
        );
        let anonymous = Caller::Anonymous { scope: "Bearer a" };
        assert_ne!(base, RecordKey::derive(b"s", "exact:/p", &anonymous, "k"));
        assert_ne!(
            RecordKey::derive(b"s", "r", &Caller::Anonymous { scope: "a" }, "k"),
            RecordKey::derive(b"s", "r", &Caller::Anonymous { scope: "b" }, "k")
        );
    }

    #[test]
    fn hex_hides_the_inputs() {
        let k = RecordKey::derive(b"s", "r", &who(b"secret-token"), "my-key");
        let h = k.hex();
        assert_eq!(h.len(), 64);
        assert!(!h.contains("my-key"));
        assert!(k.slot(7) < 7);
    }
}
