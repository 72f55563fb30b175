//! Claims held by this worker's streams while their upstream works. The root context renews each
//! one (in L1 and in the key store) before its lease runs out, so a slow upstream never loses its
//! lock to a takeover; an Envoy that dies stops renewing, and its claims expire.

use crate::claim::Claim;
use crate::scope::RecordKey;
use std::collections::HashMap;

/// One claim a stream holds while its request executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldClaim {
    pub key: RecordKey,
    pub owner: u64,
    /// The claim is held in L1 too.
    pub l1: bool,
    /// The key store's fencing token, when the key store granted the claim.
    pub token: Option<String>,
    /// When the lease was taken or last renewed.
    pub renewed_ms: u64,
}

impl HeldClaim {
    /// The part of `claim` the root context renews, as of `now_ms`.
    pub fn of(claim: &Claim, now_ms: u64) -> HeldClaim {
        HeldClaim {
            key: claim.key,
            owner: claim.owner,
            l1: claim.l1,
            token: claim.token.clone(),
            renewed_ms: now_ms,
        }
    }
}

/// The claims of one worker, by owner.
#[derive(Debug, Default)]
pub struct Leases {
    held: HashMap<u64, HeldClaim>,
}

impl Leases {
    pub fn hold(&mut self, claim: HeldClaim) {
        self.held.insert(claim.owner, claim);
    }

    /// The stream no longer waits on its upstream: stop renewing.
    pub fn drop_claim(&mut self, owner: u64) {
        self.held.remove(&owner);
    }

    /// The claims whose lease is a third gone, marked renewed now. Renewing at a third leaves two
    /// more chances before the lease ends if a renewal fails.
    pub fn due(&mut self, now_ms: u64, lease_ms: u64) -> Vec<HeldClaim> {
        let period = (lease_ms / 3).max(1);
        self.held
            .values_mut()
            .filter(|c| now_ms.saturating_sub(c.renewed_ms) >= period)
            .map(|c| {
                c.renewed_ms = now_ms;
                c.clone()
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(owner: u64, at: u64) -> HeldClaim {
        HeldClaim {
            key: RecordKey([owner as u8; 32]),
            owner,
            l1: true,
            token: None,
            renewed_ms: at,
        }
    }

    #[test]
    fn claims_are_due_every_third_of_the_lease_until_dropped() {
        let mut l = Leases::default();
        l.hold(claim(1, 0));
        l.hold(claim(2, 500));
        assert!(l.due(999, 3000).is_empty());
        let due = l.due(1000, 3000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].owner, 1);
        assert!(l.due(1100, 3000).is_empty(), "renewed at 1000");
        assert_eq!(l.due(1500, 3000).len(), 1);
        l.drop_claim(1);
        l.drop_claim(2);
        assert!(l.is_empty());
        assert!(l.due(10_000, 3000).is_empty());
    }
}
