//! The claims one attempt of a key holds while it executes: in L1 and in the key store. One
//! struct, carried by an inline stream and by a detached execution alike; the root context renews
//! it ([`crate::background::leases`]) while the upstream works.

use crate::config::{Mode, RouteRule, WhileInFlight};
use crate::fingerprint::Fingerprint;
use crate::scope::RecordKey;

/// The claims this request holds while it executes.
#[derive(Debug, Clone)]
pub struct Claim {
    pub rule: RouteRule,
    pub key: RecordKey,
    pub fingerprint: Fingerprint,
    pub owner: u64,
    /// This request holds the L1 (shared data) claim.
    pub l1: bool,
    /// The fencing token this request asks the key store to claim with: known before the answer,
    /// so a stream that ends before the answer can still release what it may have claimed.
    pub proposed_token: String,
    /// The key store's fencing token, once it granted the claim.
    pub token: Option<String>,
}

impl Claim {
    /// How long the key store may hold this request's claim while the key is in flight (never in
    /// observe mode, which forwards every request untouched).
    pub fn wait_ms(&self) -> u64 {
        match (self.rule.in_flight, self.rule.mode) {
            (WhileInFlight::Wait, Mode::Enforce) => self.rule.max_wait_ms,
            _ => 0,
        }
    }
}
