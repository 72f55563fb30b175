//! The memory backend's map: entries with their deadlines, the expiry sweep, and the byte and
//! entry bounds that evict completed records to make room. Kept apart from the backend's
//! operations so that the accounting is read (and checked) in one place.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::BackendError;
use crate::protocol::{EntryKind, Hex64, RecordState};

/// What an entry really costs the process, so that `--max-bytes` bounds resident memory and not
/// just the payload (counting key, fingerprint, token and a flat 160 bytes, a 64 MiB bound let RSS
/// grow by 100 MB). Measured against RSS in the key store's hostile tests; see
/// docs/hardening.md for how close it tracks.
mod cost {
    use std::mem::size_of;
    use std::time::Instant;

    use super::Entry;

    /// A heap allocation of `n` bytes as the allocator hands it out: rounded up to its size
    /// class (8-byte steps up to 64 bytes, then eight classes per power of two, as mimalloc's).
    pub(super) fn heap(n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let step = (n.next_power_of_two() / 8).max(8);
        n.div_ceil(step) * step
    }

    /// A slot of the map: the key's `String` and the `Entry`, plus hashbrown's control byte. The
    /// table is at most 7/8 full and grows by doubling, so it holds up to twice the slots in use
    /// (counted in full: after a growth every page of the new table is touched).
    pub(super) const MAP_SLOT: usize = 2 * (size_of::<(String, Entry)>() + 1);

    /// `bytes` with a quarter more for what the allocator holds beside them: pages of a size class
    /// only partly in use and the per-thread caches of the server's workers. Filled bounds measured
    /// 100% to 139% of the exact count in RSS on a loaded machine; counted this way the store stays
    /// under its bound (docs/hardening.md).
    pub(super) fn with_fragmentation(bytes: usize) -> usize {
        bytes.saturating_add(bytes / 4)
    }

    /// An index element (deadline, sequence, key) in a B-tree, whose nodes are 2/3 full on
    /// average: half again for the room left in them, plus the node headers.
    pub(super) const INDEX_SLOT: usize = size_of::<(Instant, u64, String)>() * 3 / 2 + 8;
}

/// One stored key.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) fingerprint: Hex64,
    pub(super) state: State,
    /// End of the lease (in flight) or of the retention (completed).
    pub(super) until: Instant,
    /// When the entry is dropped: `until` for a record; for a claim, the lease's end plus the
    /// claim's retention (it is abandoned in between, and still counts in the bounds).
    pub(super) drop_at: Instant,
    /// Insertion order, to tell apart entries with the same deadline.
    pub(super) seq: u64,
}

#[derive(Debug, Clone)]
pub(super) enum State {
    InFlight {
        token: String,
        /// How long the claim is kept once its lease ran out.
        retention: Duration,
    },
    Completed {
        record: Arc<[u8]>,
        /// When it was stored, Unix ms (what an operator is shown).
        stored_at_ms: u64,
    },
}

impl Entry {
    /// A claim with this token whose lease ends at `until`.
    pub(super) fn claim(
        fingerprint: Hex64,
        token: String,
        until: Instant,
        retention: Duration,
    ) -> Self {
        Self {
            fingerprint,
            state: State::InFlight { token, retention },
            until,
            drop_at: until + retention,
            seq: 0,
        }
    }

    /// A completed record kept until `until`.
    pub(super) fn completed(
        fingerprint: Hex64,
        record: Arc<[u8]>,
        stored_at_ms: u64,
        until: Instant,
    ) -> Self {
        Self {
            fingerprint,
            state: State::Completed {
                record,
                stored_at_ms,
            },
            until,
            drop_at: until,
            seq: 0,
        }
    }

    /// The claim's token, if the entry is a claim (live or abandoned) held with `token`.
    pub(super) fn is_claim_of(&self, token: &str) -> bool {
        matches!(&self.state, State::InFlight { token: t, .. } if t == token)
    }

