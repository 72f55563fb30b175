use super::*;
use crate::protocol::AbandonedPolicy;

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
        abandoned: Some(AbandonedPolicy::Report),
        retention_ms: None,
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
    let m = MemoryBackend::new(10 * 600, 1_000);
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
    assert!(bytes <= 6000, "{bytes}");
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
    c.retention_ms = Some(1);
    m.claim(&c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    m.claim(&claim(2)).await.unwrap();
    let (_, entries) = m.usage();
    assert_eq!(
        entries, 1,
        "the claim past its lease and retention was swept"
    );
}

#[tokio::test]
async fn abandoned_claims_count_in_the_bounds_and_are_never_evicted() {
    // Room for about ten claims; each one's lease ends at once and it stays, abandoned.
    let m = MemoryBackend::new(10 * 600, 1_000);
    let mut held = Vec::new();
    for k in 1..=100 {
        let mut c = claim(k);
        c.lease_ms = 1;
        match m.claim(&c).await {
            Ok(ClaimOutcome::Claimed { .. }) => held.push(k),
            Err(BackendError::Full(_)) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!((5..=15).contains(&held.len()), "{held:?}");
    let (bytes, entries) = m.usage();
    assert!(bytes <= 6000 && entries == held.len(), "{bytes} {entries}");
    // Every one is reported abandoned (none was dropped to make room), and a late answer of
    // the first still lands: freeing its claim's bytes for a small record.
    let first = held[0];
    let last = LookupRequest {
        key: hex(*held.last().unwrap()),
        fingerprint: hex(0),
        abandoned: None,
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while !matches!(m.lookup(&last).await, Ok(LookupOutcome::Abandoned { .. })) {
        assert!(Instant::now() < deadline, "the 1 ms leases never ended");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for k in &held {
        let outcome = m.claim(&claim(*k)).await.unwrap();
        assert!(
            matches!(outcome, ClaimOutcome::Abandoned { .. }),
            "claim {k}: {outcome:?}"
        );
    }
    assert_eq!(
        m.complete(&complete(first, 10)).await.unwrap(),
        Fenced::Done
    );
    assert!(matches!(
        m.claim(&claim(first)).await.unwrap(),
        ClaimOutcome::Completed { .. }
    ));
}
