//! The suite on a three-master Redis Cluster, plus a node outage.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use idempotency_keystore::backend::redis::RedisBackend;
use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;

use crate::common::{eventually, hex64, settings, Keystore, RedisCluster};

/// One cluster for the whole suite (forming one takes a moment); tests use random keys.
fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

async fn backend() -> Arc<dyn Backend> {
    let urls = shared().urls();
    Arc::new(RedisBackend::cluster(&urls, Duration::from_millis(500)).unwrap())
}

crate::suite::backend_suite!(backend);

/// A master down gives quick 503s (for its slots, then for all once the cluster state fails);
/// restarted with its nodes.conf it rejoins, and the key store recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_gives_503_then_recovers() {
    let mut cluster = RedisCluster::start();
    let backend = RedisBackend::cluster(&cluster.urls(), Duration::from_millis(500)).unwrap();
    let ks = Keystore::start(Arc::new(backend), settings()).await;
    for _ in 0..10 {
        ks.claim_ok(&hex64(), &hex64(), 30_000).await;
    }
    cluster.nodes[0].kill();
    let mut unavailable = 0;
    // Random keys: with 30 of them, none landing on the dead third of the slots has odds of about
    // one in 190,000 (with 10 it was one in 58).
    for _ in 0..30 {
        let started = Instant::now();
        let (status, body) = ks.claim(&hex64(), &hex64(), 30_000).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        match status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
            other => panic!("{other}: {body}"),
        }
    }
    assert!(unavailable > 0, "no key landed on the dead node");
    cluster.nodes[0].restart();
    cluster.wait_ok();
    eventually(Duration::from_secs(10), "recovery", || async {
        for _ in 0..10 {
            if ks.claim(&hex64(), &hex64(), 30_000).await.0 != StatusCode::OK {
                return None;
            }
        }
        Some(())
    })
    .await;
}
