//! What a claim or a lookup found for a key: one answer, whether L1 (shared data) or the key
//! store gave it, so the stream and the root context read both the same way.

use crate::record::Record;

/// What a claim or lookup found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// This request now holds the claim. `token`: the key store's fencing token; L1 fences by
    /// owner and gives none.
    Claimed { token: Option<String> },
    /// Nothing is stored or held under the key (a lookup claims nothing).
    Absent,
    /// Another request holds the key; `retry_after_ms`: when the answer can change (for L1, the
    /// time left on that request's lease).
    InFlight { retry_after_ms: u64 },
    /// A completed record (for L1, already checked to carry the same fingerprint).
    Completed(Record),
    /// The key is held or completed with another fingerprint.
    Mismatch,
    /// The key store holds a claim whose lease ran out `lease_ended_ms_ago` without an answer:
    /// its holder may have forwarded the request and died, so its outcome is unknown, and the key
    /// answers as a stored unknown-outcome record would (only the key store reports it).
    Abandoned { lease_ended_ms_ago: u64 },
}
