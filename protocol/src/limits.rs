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
/// How long a claim whose lease ran out without an answer (an abandoned claim) is kept when its
/// claim named no `retention_ms`: a day, the filter's default retention. Its outcome is unknown,
/// so the key stays taken for as long as a completed record would have replayed.
pub const DEFAULT_ABANDONED_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// The `retry_after_ms` of the `in_flight` answer a caller that does not understand `abandoned`
/// gets for an abandoned key: nothing will free the key soon, so a second is as good as any.
pub const ABANDONED_RETRY_AFTER_MS: u64 = 1000;
/// Most entries in one `batch` (README, "Key-store API"): a filter with more calls pending sends
/// several batches. A batch body is also bounded by the key store's `--max-body-bytes`, which its
/// completes' records count toward; the count bounds the backend work of one call, and is checked
/// before any entry is read.
pub const MAX_BATCH_ENTRIES: usize = 256;
