//! The claims one attempt of a key holds while it executes: in L1 and in the key store. One
//! struct, carried by an inline stream and by a detached execution alike; the root context renews
//! it ([`crate::background::leases`]) while the upstream works.

use crate::config::{Mode, RouteRule, UnknownOutcome, WhileInFlight};
use crate::fingerprint::Fingerprint;
use crate::keystore_client::{AbandonedPolicy, ClaimTerms};
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

    /// What the key-store claim asks for, with a lease of `lease_ms`. An abandoned key (its holder
    /// let the lease run out without an answer) follows the route's `unknown_outcome`: `lock`
    /// has it reported, and answered as an unknown outcome; `release` takes it over and executes.
    pub fn terms(&self, lease_ms: u64) -> ClaimTerms {
        ClaimTerms {
            lease_ms,
            wait_ms: self.wait_ms(),
            abandoned: match self.rule.unknown_outcome {
                UnknownOutcome::Lock => AbandonedPolicy::Report,
                UnknownOutcome::Release => AbandonedPolicy::TakeOver,
            },
            retention_ms: self.rule.retention_ms,
        }
    }
}
