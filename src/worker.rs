//! What the streams of one Envoy worker share with its root context: the config, the near cache,
//! the key-store writes that must outlive their stream, and the claims to renew. The root context
//! drives [`Worker::on_tick`] and [`Worker::on_reply`]; every decision here is plain Rust.

use crate::config::Config;
use crate::deferred::{Deferred, Retrier, Settled};
use crate::host::{Callout, SharedData};
use crate::keystore_client::{self, AckReply};
use crate::l1::NearCache;
use crate::leases::Leases;
use crate::metrics::Metric;
use crate::scope::RecordKey;
use log::{debug, warn};
use std::cell::RefCell;
use std::collections::HashMap;

pub struct Worker {
    pub cfg: Config,
    pub cache: NearCache,
    /// Writes handed over by streams (records, releases), sent and retried by the root context.
    pub writes: RefCell<Retrier>,
    pub leases: RefCell<Leases>,
    /// Renewal callouts in flight, by callout token.
    renewals: RefCell<HashMap<u32, RecordKey>>,
}

/// Why the root context sends a callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    Write(Deferred),
    Renewal(RecordKey),
}

/// What a reply to one of the root context's callouts meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootReply {
    Write(Settled),
    Renewed,
    /// The key store no longer knows the claim as ours: it was taken over (or expired).
    RenewalRefused(RecordKey),
    RenewalFailed(String),
    Unknown,
}

impl Worker {
    pub fn new(cfg: Config, cache: NearCache) -> Worker {
        Worker {
            cfg,
            cache,
            writes: RefCell::new(Retrier::default()),
            leases: RefCell::new(Leases::default()),
            renewals: RefCell::new(HashMap::new()),
        }
    }

    /// Hands a key-store write to the root context (sent on its next tick, retried on failure).
    pub fn defer(&self, write: Deferred) {
        self.writes.borrow_mut().push(write);
    }

    /// Renews due leases in L1 at once, and returns every callout to send now: deferred writes
    /// and key-store renewals.
    pub fn on_tick(&self, shared: &dyn SharedData, now_ms: u64) -> Vec<(Callout, Purpose)> {
        let mut out: Vec<(Callout, Purpose)> = self
            .writes
            .borrow_mut()
            .take_due(now_ms)
            .into_iter()
            .map(|d| (d.callout.clone(), Purpose::Write(d)))
            .collect();
        let lease_ms = self.cfg.lock_lease_ms;
        for claim in self.leases.borrow_mut().due(now_ms, lease_ms) {
            if claim.l1 {
                match self
                    .cache
                    .renew(shared, &claim.key, claim.owner, now_ms, lease_ms)
                {
                    Ok(true) => {}
                    Ok(false) => warn!(
                        "key {}: near-cache claim not renewed: no longer ours",
                        claim.key.short()
                    ),
                    Err(e) => warn!("key {}: near-cache renewal failed: {e}", claim.key.short()),
                }
            }
            if let (Some(ks), Some(token)) = (&self.cfg.keystore, &claim.token) {
                let callout = keystore_client::renew(ks, &claim.key, token, lease_ms);
                out.push((callout, Purpose::Renewal(claim.key)));
            }
        }
        out
    }

    /// Records that the root context sent `purpose` as callout `token`.
    pub fn sent(&self, token: u32, purpose: Purpose) {
        match purpose {
            Purpose::Write(d) => self.writes.borrow_mut().sent(token, d),
            Purpose::Renewal(key) => {
                self.renewals.borrow_mut().insert(token, key);
            }
        }
    }

    /// A callout the root context sent could not go out.
    pub fn not_sent(&self, purpose: Purpose, why: &str) {
        match purpose {
            // Queued again: the next tick tries once more, until the write's deadline.
            Purpose::Write(d) => self.writes.borrow_mut().push(d),
            Purpose::Renewal(key) => warn!("key {}: renewal not sent: {why}", key.short()),
        }
    }

    pub fn on_reply(&self, token: u32, status: Option<u16>, body: &[u8], now_ms: u64) -> RootReply {
        if let Some(key) = self.renewals.borrow_mut().remove(&token) {
            return match keystore_client::parse_ack(status, body) {
                Ok(AckReply::Done) => {
                    debug!("key {}: lease renewed", key.short());
                    RootReply::Renewed
                }
                Ok(AckReply::Stale) => RootReply::RenewalRefused(key),
                Err(e) => RootReply::RenewalFailed(e),
            };
        }
        match self
            .writes
            .borrow_mut()
            .on_reply(token, status, body, now_ms)
        {
            Settled::Unknown => RootReply::Unknown,
            settled => RootReply::Write(settled),
        }
    }

    /// The metric a root reply counts, if any.
    pub fn metric_for(reply: &RootReply) -> Option<Metric> {
        match reply {
            RootReply::RenewalRefused(_) => Some(Metric::RenewalRefused),
            RootReply::RenewalFailed(_) | RootReply::Write(Settled::GaveUp(_)) => {
                Some(Metric::StoreError)
            }
            _ => None,
        }
    }
}
