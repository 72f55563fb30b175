use super::bucket::ENTRY_BYTES;
use super::*;
use crate::testing::FakeShared;
use serde::{Deserialize, Serialize};

fn rk(n: u8) -> RecordKey {
    RecordKey([n; 32])
}

fn record(fp: Fingerprint, body: usize) -> Record {
    Record {
        fingerprint: fp,
        created_ms: 0,
        expires_ms: 10_000,
        outcome: crate::record::Outcome::Replayable(crate::record::StoredResponse {
            status: 201,
            headers: vec![],
            body: vec![1; body],
            ..Default::default()
        }),
    }
}

fn cache(slots: u32) -> (NearCache, FakeShared) {
    let shared = FakeShared::default();
    let c = NearCache {
        slots,
        slot_budget: 4096,
    };
    c.ensure_slots(&shared).unwrap();
    (c, shared)
}

/// Claims and completes `rk(n)` for each `n` in `keys`, as owner `n` at time `n`, with a record
/// of `body` bytes.
fn complete_each(
    c: &NearCache,
    s: &FakeShared,
    keys: std::ops::Range<u8>,
    fp: Fingerprint,
    body: usize,
) {
    for n in keys {
        assert_eq!(
            c.lookup_or_claim(s, &rk(n), &fp, u64::from(n), u64::from(n), 1000),
            Ok(Found::Claimed { token: None })
        );
        assert_eq!(
            c.complete(s, &rk(n), u64::from(n), &record(fp, body), u64::from(n)),
            Ok(true)
        );
    }
}

#[test]
fn renewal_keeps_a_slow_claim_and_only_its_owner_renews() {
    let (c, s) = cache(4);
    let fp = [1; 32];
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 7, 0, 1000),
        Ok(Found::Claimed { token: None })
    );
    assert_eq!(
        c.renew(&s, &rk(1), 8, 600, 1000),
        Ok(false),
        "not the owner"
    );
    assert_eq!(c.renew(&s, &rk(1), 7, 600, 1000), Ok(true));
    // Past the first lease, the claim still holds.
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 9, 1500, 1000),
        Ok(Found::InFlight {
            retry_after_ms: 100
        })
    );
    // Once the lease ran out, renewing is too late: another request may own the key.
    assert_eq!(c.renew(&s, &rk(1), 7, 1700, 1000), Ok(false));
}

#[test]
fn claim_then_conflict_then_complete_then_replay() {
    let (c, s) = cache(4);
    let fp = [1; 32];
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 7, 0, 1000),
        Ok(Found::Claimed { token: None })
    );
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 8, 10, 1000),
        Ok(Found::InFlight {
            retry_after_ms: 990
        })
    );
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &[2; 32], 8, 10, 1000),
        Ok(Found::Mismatch)
    );
    assert_eq!(
        c.complete(&s, &rk(1), 8, &record(fp, 3), 20),
        Ok(false),
        "not the owner"
    );
    assert_eq!(c.complete(&s, &rk(1), 7, &record(fp, 3), 20), Ok(true));
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 9, 30, 1000),
        Ok(Found::Completed(record(fp, 3)))
    );
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &[2; 32], 9, 30, 1000),
        Ok(Found::Mismatch)
    );
    // After retention the key is new again.
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 9, 10_000, 1000),
        Ok(Found::Claimed { token: None })
    );
}

#[test]
fn release_and_lease_expiry_free_the_key() {
    let (c, s) = cache(1);
    let fp = [1; 32];
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 7, 0, 100),
        Ok(Found::Claimed { token: None })
    );
    assert_eq!(c.release(&s, &rk(1), 8, 1), Ok(false));
    assert_eq!(c.release(&s, &rk(1), 7, 1), Ok(true));
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 8, 2, 100),
        Ok(Found::Claimed { token: None })
    );
    // The lease runs out: another request takes the key over; the stale owner cannot complete.
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 9, 200, 100),
        Ok(Found::Claimed { token: None })
    );
    assert_eq!(c.complete(&s, &rk(1), 8, &record(fp, 1), 201), Ok(false));
    assert_eq!(c.complete(&s, &rk(1), 9, &record(fp, 1), 201), Ok(true));
}

#[test]
fn an_expired_claim_dropped_by_a_write_for_another_key_still_completes() {
    // Found by the state-machine property test: the owner's expired claim was pruned when
    // another key's claim wrote the slot, its late completion was refused, and a retry sent
    // after the client got its 201 executed the request again.
    let (c, s) = cache(1);
    let fp = [1; 32];
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 7, 0, 100),
        Ok(Found::Claimed { token: None })
    );
    assert_eq!(
        c.lookup_or_claim(&s, &rk(2), &fp, 8, 150, 100),
        Ok(Found::Claimed { token: None }),
        "this write drops rk(1)'s expired claim"
    );
    assert_eq!(c.complete(&s, &rk(1), 7, &record(fp, 1), 160), Ok(true));
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &fp, 9, 170, 100),
        Ok(Found::Completed(record(fp, 1)))
    );
    // A takeover still makes the old owner stale.
    assert_eq!(
        c.lookup_or_claim(&s, &rk(2), &fp, 10, 300, 100),
        Ok(Found::Claimed { token: None })
    );
    assert_eq!(c.complete(&s, &rk(2), 8, &record(fp, 1), 301), Ok(false));
}

