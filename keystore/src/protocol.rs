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
