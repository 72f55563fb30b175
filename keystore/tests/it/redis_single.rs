//! The suite on a single Redis node, plus restart and outage behaviour.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use idempotency_keystore::backend::redis::RedisBackend;
use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;

use crate::common::{eventually, hex64, settings, unb64, Keystore, RedisServer};

/// One Redis for the whole suite: tests use random keys, so they never collide.
fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start(&[]))
}

fn backend_for(url: String) -> Arc<dyn Backend> {
    Arc::new(RedisBackend::single(&[url], Duration::from_millis(500)).unwrap())
}

async fn backend() -> Arc<dyn Backend> {
    backend_for(shared().url())
}

crate::suite::backend_suite!(backend);

/// Completed records survive a crash and restart of a Redis with an fsync'd append-only file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_completed_records() {
    let mut redis = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let ks = Keystore::start(backend_for(redis.url()), settings()).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let record = [0u8, 0xff, 0x80, b'x'];
    assert_eq!(
        ks.complete(&key, &token, &record, 60_000).await.0,
        StatusCode::OK
    );
    redis.kill();
    redis.restart();
    let body = eventually(Duration::from_secs(5), "redis back", || async {
        let (status, body) = ks.claim(&key, &fp, 30_000).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(body["outcome"], "completed", "{body}");
    assert_eq!(unb64(&body["record"]), record);
}

/// With Redis down, requests fail fast with 503 and the service is not ready; once Redis is back
/// on the same address, everything works again without restarting the key store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_503_then_recovers() {
    let mut redis = RedisServer::start(&[]);
    let ks = Keystore::start(backend_for(redis.url()), settings()).await;
    ks.claim_ok(&hex64(), &hex64(), 30_000).await;
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = ks.claim(&hex64(), &hex64(), 30_000).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("backend unavailable"),
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    let (status, _) = ks.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ks.get("/healthz").await.0, StatusCode::OK);
    redis.restart();
    eventually(Duration::from_secs(10), "recovery", || async {
        let (status, _) = ks.claim(&hex64(), &hex64(), 30_000).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(ks.get("/readyz").await.0, StatusCode::OK);
}

/// The service starts while Redis is still down (lazy connect) and becomes ready when it comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_redis() {
    let mut redis = RedisServer::start(&[]);
    redis.kill();
    let ks = Keystore::start(backend_for(redis.url()), settings()).await;
    assert_eq!(ks.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    redis.restart();
    eventually(Duration::from_secs(10), "ready", || async {
        (ks.get("/readyz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    ks.claim_ok(&hex64(), &hex64(), 30_000).await;
}
