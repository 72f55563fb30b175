//! Two gateways sharing one key store (on memory or on a durable Redis), in front of one upstream:
//! the topology of the mesh-wide tests. Gateway `a` can reach the key store over a slow link.

use std::time::Duration;

use idempotency_testkit::redis::RedisServer;

use super::envoy::Envoy;
use super::envoy_config::EnvoyOptions;
use super::keystore::{KeystoreProcess, StoreBackend};
use super::slow_link::SlowLink;
use super::upstream::Upstream;

/// The running processes; each stops when dropped.
pub struct Mesh {
    pub upstream: Upstream,
    pub keystore: KeystoreProcess,
    /// The key store's Redis, when asked for.
    pub redis: Option<RedisServer>,
    pub a: Envoy,
    pub b: Envoy,
    /// The slow link between gateway `a` and the key store, when asked for.
    pub link: Option<SlowLink>,
}

/// How to start a [`Mesh`].
#[derive(Clone, Debug, Default)]
pub struct MeshOptions {
    /// The key store's bearer token (the plugin must send it too).
    pub token: Option<String>,
    /// The key store on a Redis with an append-only file fsync'd on every write, instead of memory.
    pub redis: bool,
    /// The route's timeout on both gateways.
    pub route_timeout: Option<Duration>,
    /// Latency added to every chunk gateway `a` sends the key store.
    pub a_keystore_delay: Option<Duration>,
}

impl Mesh {
    /// Both gateways run the filter with `plugin` (JSON).
    pub async fn start(plugin: &str, options: MeshOptions) -> Mesh {
        let redis = options.redis.then(RedisServer::durable);
        let store = redis.as_ref().map_or(StoreBackend::Memory, |redis| {
            StoreBackend::Redis(redis.url())
        });
        let (upstream, keystore) = tokio::join!(
            Upstream::start(),
            KeystoreProcess::start(store, options.token.as_deref())
        );
        let link = match options.a_keystore_delay {
            Some(delay) => Some(SlowLink::start(keystore.port, delay).await),
            None => None,
        };
        let mut b = EnvoyOptions::with_filter(upstream.port, plugin).keystore(keystore.port);
        if let Some(t) = options.route_timeout {
            b = b.route_timeout(t);
        }
        let a = b
            .clone()
            .keystore(link.as_ref().map_or(keystore.port, |l| l.port));
        let (a, b) = tokio::join!(Envoy::start(&a), Envoy::start(&b));
        Mesh {
            upstream,
            keystore,
            redis,
            a,
            b,
            link,
        }
    }
}
