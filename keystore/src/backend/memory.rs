//! In-process backend: one map under one lock, bounded in bytes and in entries.
//!
//! Every operation runs under the lock, so each is atomic. A record lives until its retention
//! ends; a claim until its lease ends plus its retention (abandoned in between, see
//! [`Backend`]); past that an entry counts as absent and is swept on the next operation. When a
//! write does not fit, completed records are evicted, the one closest to its expiry first; a
//! claim, live or abandoned, is never evicted. A claim (or a completion) that still does not fit is refused
//! with [`BackendError::Full`] (HTTP 503, so the filter's failure mode applies), and the claims
//! already held stay as they are.
//! Waiting claims are woken by a per-key `watch` channel that exists only while someone waits.

mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use self::store::{millis_left, millis_since, Entry, Limits, State, Store};
use super::{Backend, BackendError, ClaimOutcome, Fenced, KeyChange, LookupOutcome};
use crate::protocol::{
    abandoned_retention_ms, takes_over, token_or_new, ClaimRequest, CompleteRequest, Hex64,
    LookupRequest, RecordState, ReleaseRequest, RenewRequest,
};

/// The wall clock in Unix ms.
fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Keys someone waits on, each with the channel that wakes its waiters.
type Waiters = Mutex<HashMap<String, watch::Sender<()>>>;

/// One waiting claim's registration; dropping the last one of a key drops the key's channel, so
/// the map holds only keys that are waited on.
struct Waiter {
    waiters: Arc<Waiters>,
    key: String,
    rx: watch::Receiver<()>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        // Our own receiver still counts here.
        if map
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            map.remove(&self.key);
        }
    }
}

/// The embedded default backend: nothing else to run; records die with the process.
pub struct MemoryBackend {
    store: Mutex<Store>,
    limits: Limits,
    waiters: Arc<Waiters>,
}

impl MemoryBackend {
    /// A store of at most `max_bytes` bytes (keys, fingerprints, tokens, records and bookkeeping)
    /// in at most `max_entries` keys.
    pub fn new(max_bytes: u64, max_entries: u64) -> Self {
        Self {
            store: Mutex::default(),
            limits: Limits {
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                max_entries: usize::try_from(max_entries).unwrap_or(usize::MAX),
            },
            waiters: Arc::default(),
        }
    }

    /// Wakes the claims waiting on `key` (after a completion or a release).
    fn wake(&self, key: &Hex64) {
        let map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(key.as_str()) {
            tx.send_replace(());
        }
    }

