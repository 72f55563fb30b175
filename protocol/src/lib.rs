//! The key-store API v1 (README, "Key-store API"), written once for both of its ends: the filter
//! that sends requests and reads replies, and the key store that does the reverse.
//!
//! Modules: [`batch`] (several calls of any kind in one request, group commit), [`limits`] (the bounds the key store enforces), [`bounded`] (lists whose bound is
//! checked while they are read), [`error`] (a malformed message, naming
//! its field), [`hex64`] (keys and fingerprints), [`request`] (the requests, validated),
//! [`wire`] (their serde shape before validation), [`response`] (the replies and the error body),
//! [`record_bytes`] (how a record's bytes are written), [`json`] (the JSON body format),
//! [`compact`] (the compact binary one), [`body`] (which of the two a body is in), [`admin`] (the
//! operator's view of a record key, and its purge).
//!
//! The types are encoding-neutral: they hold decoded values (bytes, not base64; numbers, not
//! text), and a body format is a module that maps bytes to and from them, validating on the way
//! in with [`Request::from_wire`].

pub mod admin;
pub mod batch;
pub mod body;
pub mod bounded;
pub mod compact;
pub mod error;
pub mod hex64;
pub mod json;
pub mod limits;
pub mod record_bytes;
pub mod request;
pub mod response;
pub mod wire;

pub use admin::{EntryKind, PurgeResponse, RecordState};
pub use batch::{BatchAnswer, BatchEntry, BatchRequest, BatchResponse};
pub use body::Format;
pub use compact::Compact;
pub use error::ProtocolError;
pub use hex64::Hex64;
pub use limits::{
    ABANDONED_RETRY_AFTER_MS, DEFAULT_ABANDONED_RETENTION_MS, MAX_BATCH_ENTRIES, MAX_LEASE_MS,
    MAX_RENEW_BATCH, MAX_RETENTION_MS, MAX_TOKEN_LEN, MAX_WAIT_MS,
};
pub use request::{
    AbandonedPolicy, ClaimRequest, CompleteRequest, LookupRequest, ReleaseRequest,
    RenewBatchRequest, RenewRequest, Request,
};
pub use response::{
    ClaimAnswer, ClaimResponse, ErrorBody, FencedResponse, LookupResponse, RenewBatchResponse,
    RenewOutcome,
};
