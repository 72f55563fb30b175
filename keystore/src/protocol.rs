//! The wire protocol of API v1 (the `idempotency_protocol` crate, shared with the filter), and
//! what only the server side needs on top of it.

pub use idempotency_protocol::*;

/// The token a granted claim gets: the one the caller proposed, else a new one.
pub fn token_or_new(req: &ClaimRequest) -> String {
    req.token.clone().unwrap_or_else(new_token)
}

/// A fresh fencing token: 128 random bits as 32 lowercase hex characters.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether a claim takes an abandoned key over (the at-least-once policy).
pub fn takes_over(req: &ClaimRequest) -> bool {
    req.abandoned == Some(AbandonedPolicy::TakeOver)
}

/// How long an abandoned claim made by `req` is kept after its lease ended.
pub fn abandoned_retention_ms(req: &ClaimRequest) -> u64 {
    req.retention_ms.unwrap_or(DEFAULT_ABANDONED_RETENTION_MS)
}
