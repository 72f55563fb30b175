//! In-process backend: one map under one lock, bounded in bytes and in entries.
//!
//! Every operation runs under the lock, so each is atomic. Entries expire at their own deadline
//! (lease or retention): an expired one counts as absent and is swept on the next operation. When a
//! write does not fit, completed records are evicted, the one closest to its expiry first; an
//! in-flight claim is never evicted. A claim (or a completion) that still does not fit is refused
//! with [`BackendError::Full`] (HTTP 503, so the filter's failure mode applies), and the claims
//! already held stay as they are.
//! Waiting claims are woken by a per-key `watch` channel that exists only while someone waits.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Backend, BackendError, ClaimOutcome, Fenced, KeyChange, LookupOutcome};
use crate::protocol::{
    token_or_new, ClaimRequest, CompleteRequest, Hex64, LookupRequest, ReleaseRequest, RenewRequest,
};

/// Bytes an entry costs besides its key, fingerprint, token and record: the map's and the indexes'
/// bookkeeping, counted so that many tiny entries are bounded too.
const ENTRY_OVERHEAD: usize = 160;

/// One stored key.
#[derive(Debug, Clone)]
struct Entry {
    fingerprint: Hex64,
    state: State,
    /// End of the lease (in flight) or of the retention (completed).
    until: Instant,
    /// Insertion order, to tell apart entries with the same deadline.
    seq: u64,
}

#[derive(Debug, Clone)]
enum State {
    InFlight { token: String },
    Completed { record: Arc<[u8]> },
}

impl Entry {
    fn size(&self, key: &str) -> usize {
        let payload = match &self.state {
            State::InFlight { token } => token.len(),
            State::Completed { record } => record.len(),
        };
        key.len() + self.fingerprint.as_str().len() + payload + ENTRY_OVERHEAD
    }

    fn is_completed(&self) -> bool {
        matches!(self.state, State::Completed { .. })
    }
}

/// The map and its indexes.
#[derive(Default)]
struct Store {
    map: HashMap<String, Entry>,
    /// Every entry by deadline: the expiry sweep.
    by_until: BTreeSet<(Instant, u64, String)>,
    /// Completed entries by deadline: the eviction order.
    completed: BTreeSet<(Instant, u64, String)>,
    bytes: usize,
    seq: u64,
}

/// What a write that may not fit asks for.
struct Limits {
    max_bytes: usize,
    max_entries: usize,
}

