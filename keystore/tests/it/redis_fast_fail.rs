//! While its Redis is down, the key store answers 503 at once (not after a reconnect round), and
//! recovers by itself once Redis is back; a batch meanwhile answers each entry's 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::redis::RedisBackend;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{eventually, hex64, settings, Keystore, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_at_once_and_recovers() {
    let mut redis = RedisServer::start(&[]);
    let backend = RedisBackend::single(&[redis.url()], Duration::from_millis(1000)).unwrap();
    let ks = Keystore::start(Arc::new(backend), settings()).await;
    ks.claim_ok(&hex64(), &hex64(), 30_000).await;
    redis.kill();
    let mut took = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        let (status, body) = ks.claim(&hex64(), &hex64(), 30_000).await;
        took.push(started.elapsed());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    took.sort();
    let median = took[took.len() / 2];
    let slowest = took[took.len() - 1];
    eprintln!("redis down: 40 claims answered 503, median {median:?}, slowest {slowest:?}");
    assert!(median < Duration::from_millis(50), "median {median:?}");
    assert!(slowest < Duration::from_millis(1500), "slowest {slowest:?}");
    // A batch is still answered: each entry with the 503 its single call gets, and a malformed
    // entry with its 400.
    let fp = hex64();
    let entries = json!([
        {"op": "claim", "key": hex64(), "fingerprint": fp, "lease_ms": 30_000},
        {"op": "lookup", "key": hex64(), "fingerprint": fp},
        {"op": "release", "key": "x", "token": "t"},
    ]);
    let (status, body) = ks.post("/v1/batch", json!({ "entries": entries })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let statuses: Vec<u64> = body["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 503, 400], "{body}");
    assert!(
        body["answers"][0]["body"]["error"]
            .as_str()
            .unwrap()
            .starts_with("backend unavailable"),
        "{body}"
    );
    redis.restart();
    let back = Instant::now();
    eventually(Duration::from_secs(10), "recovery", || async {
        let (status, _) = ks.claim(&hex64(), &hex64(), 30_000).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    eprintln!(
        "redis back: claims answered again after {:?}",
        back.elapsed()
    );
    assert_eq!(ks.get("/readyz").await.0, StatusCode::OK);
}
