//! L1, the near cache in Envoy shared data. Envoy never frees a shared-data key, so the key space is
//! a fixed set of slots, created once at start; each slot holds a small bucket of entries, and every
//! change is a CAS on an existing key (a CAS on a missing key is not checked by Envoy).
//!
//! Memory bound: `slots × slot_budget` bytes of values, plus one small in-flight entry per request
//! being executed. Completed entries are evicted, oldest first, to keep a bucket in its budget;
//! in-flight claims are never evicted (they are what stops duplicates on this Envoy).

use crate::fingerprint::Fingerprint;
use crate::found::Found;
use crate::host::{SharedData, SharedSetError};
use crate::record::Record;
use crate::scope::RecordKey;
use bucket::{decode_bucket, encode_bucket, is_owner, Entry, State};
use std::borrow::Cow;

const SLOT_PREFIX: &str = "idempotency.v1.slot";
/// How often a CAS that lost a race is retried before giving up on L1 for this request.
const CAS_ATTEMPTS: usize = 16;
/// Completed records kept per slot. Every L1 operation copies its slot in and out of shared data,
/// so a slot stays small: capacity is `l1_slots × 8` records, and the byte budget bounds memory.
pub const RECORDS_PER_SLOT: usize = 8;
/// The near cache. `slot_budget` bounds the bytes one slot's bucket may hold.
pub struct NearCache {
    pub slots: u32,
    pub slot_budget: usize,
}

fn slot_key(slot: u32) -> String {
    format!("{SLOT_PREFIX}.{slot}")
}

impl NearCache {
    /// Creates the slot keys that do not exist yet. Run at start on every worker: a slot another
    /// worker already created (and maybe filled) is left alone.
    pub fn ensure_slots(&self, shared: &dyn SharedData) -> Result<(), SharedSetError> {
        for slot in 0..self.slots {
            let key = slot_key(slot);
            if let (_, None) = shared.shared_get(&key) {
                shared.shared_set(&key, &[], None)?;
            }
        }
        Ok(())
    }