impl Store {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.map.remove(key)?;
        let index = (e.until, e.seq, key.to_owned());
        self.by_until.remove(&index);
        if e.is_completed() {
            self.completed.remove(&index);
        }
        self.bytes = self.bytes.saturating_sub(e.size(key));
        Some(e)
    }

    /// Drops every entry whose deadline has passed.
    fn sweep(&mut self, now: Instant) {
        while let Some((until, _, key)) = self.by_until.first().cloned() {
            if until > now {
                break;
            }
            self.remove(&key);
        }
    }

    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.until > now)
    }

    /// Stores `entry` for `key` in place of the current one, evicting completed records of other
    /// keys (closest to expiry first) to make room. `Err(Full)` leaves everything as it was.
    fn put(&mut self, key: &str, mut entry: Entry, limits: &Limits) -> Result<(), BackendError> {
        self.seq = self.seq.wrapping_add(1);
        entry.seq = self.seq;
        let size = entry.size(key);
        let replaced = self.map.get(key).map_or(0, |e| e.size(key));
        let entries_after = self.map.len() + usize::from(!self.map.contains_key(key));
        // Plan the evictions first, so that a write that cannot fit changes nothing.
        let mut victims = Vec::new();
        let mut freed = 0usize;
        let mut iter = self.completed.iter();
        while !(self.bytes - replaced - freed + size <= limits.max_bytes
            && entries_after - victims.len() <= limits.max_entries)
        {
            match iter.next() {
                Some((_, _, k)) if k == key => continue,
                Some((_, _, k)) => {
                    freed += self.map.get(k).map_or(0, |e| e.size(k));
                    victims.push(k.clone());
                }
                None => {
                    return Err(BackendError::Full(format!(
                        "the memory store holds {} bytes in {} entries (bounds {} bytes, {} entries) and no completed record is left to evict",
                        self.bytes,
                        self.map.len(),
                        limits.max_bytes,
                        limits.max_entries
                    )))
                }
            }
        }
        for k in &victims {
            self.remove(k);
        }
        self.remove(key);
        let index = (entry.until, entry.seq, key.to_owned());
        self.by_until.insert(index.clone());
        if entry.is_completed() {
            self.completed.insert(index);
        }
        self.bytes += size;
        self.map.insert(key.to_owned(), entry);
        Ok(())
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

/// Milliseconds left until `until`, rounded up so a live lease never reports 0.
fn millis_left(until: Instant, now: Instant) -> u64 {
    let left = until.saturating_duration_since(now);
    let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, BackendError> {
        self.with(|store, now| match store.live(req.key.as_str(), now) {
            Some(e) if e.fingerprint != req.fingerprint => Ok(ClaimOutcome::Mismatch),
            Some(Entry {
                state: State::Completed { record },
                ..
            }) => Ok(ClaimOutcome::Completed {
                record: record.to_vec(),
            }),
            Some(Entry {
                state: State::InFlight { .. },
                until,
                ..
            }) => Ok(ClaimOutcome::InFlight {
                retry_after_ms: millis_left(*until, now),
            }),
            None => {
                let token = token_or_new(req);
                let entry = Entry {
                    fingerprint: req.fingerprint.clone(),
                    state: State::InFlight {
                        token: token.clone(),
                    },
                    until: now + Duration::from_millis(req.lease_ms),
                    seq: 0,
                };
                store.put(req.key.as_str(), entry, &self.limits)?;
                Ok(ClaimOutcome::Claimed { token })
            }
        })
    }

    async fn lookup(&self, req: &LookupRequest) -> Result<LookupOutcome, BackendError> {
        Ok(
            self.with(|store, now| match store.live(req.key.as_str(), now) {
                None => LookupOutcome::Absent,
                Some(e) if e.fingerprint != req.fingerprint => LookupOutcome::Mismatch,
                Some(Entry {
                    state: State::Completed { record },
                    ..
                }) => LookupOutcome::Completed {
                    record: record.to_vec(),
                },
                Some(Entry { until, .. }) => LookupOutcome::InFlight {
                    retry_after_ms: millis_left(*until, now),
                },
            }),
        )
    }

    async fn complete(&self, req: &CompleteRequest) -> Result<Fenced, BackendError> {
        let result = self.with(|store, now| -> Result<Fenced, BackendError> {
            match store.live(req.key.as_str(), now) {
                Some(Entry {
                    fingerprint,
                    state: State::InFlight { token },
                    ..
                }) if *token == req.token => {
                    let entry = Entry {
                        fingerprint: fingerprint.clone(),
                        state: State::Completed {
                            record: Arc::from(req.record.as_slice()),
                        },
                        until: now + Duration::from_millis(req.retention_ms),
                        seq: 0,
                    };
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
        let result = self.with(|store, now| match store.live(req.key.as_str(), now) {
            Some(Entry {
                state: State::InFlight { token },
                ..
            }) if *token == req.token => {
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

    async fn renew(&self, req: &RenewRequest) -> Result<Fenced, BackendError> {
        self.with(|store, now| match store.live(req.key.as_str(), now) {
            Some(Entry {
                fingerprint,
                state: State::InFlight { token },
                ..
            }) if *token == req.token => {
                let entry = Entry {
                    fingerprint: fingerprint.clone(),
                    state: State::InFlight {
                        token: token.clone(),
                    },
                    until: now + Duration::from_millis(req.lease_ms),
                    seq: 0,
                };
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

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(n: u64) -> Hex64 {
        Hex64::parse(&format!("{n:064x}")).unwrap()
    }

    fn claim(key: u64) -> ClaimRequest {
        ClaimRequest {
            key: hex(key),
            fingerprint: hex(0),
            lease_ms: 60_000,
            wait_ms: 0,
            token: Some(format!("t{key}")),
        }
    }

    fn complete(key: u64, bytes: usize) -> CompleteRequest {
        CompleteRequest {
            key: hex(key),
            token: format!("t{key}"),
            record: vec![7; bytes],
            retention_ms: 60_000,
        }
    }

    #[tokio::test]
    async fn full_of_claims_refuses_new_ones_and_keeps_every_claim() {
        // Room for about ten claims.
        let m = MemoryBackend::new(10 * 300, 1_000);
        let mut held = Vec::new();
        for k in 1..=100 {
            match m.claim(&claim(k)).await {
                Ok(ClaimOutcome::Claimed { .. }) => held.push(k),
                Err(BackendError::Full(_)) => break,
                other => panic!("{other:?}"),
            }
        }
        assert!((5..=15).contains(&held.len()), "{held:?}");
        let (bytes, _) = m.usage();
        assert!(bytes <= 3000, "{bytes}");
        assert!(matches!(
            m.claim(&claim(1_000)).await,
            Err(BackendError::Full(_))
        ));
        // Every claim held before is still there, and still fenced by its token.
        for k in &held {
            assert!(
                matches!(m.claim(&claim(*k)).await, Ok(ClaimOutcome::InFlight { .. })),
                "claim {k} lost"
            );
        }
        // A completion that does not fit is refused and leaves the claim in place.
        assert!(matches!(
            m.complete(&complete(held[0], 10_000)).await,
            Err(BackendError::Full(_))
        ));
        assert!(matches!(
            m.claim(&claim(held[0])).await,
            Ok(ClaimOutcome::InFlight { .. })
        ));
        // Releasing makes room again.
        assert_eq!(
            m.release(&ReleaseRequest {
                key: hex(held[0]),
                token: format!("t{}", held[0]),
            })
            .await
            .unwrap(),
            Fenced::Done
        );
        assert!(matches!(
            m.claim(&claim(1_000)).await,
            Ok(ClaimOutcome::Claimed { .. })
        ));
    }

    #[tokio::test]
    async fn completed_records_are_evicted_closest_to_expiry_first_never_claims() {
        let m = MemoryBackend::new(20_000, 1_000);
        // Two claims in flight, then records of 1 KiB each until the bound is passed several times.
        for k in [900, 901] {
            m.claim(&claim(k)).await.unwrap();
        }
        for k in 1..=60u64 {
            assert!(matches!(
                m.claim(&claim(k)).await.unwrap(),
                ClaimOutcome::Claimed { .. }
            ));
            let mut c = complete(k, 1024);
            c.retention_ms = 60_000 + k;
            assert_eq!(m.complete(&c).await.unwrap(), Fenced::Done);
            let (bytes, _) = m.usage();
            assert!(bytes <= 20_000, "{bytes} bytes after record {k}");
        }
        for k in [900, 901] {
            assert!(matches!(
                m.claim(&claim(k)).await.unwrap(),
                ClaimOutcome::InFlight { .. }
            ));
        }
        // The newest records (latest expiry) are kept, the oldest were evicted.
        assert!(matches!(
            m.claim(&claim(60)).await.unwrap(),
            ClaimOutcome::Completed { .. }
        ));
        assert!(matches!(
            m.claim(&claim(1)).await.unwrap(),
            ClaimOutcome::Claimed { .. }
        ));
    }

    #[tokio::test]
    async fn expired_entries_are_swept_and_free_their_bytes() {
        let m = MemoryBackend::new(1_000_000, 1_000);
        let mut c = claim(1);
        c.lease_ms = 1;
        m.claim(&c).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        m.claim(&claim(2)).await.unwrap();
        let (_, entries) = m.usage();
        assert_eq!(entries, 1, "the expired claim was swept");
    }
}
