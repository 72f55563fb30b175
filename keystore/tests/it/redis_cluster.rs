//! The suite on a three-master Redis Cluster.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use idempotency_keystore::backend::redis::RedisBackend;
use idempotency_keystore::backend::Backend;

use crate::common::RedisCluster;

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
