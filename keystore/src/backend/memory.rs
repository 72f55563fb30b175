//! In-process backend: a bounded `moka` cache whose entries expire at their own deadline.
//!
//! Atomicity comes from `and_compute_with`, which runs the closures for one key one at a time.
//! Waiting claims are woken by a per-key `watch` channel that exists only while someone waits.

use std::collections::HashMap;
use std::future::ready;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::Expiry;
use tokio::sync::watch;

use super::{Backend, BackendError, ClaimOutcome, Fenced, KeyChange};
use crate::protocol::{ClaimRequest, CompleteRequest, Hex64, ReleaseRequest, RenewRequest};

/// One stored key.
#[derive(Debug, Clone)]
struct Entry {
    fingerprint: Hex64,
    state: State,
    /// End of the lease (in flight) or of the retention (completed).
    until: Instant,
}

#[derive(Debug, Clone)]
enum State {
    InFlight {
        token: String,
    },
    /// `Arc` because moka clones values on every read.
    Completed {
        record: Arc<[u8]>,
    },
}

/// Tells moka to drop each entry at its own `until` (lease or retention).
struct UntilExpiry;

impl Expiry<String, Entry> for UntilExpiry {
    fn expire_after_create(&self, _: &String, v: &Entry, created_at: Instant) -> Option<Duration> {
        Some(v.until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Entry,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.until.saturating_duration_since(updated_at))
    }
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
    cache: Cache<String, Entry>,
    waiters: Arc<Waiters>,
}

impl MemoryBackend {
    /// A store holding at most `max_entries` keys (beyond, moka evicts the least useful ones).
    pub fn new(max_entries: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(UntilExpiry)
            .build();
        Self {
            cache,
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

    /// Runs `decide` on the live entry of `key` (an expired one counts as absent) atomically and
    /// applies the change it asks for.
    async fn compute<T>(
        &self,
        key: &Hex64,
        decide: impl FnOnce(Option<Entry>, Instant) -> (Op<Entry>, T),
    ) -> Result<T, BackendError> {
        let mut answer = None;
        self.cache
            .entry_by_ref(key.as_str())
            .and_compute_with(|current| {
                let now = Instant::now();
                let live = current.map(|e| e.into_value()).filter(|e| e.until > now);
                let (op, out) = decide(live, now);
                answer = Some(out);
                ready(op)
            })
            .await;
        answer.ok_or_else(|| BackendError::Protocol("memory compute did not run".into()))
    }
}

/// Milliseconds left until `until`, rounded up so a live lease never reports 0.
fn millis_left(until: Instant, now: Instant) -> u64 {
    let left = until.saturating_duration_since(now);
    let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, BackendError> {
        self.compute(&req.key, |live, now| match live {
            Some(e) if e.fingerprint != req.fingerprint => (Op::Nop, ClaimOutcome::Mismatch),
            Some(Entry {
                state: State::Completed { record },
                ..
            }) => (
                Op::Nop,
                ClaimOutcome::Completed {
                    record: record.to_vec(),
                },
            ),
            Some(Entry {
                state: State::InFlight { .. },
                until,
                ..
            }) => (
                Op::Nop,
                ClaimOutcome::InFlight {
                    retry_after_ms: millis_left(until, now),
                },
            ),
            None => {
                let token = req.token_or_new();
                let entry = Entry {
                    fingerprint: req.fingerprint.clone(),
                    state: State::InFlight {
                        token: token.clone(),
                    },
                    until: now + Duration::from_millis(req.lease_ms),
                };
                (Op::Put(entry), ClaimOutcome::Claimed { token })
            }
        })
        .await
    }

    async fn complete(&self, req: &CompleteRequest) -> Result<Fenced, BackendError> {
        let result = self
            .compute(&req.key, |live, now| match live {
                Some(Entry {
                    fingerprint,
                    state: State::InFlight { token },
                    ..
                }) if token == req.token => {
                    let entry = Entry {
                        fingerprint,
                        state: State::Completed {
                            record: Arc::from(req.record.as_slice()),
                        },
                        until: now + Duration::from_millis(req.retention_ms),
                    };
                    (Op::Put(entry), Fenced::Done)
                }
                _ => (Op::Nop, Fenced::Stale),
            })
            .await?;
        if result == Fenced::Done {
            self.wake(&req.key);
        }
        Ok(result)
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Fenced, BackendError> {
        let result = self
            .compute(&req.key, |live, _| match live {
                Some(Entry {
                    state: State::InFlight { token },
                    ..
                }) if token == req.token => (Op::Remove, Fenced::Done),
                _ => (Op::Nop, Fenced::Stale),
            })
            .await?;
        if result == Fenced::Done {
            self.wake(&req.key);
        }
        Ok(result)
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Fenced, BackendError> {
        self.compute(&req.key, |live, now| match live {
            Some(Entry {
                fingerprint,
                state: State::InFlight { token },
                ..
            }) if token == req.token => {
                let entry = Entry {
                    fingerprint,
                    state: State::InFlight { token },
                    until: now + Duration::from_millis(req.lease_ms),
                };
                (Op::Put(entry), Fenced::Done)
            }
            _ => (Op::Nop, Fenced::Stale),
        })
        .await
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

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
