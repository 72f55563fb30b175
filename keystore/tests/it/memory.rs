//! The suite on the in-process backend, plus the bookkeeping of waiting claims.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::memory::MemoryBackend;
use idempotency_keystore::backend::Backend;
use idempotency_keystore::http::{Drain, Settings};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{eventually, hex64, settings, Keystore};

async fn backend() -> Arc<dyn Backend> {
    Arc::new(MemoryBackend::new(64 << 20, 10_000))
}

crate::suite::backend_suite!(backend);

/// A key's wake-up channel lives only while someone waits: after answered waits, timed-out waits
/// and waiters whose client went away, no key is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_channels_are_dropped_with_their_waiters() {
    let memory = Arc::new(MemoryBackend::new(64 << 20, 10_000));
    let ks = Keystore::start(memory.clone(), settings()).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;

    // A client that gives up while waiting.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/v1/claim", ks.base))
        .json(&json!({"key": key, "fingerprint": fp, "lease_ms": 1000, "wait_ms": 5000}))
        .send()
        .await;
    assert!(gone.is_err(), "{gone:?}");
    eventually(
        Duration::from_secs(2),
        "the left waiter dropped",
        || async { (memory.waited_keys() == 0).then_some(()) },
    )
    .await;

    // Timed out, then answered.
    let (_, body) = ks.claim_wait(&key, &fp, 1000, 100).await;
    assert_eq!(body["outcome"], "in_flight");
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let (ks, key, fp) = (ks.clone(), key.clone(), fp.clone());
            tokio::spawn(async move { ks.claim_wait(&key, &fp, 1000, 5000).await })
        })
        .collect();
    eventually(Duration::from_secs(2), "waiters registered", || async {
        (memory.waited_keys() == 1).then_some(())
    })
    .await;
    assert_eq!(
        ks.complete(&key, &token, b"r", 60_000).await.0,
        StatusCode::OK
    );
    for w in waiters {
        assert_eq!(w.await.unwrap().1["outcome"], "completed");
    }
    assert_eq!(memory.waited_keys(), 0);
}

/// A purge wakes the claims held on the key: they claim it at once, not at the lease's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_wakes_held_claims() {
    let memory = Arc::new(MemoryBackend::new(64 << 20, 10_000));
    let ks = Keystore::start(
        memory.clone(),
        Settings {
            admin_token: Some("adm".into()),
            ..settings()
        },
    )
    .await;
    let (key, fp) = (hex64(), hex64());
    ks.claim_ok(&key, &fp, 60_000).await;
    let waiter = {
        let (ks, key, fp) = (ks.clone(), key.clone(), fp.clone());
        tokio::spawn(async move { ks.claim_wait(&key, &fp, 30_000, 30_000).await })
    };
    eventually(Duration::from_secs(2), "the waiter held", || async {
        (memory.waited_keys() == 1).then_some(())
    })
    .await;
    let purged = Instant::now();
    let (status, body) = ks
        .admin(reqwest::Method::DELETE, &key, Some("Bearer adm"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = waiter.await.unwrap();
    assert_eq!(body["outcome"], "claimed", "{body}");
    assert_eq!(body["waited"], true, "{body}");
    assert!(
        purged.elapsed() < Duration::from_millis(500),
        "{:?}",
        purged.elapsed()
    );
}

/// When the server stops, waiting claims answer `in_flight` at once rather than at `wait_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_waits() {
    let (drain_tx, drain) = Drain::new();
    let ks = Keystore::start(
        backend().await,
        Settings {
            drain,
            ..settings()
        },
    )
    .await;
    let (key, fp) = (hex64(), hex64());
    ks.claim_ok(&key, &fp, 30_000).await;
    let waiter = {
        let (ks, key, fp) = (ks.clone(), key.clone(), fp.clone());
        tokio::spawn(async move { ks.claim_wait(&key, &fp, 30_000, 30_000).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    drain_tx.send(true).unwrap();
    let (status, body) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "in_flight", "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A wait that starts while draining does not wait at all.
    let started = Instant::now();
    let (_, body) = ks.claim_wait(&key, &fp, 30_000, 30_000).await;
    assert_eq!(body["outcome"], "in_flight", "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Past its byte bound the memory store answers claims with 503 (the filter's failure mode
/// applies), and every claim it already holds stays: fenced, completable, in flight to others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_of_claims_answers_503_and_keeps_every_claim() {
    // About twenty claims' worth of bytes.
    let memory = Arc::new(MemoryBackend::new(20 * 600, 10_000));
    let ks = Keystore::start(memory.clone(), settings()).await;
    let fp = hex64();
    let mut held = Vec::new();
    let refused = loop {
        let key = hex64();
        let (status, body) = ks.claim(&key, &fp, 60_000).await;
        match status {
            StatusCode::OK => held.push((key, body["token"].as_str().unwrap().to_owned())),
            other => break (other, body),
        }
        assert!(held.len() < 100, "the byte bound never applied");
    };
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.1);
    assert!(
        refused.1["error"].as_str().unwrap().contains("store full"),
        "{}",
        refused.1
    );
    assert!(held.len() >= 10, "{}", held.len());
    let (bytes, _) = memory.usage();
    assert!(bytes <= 20 * 600, "{bytes} bytes");
    for (key, token) in &held {
        let (_, body) = ks.claim(key, &fp, 60_000).await;
        assert_eq!(
            body["outcome"], "in_flight",
            "a held claim was lost: {body}"
        );
        assert_eq!(ks.renew(key, token, 60_000).await.0, StatusCode::OK);
    }
    // Releasing one makes room for a new claim.
    let (key, token) = &held[0];
    assert_eq!(ks.release(key, token).await.0, StatusCode::OK);
    let (status, _) = ks.claim(&hex64(), &fp, 60_000).await;
    assert_eq!(status, StatusCode::OK, "room after a release");
}
