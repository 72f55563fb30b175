//! Key-store writes that a stream could not finish itself: a record whose `complete` failed (the key
//! store or Redis was down), or a record or release left behind by a stream that ended (its
//! callouts' replies end with it). The plugin's root context sends these on a timer and retries
//! failures past the claim's lease: the key store keeps a claim whose lease ran out (abandoned)
//! for the route's retention and still accepts its holder's `complete` or `release`, so a late
//! answer wins over "outcome unknown". Retries stop on success, on `stale` (the token no longer
//! names the claim: taken over, or dropped), or at [`retry_until`].

use crate::host::Callout;
use crate::keystore_client::{self, AckReply};
use std::collections::HashMap;

/// The longest a write is retried past its claim's lease, whatever the route's retention: a key
/// store unreachable for that long is an outage, and the writes queued meanwhile hold memory.
pub const MAX_RETRY_PAST_LEASE_MS: u64 = 15 * 60 * 1000;

/// Until when a write for a claim with a lease of `lease_ms` and the route's `retention_ms` is
/// worth retrying, from `now_ms`: as long as the key store may keep the claim abandoned (its
/// lease, then the retention), up to [`MAX_RETRY_PAST_LEASE_MS`] past the lease.
pub fn retry_until(now_ms: u64, lease_ms: u64, retention_ms: u64) -> u64 {
    now_ms
        .saturating_add(lease_ms)
        .saturating_add(retention_ms.min(MAX_RETRY_PAST_LEASE_MS))
}

/// The first retry of a failed write waits this long; each further one twice as long as the one
/// before, up to [`MAX_RETRY_DELAY_MS`]: quick while a lease still runs, and a few calls a minute
/// per write, not ten a second, through a long key-store outage.
pub const FIRST_RETRY_DELAY_MS: u64 = 200;
pub const MAX_RETRY_DELAY_MS: u64 = 5_000;

/// How long a write waits after its `failures`-th failure.
pub fn retry_delay(failures: u32) -> u64 {
    FIRST_RETRY_DELAY_MS
        .saturating_mul(1u64 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY_MS)
}

/// One write to send, from when, and until when it is worth retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub callout: Callout,
    /// Not sent before this time (e.g. until a claim still on its way has surely landed).
    pub not_before_ms: u64,
    pub until_ms: u64,
    /// How many times the key store failed it so far (0 when handed over).
    pub failures: u32,
}

/// What became of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Stored or released, or refused as stale (a newer claim owns the key): nothing left to do.
    Done,
    /// Failed; queued again, after [`retry_delay`].
    Retrying(String),
    /// Failed until [`retry_until`]; the key store's own expiry takes over.
    GaveUp(String),
    /// Not a callout of ours.
    Unknown,
}

/// The root context's queue of deferred writes.
#[derive(Debug, Default)]
pub struct Retrier {
    queued: Vec<Deferred>,
    sent: HashMap<u32, Deferred>,
}

impl Retrier {
    pub fn push(&mut self, d: Deferred) {
        self.queued.push(d);
    }

    /// Everything to send on this tick; expired writes are dropped, early ones wait.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Deferred> {
        self.queued.retain(|d| now_ms < d.until_ms);
        let (due, early) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|d| d.not_before_ms <= now_ms);
        self.queued = early;
        due
    }

    /// Records that `d` went out as callout `token`.
    pub fn sent(&mut self, token: u32, d: Deferred) {
        self.sent.insert(token, d);
    }

    pub fn on_reply(
        &mut self,
        token: u32,
        status: Option<u16>,
        body: &[u8],
        now_ms: u64,
    ) -> Settled {
        let Some(d) = self.sent.remove(&token) else {
            return Settled::Unknown;
        };
        match keystore_client::parse_ack(status, body) {
            Ok(AckReply::Done | AckReply::Stale) => Settled::Done,
            Err(e) if now_ms < d.until_ms => {
                let failures = d.failures.saturating_add(1);
                self.queued.push(Deferred {
                    not_before_ms: now_ms.saturating_add(retry_delay(failures)),
                    failures,
                    ..d
                });
                Settled::Retrying(e)
            }
            Err(e) => Settled::GaveUp(e),
        }
    }

    /// Everything queued, due or not (the plugin is being unloaded: no later tick will come).
    pub fn take_all(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.queued)
    }

    pub fn pending(&self) -> usize {
        self.queued.len() + self.sent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deferred(until_ms: u64) -> Deferred {
        Deferred {
            callout: Callout {
                cluster: "ks".into(),
                headers: vec![],
                body: b"{}".to_vec(),
                timeout_ms: 100,
                forwarded: None,
            },
            not_before_ms: 0,
            until_ms,
            failures: 0,
        }
    }

    #[test]
    fn retries_back_off_up_to_a_cap() {
        let delays: Vec<u64> = (1..=7).map(retry_delay).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY_MS);
    }

    #[test]
    fn writes_are_retried_past_the_lease_for_the_retention_up_to_a_cap() {
        assert_eq!(retry_until(1_000, 2_000, 60_000), 63_000);
        assert_eq!(
            retry_until(0, 2_000, 86_400_000),
            2_000 + MAX_RETRY_PAST_LEASE_MS
        );
        assert_eq!(retry_until(u64::MAX - 1, 2_000, 1), u64::MAX);
    }

    #[test]
    fn retries_failures_until_the_lease_ends() {
        let mut r = Retrier::default();
        r.push(deferred(1_000));
        let due = r.take_due(0);
        assert_eq!(due.len(), 1);
        r.sent(7, due[0].clone());
        assert!(matches!(
            r.on_reply(7, Some(503), b"down", 10),
            Settled::Retrying(_)
        ));
        assert!(r.take_due(209).is_empty(), "after the first delay");
        let due = r.take_due(210);
        assert_eq!(due.len(), 1, "queued again");
        assert_eq!(due[0].failures, 1);
        r.sent(8, due[0].clone());
        assert!(matches!(
            r.on_reply(8, None, b"", 1_000),
            Settled::GaveUp(_)
        ));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn success_and_stale_are_final_and_expired_writes_are_dropped() {
        let mut r = Retrier::default();
        r.sent(1, deferred(100));
        assert_eq!(
            r.on_reply(1, Some(200), br#"{"outcome":"stored"}"#, 0),
            Settled::Done
        );
        r.sent(2, deferred(100));
        assert_eq!(
            r.on_reply(2, Some(409), br#"{"outcome":"stale"}"#, 0),
            Settled::Done
        );
        assert_eq!(r.on_reply(3, Some(200), b"", 0), Settled::Unknown);
        r.push(deferred(100));
        assert!(r.take_due(100).is_empty());
        assert_eq!(r.pending(), 0);
        r.push(Deferred {
            not_before_ms: 50,
            ..deferred(100)
        });
        assert!(r.take_due(49).is_empty(), "not yet");
        assert_eq!(r.take_due(50).len(), 1);
    }
}
