//! The admin API (`/admin/v1`): what an operator's tool reads and clears under a record key. It is
//! served only with the key store's admin token, never with the filter's `/v1` token.

use crate::hex64::Hex64;
use serde::{Deserialize, Serialize};

/// What a record key holds, as `GET /admin/v1/records/{key}` reports it. The fencing token of a
/// claim is never shown: whoever reads it could complete or release the claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecordState {
    /// Nothing under the key.
    Absent,
    /// A claim holds the key.
    InFlight {
        fingerprint: Hex64,
        /// Time left on the claim's lease.
        lease_left_ms: u64,
    },
    /// A completed record, byte-exact (base64 in JSON), as the filter stored it.
    Completed {
        fingerprint: Hex64,
        #[serde(with = "crate::record_bytes")]
        record: Vec<u8>,
        /// When the record was stored (Unix ms, the key store's clock), when the backend knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stored_at_ms: Option<u64>,
        /// Retention left.
        expires_in_ms: u64,
    },
    /// The key still holds an entry whose lease or retention has ended: it counts as absent, and
    /// the backend drops it on its own.
    Expired {
        fingerprint: Hex64,
        /// What the entry was.
        was: EntryKind,
        expired_ms_ago: u64,
    },
}

/// The kind of an entry that has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    InFlight,
    Completed,
}

/// Answer to `DELETE /admin/v1/records/{key}`: what the key held when it was removed (`absent`:
/// there was nothing to remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeResponse {
    pub removed: RecordState,
}