    /// The bytes this entry holds, bookkeeping included ([`cost`]): the same at insertion and
    /// removal, as it depends only on the entry.
    pub(super) fn size(&self, key: &str) -> usize {
        let (payload, indexes) = match &self.state {
            State::InFlight { token, .. } => (cost::heap(token.len()), 1),
            // An `Arc<[u8]>` carries its two counts before the bytes.
            State::Completed { record, .. } => (cost::heap(record.len() + 16), 2),
        };
        let key_copy = cost::heap(key.len());
        let exact = cost::MAP_SLOT
            + key_copy
            + cost::heap(self.fingerprint.as_str().len())
            + payload
            + indexes * (cost::INDEX_SLOT + key_copy);
        cost::with_fragmentation(exact)
    }

    pub(super) fn is_completed(&self) -> bool {
        matches!(self.state, State::Completed { .. })
    }

    /// The entry as an operator sees it at `now`.
    pub(super) fn view(&self, now: Instant) -> RecordState {
        let fingerprint = self.fingerprint.clone();
        if self.until <= now {
            let was = if self.is_completed() {
                EntryKind::Completed
            } else {
                EntryKind::InFlight
            };
            return RecordState::Expired {
                fingerprint,
                was,
                expired_ms_ago: millis_since(self.until, now),
            };
        }
        match &self.state {
            State::InFlight { .. } => RecordState::InFlight {
                fingerprint,
                lease_left_ms: millis_left(self.until, now),
            },
            State::Completed {
                record,
                stored_at_ms,
            } => RecordState::Completed {
                fingerprint,
                record: record.to_vec(),
                stored_at_ms: Some(*stored_at_ms),
                expires_in_ms: millis_left(self.until, now),
            },
        }
    }
}

/// The map and its indexes.
#[derive(Default)]
pub(super) struct Store {
    pub(super) map: HashMap<String, Entry>,
    /// Every entry by the time it is dropped: the expiry sweep.
    pub(super) by_until: BTreeSet<(Instant, u64, String)>,
    /// Completed entries by deadline: the eviction order (claims, abandoned ones included, are
    /// never evicted: dropping one would let its request run a second time).
    pub(super) completed: BTreeSet<(Instant, u64, String)>,
    pub(super) bytes: usize,
    pub(super) seq: u64,
}

/// What a write that may not fit asks for.
pub(super) struct Limits {
    pub(super) max_bytes: usize,
    pub(super) max_entries: usize,
}

impl Store {
    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.map.remove(key)?;
        let index = (e.drop_at, e.seq, key.to_owned());
        self.by_until.remove(&index);
        if e.is_completed() {
            self.completed.remove(&index);
        }
        self.bytes = self.bytes.saturating_sub(e.size(key));
        Some(e)
    }

    /// Drops every entry whose time has come (a record past its retention, a claim past its lease
    /// and its retention).
    pub(super) fn sweep(&mut self, now: Instant) {
        while let Some((until, _, key)) = self.by_until.first().cloned() {
            if until > now {
                break;
            }
            self.remove(&key);
        }
    }

    /// The entry under `key`, if it is not yet to be dropped: a live claim, an abandoned one (its
    /// `until` passed) or a record.
    pub(super) fn kept(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.drop_at > now)
    }

    /// Stores `entry` for `key` in place of the current one, evicting completed records of other
    /// keys (closest to expiry first) to make room. `Err(Full)` leaves everything as it was.
    pub(super) fn put(
        &mut self,
        key: &str,
        mut entry: Entry,
        limits: &Limits,
    ) -> Result<(), BackendError> {
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
        let index = (entry.drop_at, entry.seq, key.to_owned());
        self.by_until.insert(index.clone());
        if entry.is_completed() {
            self.completed.insert(index);
        }
        self.bytes += size;
        self.map.insert(key.to_owned(), entry);
        Ok(())
    }
}

/// Milliseconds left until `until`, rounded up so a live lease never reports 0.
pub(super) fn millis_left(until: Instant, now: Instant) -> u64 {
    let left = until.saturating_duration_since(now);
    let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Milliseconds since `then` (0 when it has not come yet).
pub(super) fn millis_since(then: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(then).as_millis()).unwrap_or(u64::MAX)
}
