//! Command line and environment configuration.
//!
//! Every flag has an environment fallback so the same binary runs unchanged in a container
//! (env) and by hand (flags).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which store holds the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// In-process, bounded cache: one binary, nothing else to run (records die with the process).
    Memory,
    /// A single Redis node (or a primary behind a failover proxy).
    Redis,
    /// A Redis Cluster; `--redis-url` lists seed nodes.
    RedisCluster,
}

/// Key store configuration.
#[derive(Debug, Clone, Parser)]
#[command(name = "idempotency-keystore", version, about)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "KEYSTORE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Storage backend.
    #[arg(long, env = "KEYSTORE_BACKEND", value_enum, default_value_t = BackendKind::Memory)]
    pub backend: BackendKind,

    /// Redis URL(s), repeatable or comma-separated; for redis-cluster, the seed nodes.
    #[arg(
        long = "redis-url",
        env = "KEYSTORE_REDIS_URL",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_urls: Vec<String>,

    /// Bearer token required on every /v1 request (none: no authentication).
    #[arg(long, env = "KEYSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Largest accepted request body; larger bodies get 413.
    #[arg(long, env = "KEYSTORE_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Capacity of the memory backend (entries); the least useful entries are evicted beyond it.
    #[arg(long, env = "KEYSTORE_MAX_ENTRIES", default_value_t = 1_000_000)]
    pub max_entries: u64,

    /// Upper bound of one backend call (connect included); past it the request gets 503.
    #[arg(long, env = "KEYSTORE_BACKEND_TIMEOUT_MS", default_value_t = 1000)]
    pub backend_timeout_ms: u64,
}

impl Config {
    /// The backend call budget as a duration.
    pub fn backend_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_timeout_ms.max(1))
    }
}
