//! The bounds the key store enforces on requests.

/// Longest accepted lease: one day. A longer lease would lock a key long after any sane route timeout.
pub const MAX_LEASE_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest accepted retention: one year.
pub const MAX_RETENTION_MS: u64 = 365 * 24 * 60 * 60 * 1000;
/// Longest accepted fencing token; the filter's are 32 characters, the bound only stops abuse.
pub const MAX_TOKEN_LEN: usize = 256;
/// Longest a claim may wait for an in-flight key: a minute, past any sane route timeout, and short
/// enough that a waiting request does not pin a connection for long.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Most renewals in one `renew-batch`: a filter with more claims due sends several batches. The
/// bound keeps one call's backend work (and its body, ~60 bytes a renewal in compact) small.
pub const MAX_RENEW_BATCH: usize = 256;