    /// How many keys have a waiter (for tests: the map must not outgrow the waits).
    pub fn waited_keys(&self) -> usize {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Bytes and entries held now (expired ones included until the next operation sweeps them).
    pub fn usage(&self) -> (usize, usize) {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        (store.bytes, store.map.len())
    }

    /// Runs `f` on the store, after the expiry sweep, under the lock.
    fn with<T>(&self, f: impl FnOnce(&mut Store, Instant) -> T) -> T {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        store.sweep(now);
        f(&mut store, now)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, BackendError> {
        self.with(|store, now| {
            match store.kept(req.key.as_str(), now) {
                Some(e) if e.until <= now && !e.is_completed() && takes_over(req) => {}
                Some(e) if e.fingerprint != req.fingerprint => return Ok(ClaimOutcome::Mismatch),
                Some(Entry {
                    state: State::Completed { record, .. },
                    ..
                }) => {
                    return Ok(ClaimOutcome::Completed {
                        record: record.to_vec(),
                    })
                }
                Some(Entry { until, .. }) if *until > now => {
                    return Ok(ClaimOutcome::InFlight {
                        retry_after_ms: millis_left(*until, now),
                    })
                }
                Some(Entry { until, .. }) => {
                    return Ok(ClaimOutcome::Abandoned {
                        lease_ended_ms_ago: millis_since(*until, now),
                    })
                }
                None => {}
            }
            let token = token_or_new(req);
            let entry = Entry::claim(
                req.fingerprint.clone(),
                token.clone(),
                now + Duration::from_millis(req.lease_ms),
                Duration::from_millis(abandoned_retention_ms(req)),
            );
            store.put(req.key.as_str(), entry, &self.limits)?;
            Ok(ClaimOutcome::Claimed { token })
        })
    }

    async fn lookup(&self, req: &LookupRequest) -> Result<LookupOutcome, BackendError> {
        Ok(
            self.with(|store, now| match store.kept(req.key.as_str(), now) {
                None => LookupOutcome::Absent,
                Some(e) if e.fingerprint != req.fingerprint => LookupOutcome::Mismatch,
                Some(Entry {
                    state: State::Completed { record, .. },
                    ..
                }) => LookupOutcome::Completed {
                    record: record.to_vec(),
                },
                Some(Entry { until, .. }) if *until > now => LookupOutcome::InFlight {
                    retry_after_ms: millis_left(*until, now),
                },
                Some(Entry { until, .. }) => LookupOutcome::Abandoned {
                    lease_ended_ms_ago: millis_since(*until, now),
                },
            }),
        )
    }

    /// Accepted while the token names the claim, its lease live or ended (a late answer wins).
    async fn complete(&self, req: &CompleteRequest) -> Result<Fenced, BackendError> {
        let result = self.with(|store, now| -> Result<Fenced, BackendError> {
            match store.kept(req.key.as_str(), now) {
                Some(e) if e.is_claim_of(&req.token) => {
                    let entry = Entry::completed(
                        e.fingerprint.clone(),
                        Arc::from(req.record.as_slice()),
                        unix_ms(),
                        now + Duration::from_millis(req.retention_ms),
                    );
                    store.put(req.key.as_str(), entry, &self.limits)?;
                    Ok(Fenced::Done)
                }
                _ => Ok(Fenced::Stale),
            }
        })?;
        if result == Fenced::Done {
            self.wake(&req.key);
        }
        Ok(result)
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Fenced, BackendError> {
        let result = self.with(|store, now| match store.kept(req.key.as_str(), now) {
            Some(e) if e.is_claim_of(&req.token) => {
                store.remove(req.key.as_str());
                Fenced::Done
            }
            _ => Fenced::Stale,
        });
        if result == Fenced::Done {
            self.wake(&req.key);
        }
        Ok(result)
    }

    /// Also revives an abandoned claim: its holder was slow, not gone.
    async fn renew(&self, req: &RenewRequest) -> Result<Fenced, BackendError> {
        self.with(|store, now| match store.kept(req.key.as_str(), now) {
            Some(Entry {
                fingerprint,
                state: State::InFlight { token, retention },
                ..
            }) if *token == req.token => {
                let entry = Entry::claim(
                    fingerprint.clone(),
                    token.clone(),
                    now + Duration::from_millis(req.lease_ms),
                    *retention,
                );
                // Same size as before: a renewal always fits.
                store.put(req.key.as_str(), entry, &self.limits)?;
                Ok(Fenced::Done)
            }
            _ => Ok(Fenced::Stale),
        })
    }

    /// Registers on the key's channel (made on first use): a completion or release wakes it at
    /// once. A lease that runs out wakes nobody; the caller's wait is bounded by the lease left.
    fn watch(&self, key: &Hex64, _round: u32) -> KeyChange {
        let rx = {
            let mut map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            map.entry(key.as_str().to_owned())
                .or_insert_with(|| watch::channel(()).0)
                .subscribe()
        };
        let mut waiter = Waiter {
            waiters: Arc::clone(&self.waiters),
            key: key.as_str().to_owned(),
            rx,
        };
        Box::pin(async move {
            // The map keeps the sender while we wait, so an error cannot happen; should it, wait
            // for the caller's bound rather than spin.
            if waiter.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }

    /// Reads without the expiry sweep, so an entry past its deadline is reported as expired.
    async fn inspect(&self, key: &Hex64) -> Result<RecordState, BackendError> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        Ok(store
            .map
            .get(key.as_str())
            .map_or(RecordState::Absent, |e| e.view(now)))
    }

    async fn purge(&self, key: &Hex64) -> Result<RecordState, BackendError> {
        let removed = {
            let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            store
                .remove(key.as_str())
                .map_or(RecordState::Absent, |e| e.view(now))
        };
        // Claims waiting on the key read again: it is free now.
        if removed != RecordState::Absent {
            self.wake(key);
        }
        Ok(removed)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