#[test]
fn buckets_hold_many_keys_and_evict_oldest_completed_first() {
    let (c, s) = cache(1);
    let fp = [1; 32];
    complete_each(&c, &s, 0..3, fp, 1500);
    // Budget 4096 holds two 1.5 KiB records: the oldest went.
    assert_eq!(
        c.lookup_or_claim(&s, &rk(0), &fp, 99, 5, 1000),
        Ok(Found::Claimed { token: None })
    );
    assert!(matches!(
        c.lookup_or_claim(&s, &rk(2), &fp, 99, 5, 1000),
        Ok(Found::Completed(_))
    ));
    let (v, _) = s.shared_get(&slot_key(0));
    assert!(v.unwrap().len() <= 4096 + 256);
}

#[test]
fn a_slot_keeps_at_most_eight_records() {
    let (c, s) = cache(1);
    let fp = [1; 32];
    complete_each(&c, &s, 0..10, fp, 10);
    for n in 0..2u8 {
        assert_eq!(
            c.lookup_or_claim(&s, &rk(n), &fp, 99, 20, 1000),
            Ok(Found::Claimed { token: None }),
            "{n} evicted"
        );
    }
    for n in 4..10u8 {
        assert!(
            matches!(
                c.lookup_or_claim(&s, &rk(n), &fp, 99, 20, 1000),
                Ok(Found::Completed(_))
            ),
            "{n}"
        );
    }
}

#[test]
fn lost_cas_is_retried() {
    let (c, s) = cache(1);
    s.fail_next_cas(3);
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &[1; 32], 7, 0, 100),
        Ok(Found::Claimed { token: None })
    );
    s.fail_next_cas(100);
    assert!(c.lookup_or_claim(&s, &rk(2), &[1; 32], 7, 0, 100).is_err());
}

#[test]
fn garbage_slot_is_treated_as_empty() {
    let (c, s) = cache(1);
    s.shared_set(&slot_key(0), b"\xff\xff\xff garbage", None)
        .unwrap();
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &[1; 32], 7, 0, 100),
        Ok(Found::Claimed { token: None })
    );
}

#[test]
fn ensure_slots_keeps_existing_data() {
    let (c, s) = cache(2);
    assert_eq!(
        c.lookup_or_claim(&s, &rk(1), &[1; 32], 7, 0, 100),
        Ok(Found::Claimed { token: None })
    );
    c.ensure_slots(&s).unwrap();
    assert!(matches!(
        c.lookup_or_claim(&s, &rk(1), &[1; 32], 8, 1, 100),
        Ok(Found::InFlight { .. })
    ));
}

/// The slot layout as it was written before records were read in place: a filter of either
/// version reads what the other wrote.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
enum OwnedState {
    InFlight {
        fingerprint: Fingerprint,
        lease_until_ms: u64,
        owner: u64,
    },
    Completed {
        expires_ms: u64,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct OwnedEntry {
    key: [u8; 32],
    written_ms: u64,
    state: OwnedState,
}

#[test]
fn the_slot_layout_is_unchanged_and_its_size_bound_holds() {
    let owned = vec![
        OwnedEntry {
            key: [1; 32],
            written_ms: u64::MAX,
            state: OwnedState::InFlight {
                fingerprint: [2; 32],
                lease_until_ms: u64::MAX,
                owner: u64::MAX,
            },
        },
        OwnedEntry {
            key: [3; 32],
            written_ms: u64::MAX,
            state: OwnedState::Completed {
                expires_ms: u64::MAX,
                record: vec![9; 300],
            },
        },
    ];
    let old = postcard::to_allocvec(&owned).unwrap();
    let read = decode_bucket(Some(&old));
    assert_eq!(read.len(), 2);
    let written = encode_bucket(&read);
    assert_eq!(written, old, "same bytes as the owned layout");
    let back: Vec<OwnedEntry> = postcard::from_bytes(&written).unwrap();
    assert_eq!(back, owned);
    // The widest entries fit the buffer `encode_bucket` sizes (no fallback needed).
    let many: Vec<Entry> = (0..64).flat_map(|_| read.clone()).collect();
    let capacity: usize = many
        .iter()
        .map(|e| match &e.state {
            State::InFlight { .. } => ENTRY_BYTES,
            State::Completed { record, .. } => ENTRY_BYTES + 10 + record.len(),
        })
        .sum::<usize>()
        + 10;
    let mut buf = vec![0u8; capacity];
    assert!(postcard::to_slice(&many, &mut buf).is_ok());
}