    /// The state of `key`'s live entry in its slot, if it has one (an expired entry is none).
    fn live_state(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        now_ms: u64,
    ) -> Option<State<'static>> {
        let (value, _) = shared.shared_get(&slot_key(key.slot(self.slots)));
        decode_bucket(value.as_deref())
            .into_iter()
            .find(|e| e.key == key.0 && e.is_live(now_ms))
            .map(|e| e.state.into_owned())
    }

    /// Reads what L1 holds for `key`, without claiming it: `None` when the key is free. Used by
    /// duplicates that wait locally, and to look for a key stored under a previous secret.
    pub fn peek(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> Option<Found> {
        match self.live_state(shared, key, now_ms)? {
            State::InFlight { fingerprint: f, .. } if &f != fingerprint => Some(Found::Mismatch),
            State::InFlight { lease_until_ms, .. } => Some(Found::InFlight {
                retry_after_ms: lease_until_ms.saturating_sub(now_ms),
            }),
            State::Completed { record, .. } => match Record::decode(&record) {
                Ok(r) if &r.fingerprint != fingerprint => Some(Found::Mismatch),
                Ok(r) => Some(Found::Completed(r)),
                // A record that no longer decodes answers nothing: the caller goes on as if the
                // key were free here.
                Err(_) => None,
            },
        }
    }

    /// The completed record L1 holds for `key`, whatever its fingerprint: what the replay
    /// listener answers with (the outer filter checked the fingerprint before it routed the
    /// replay). `None` when the key holds no live completed record (evicted, expired, in flight).
    pub fn completed(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        now_ms: u64,
    ) -> Option<Record> {
        match self.live_state(shared, key, now_ms)? {
            State::Completed { record, .. } => Record::decode(&record).ok(),
            State::InFlight { .. } => None,
        }
    }

    /// Reads the slot for `key` and, if nobody holds or completed the key, claims it for `owner`.
    pub fn lookup_or_claim(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        owner: u64,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Found, String> {
        let entry = Entry {
            key: key.0,
            written_ms: now_ms,
            state: State::InFlight {
                fingerprint: *fingerprint,
                lease_until_ms: now_ms + lease_ms,
                owner,
            },
        };
        let mut found = None;
        let result = self.update(shared, key, now_ms, |bucket| {
            found = None;
            if let Some(existing) = bucket.iter().find(|e| e.key == key.0 && e.is_live(now_ms)) {
                found = Some(match &existing.state {
                    State::InFlight { fingerprint: f, .. } if f != fingerprint => Found::Mismatch,
                    State::InFlight { lease_until_ms, .. } => Found::InFlight {
                        retry_after_ms: lease_until_ms.saturating_sub(now_ms),
                    },
                    State::Completed { record, .. } => match Record::decode(record) {
                        Ok(r) if &r.fingerprint != fingerprint => Found::Mismatch,
                        Ok(r) => Found::Completed(r),
                        // A record that no longer decodes is dropped and the key claimed anew.
                        Err(_) => {
                            bucket.retain(|e| e.key != key.0);
                            bucket.push(entry.clone());
                            return true;
                        }
                    },
                });
                return false;
            }
            bucket.retain(|e| e.key != key.0);
            bucket.push(entry.clone());
            true
        });
        match (result, found) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(found)) => Ok(found),
            (Ok(()), None) => Ok(Found::Claimed { token: None }),
        }
    }

    /// Turns `owner`'s claim into a completed record (or caches a record read from the key store
    /// when `owner` holds the claim). Returns false when the claim is no longer `owner`'s.
    ///
    /// A claim whose lease ran out is dropped by the next write to its slot, even for another key,
    /// so whether it is still there is luck. The owner completes unless another request holds a
    /// live claim or record for the key: the request did execute, and dropping its record would
    /// let a retry sent after the client got its answer execute again. A newer live result is
    /// never overwritten.
    pub fn complete(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        owner: u64,
        record: &Record,
        now_ms: u64,
    ) -> Result<bool, String> {
        let encoded = record.encode();
        let mut owned = false;
        self.update(shared, key, now_ms, |bucket| {
            owned = bucket
                .iter()
                .all(|e| e.key != key.0 || is_owner(e, owner) || !e.is_live(now_ms));
            if !owned {
                return false;
            }
            bucket.retain(|e| e.key != key.0);
            bucket.push(Entry {
                key: key.0,
                written_ms: now_ms,
                state: State::Completed {
                    expires_ms: record.expires_ms,
                    record: Cow::Owned(encoded.clone()),
                },
            });
            true
        })?;
        Ok(owned)
    }

    /// Drops `owner`'s claim so that a retry executes again.
    pub fn release(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        owner: u64,
        now_ms: u64,
    ) -> Result<bool, String> {
        let mut owned = false;
        self.update(shared, key, now_ms, |bucket| {
            let before = bucket.len();
            bucket.retain(|e| !(e.key == key.0 && is_owner(e, owner)));
            owned = bucket.len() != before;
            owned
        })?;
        Ok(owned)
    }

    /// Extends `owner`'s claim to `now_ms + lease_ms`, while its upstream is still working.
    /// Returns false when the claim is no longer `owner`'s (completed, released, taken over).
    pub fn renew(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        owner: u64,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, String> {
        let mut owned = false;
        self.update(shared, key, now_ms, |bucket| {
            owned = false;
            for e in bucket.iter_mut().filter(|e| e.key == key.0) {
                if let State::InFlight {
                    owner: o,
                    lease_until_ms,
                    ..
                } = &mut e.state
                {
                    if *o == owner && now_ms < *lease_until_ms {
                        *lease_until_ms = now_ms + lease_ms;
                        owned = true;
                    }
                }
            }
            owned
        })?;
        Ok(owned)
    }

    /// Read-modify-CAS loop on the key's slot. `change` edits the bucket and says whether to write.
    /// Expired entries are dropped and the bucket is trimmed to its budget before each write.
    fn update(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        now_ms: u64,
        mut change: impl FnMut(&mut Vec<Entry<'_>>) -> bool,
    ) -> Result<(), String> {
        let slot = slot_key(key.slot(self.slots));
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = shared.shared_get(&slot);
            let Some(cas) = cas else {
                return Err(format!("slot {slot} does not exist"));
            };
            let mut bucket = decode_bucket(value.as_deref());
            if !change(&mut bucket) {
                return Ok(());
            }
            bucket.retain(|e| e.is_live(now_ms));
            self.trim(&mut bucket, key);
            match shared.shared_set(&slot, &encode_bucket(&bucket), Some(cas)) {
                Ok(()) => return Ok(()),
                Err(SharedSetError::CasMismatch) => continue,
                Err(SharedSetError::Failed(e)) => return Err(e),
            }
        }
        Err(format!(
            "slot {slot} stayed contended for {CAS_ATTEMPTS} attempts"
        ))
    }

    /// Evicts the oldest completed entries (never `keep`'s, never a claim) until the bucket fits
    /// its byte budget and holds at most [`RECORDS_PER_SLOT`] records.
    fn trim(&self, bucket: &mut Vec<Entry<'_>>, keep: &RecordKey) {
        let mut total: usize = bucket.iter().map(Entry::size).sum();
        let completed = |b: &[Entry]| {
            b.iter()
                .filter(|e| matches!(e.state, State::Completed { .. }))
                .count()
        };
        while total > self.slot_budget || completed(bucket) > RECORDS_PER_SLOT {
            let victim = bucket
                .iter()
                .enumerate()
                .filter(|(_, e)| e.key != keep.0 && matches!(e.state, State::Completed { .. }))
                .min_by_key(|(_, e)| e.written_ms)
                .map(|(i, _)| i);
            let Some(i) = victim else { break };
            total -= bucket.get(i).map_or(0, Entry::size);
            bucket.remove(i);
        }
    }
}

mod bucket;
#[cfg(test)]
mod tests;
