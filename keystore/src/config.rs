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
    /// `redis://[user:password@]host:port` or, over TLS with the server's certificate checked,
    /// `rediss://[user:password@]host:port` (user and password: Redis ACL `AUTH`).
    #[arg(
        long = "redis-url",
        env = "KEYSTORE_REDIS_URL",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_urls: Vec<String>,

    /// PEM file of the CA that signed the Redis servers' certificates (`rediss://`); without it,
    /// the system's trusted roots.
    #[arg(long, env = "KEYSTORE_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,

    /// Bearer token required on every /v1 request (none: no authentication).
    #[arg(long, env = "KEYSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Bearer token of the admin API (`/admin/v1`: an operator inspects and purges records). None:
    /// the admin API is off and answers 404. It must differ from `--token`, so that the filter's
    /// token never opens it.
    #[arg(long, env = "KEYSTORE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Largest record accepted by `complete` (bytes, decoded); larger ones get 413. The filter's
    /// `keystore.max_record_bytes` must not exceed it.
    #[arg(long, env = "KEYSTORE_MAX_RECORD_BYTES", default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,

    /// Largest accepted request body; larger bodies get 413. Default: what a record of
    /// `--max-record-bytes` needs (base64 plus the JSON around it); a smaller value is refused.
    #[arg(long, env = "KEYSTORE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Capacity of the memory backend in bytes (keys, records and bookkeeping). Completed records
    /// are evicted, closest to expiry first, to make room; in-flight claims never are, and a claim
    /// that does not fit gets 503.
    #[arg(long, env = "KEYSTORE_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_bytes: u64,

    /// Capacity of the memory backend in entries (as `--max-bytes`, the other bound).
    #[arg(long, env = "KEYSTORE_MAX_ENTRIES", default_value_t = 1_000_000)]
    pub max_entries: u64,

    /// Upper bound of one backend call (connect included); past it the request gets 503.
    #[arg(long, env = "KEYSTORE_BACKEND_TIMEOUT_MS", default_value_t = 1000)]
    pub backend_timeout_ms: u64,

    /// A second address serving only /healthz, /readyz and /metrics, with connections of its own:
    /// probes still answered when the data port is at `--max-connections`. None: those paths are
    /// served on `--listen` only.
    #[arg(long, env = "KEYSTORE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Most open connections on `--listen`; past it a new connection gets a 503 and is closed.
    /// Lowered at start to what the open-files limit leaves room for.
    #[arg(long, env = "KEYSTORE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most claims waiting (`wait_ms`) at once; past it a claim is answered at once, as with
    /// `wait_ms` 0.
    #[arg(long, env = "KEYSTORE_MAX_WAITERS", default_value_t = 2048)]
    pub max_waiters: usize,

    /// Time a client has to send a request's headers once it has sent its first byte (and the
    /// first request's, from the connection's start); past it the connection is closed.
    #[arg(long, env = "KEYSTORE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Most bytes of request bodies held at once (being received or handled); a request whose
    /// body does not fit gets 503 at once. A body is counted at its declared length, or at its
    /// route's bound when it declares none.
    #[arg(long, env = "KEYSTORE_MAX_BODY_MEMORY", default_value_t = 256 * 1024 * 1024)]
    pub max_body_memory: usize,

    /// Time a client has to send a whole request body once its headers are in; past it, 408.
    #[arg(long, env = "KEYSTORE_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// A connection with no request in progress and no byte received for this long is closed
    /// (HTTP/1.1 keep-alive, HTTP/2 with no stream).
    #[arg(long, env = "KEYSTORE_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// A connection whose writes make no progress for this long (a client that does not read its
    /// answer) is closed.
    #[arg(long, env = "KEYSTORE_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// Upper bound of the drain after SIGTERM: connections still open then are closed and the
    /// process exits, whatever their clients do.
    #[arg(long, env = "KEYSTORE_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
}

/// A duration flag in milliseconds (0 is taken as 1 ms).
pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

/// The default `--max-record-bytes`: 3 MiB, which the filter's `max_response_bytes` must fit in.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 3 * 1024 * 1024;

/// JSON around the record in a `complete` body (key, token, retention, field names).
const BODY_OVERHEAD: usize = 4096;

impl Config {
    /// The request body limit: `--max-body-bytes`, or what a largest record needs.
    pub fn body_limit(&self) -> anyhow::Result<usize> {
        let needed = self.max_record_bytes.div_ceil(3).saturating_mul(4) + BODY_OVERHEAD;
        match self.max_body_bytes {
            None => Ok(needed),
            Some(n) if n >= needed => Ok(n),
            Some(n) => anyhow::bail!(
                "--max-body-bytes {n} is too small for a record of --max-record-bytes {} (needs {needed})",
                self.max_record_bytes
            ),
        }
    }

    /// The admin API's token (an empty one, a templating leftover, means none), refused when it
    /// is also the `/v1` token.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        let admin = self.admin_token.clone().filter(|t| !t.is_empty());
        if admin.is_some() && admin == self.token {
            anyhow::bail!("--admin-token must differ from --token: the filter's token must not open the admin API");
        }
        Ok(admin)
    }

    /// The backend call budget as a duration.
    pub fn backend_timeout(&self) -> Duration {
        millis(self.backend_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["idempotency-keystore"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn the_body_limit_follows_the_record_limit() {
        let c = parse(&[]);
        assert_eq!(c.max_record_bytes, 3 * 1024 * 1024);
        assert_eq!(c.body_limit().unwrap(), 4 * 1024 * 1024 + 4096);
        let c = parse(&["--max-record-bytes", "3000"]);
        assert_eq!(c.body_limit().unwrap(), 4000 + 4096);
        let c = parse(&["--max-body-bytes", "1000000"]);
        let e = c.body_limit().unwrap_err().to_string();
        assert!(
            e.contains("--max-body-bytes") && e.contains("--max-record-bytes"),
            "{e}"
        );
        let c = parse(&["--max-record-bytes", "1000", "--max-body-bytes", "1000000"]);
        assert_eq!(c.body_limit().unwrap(), 1_000_000);
    }

    #[test]
    fn the_admin_token_is_off_by_default_and_never_the_v1_token() {
        assert_eq!(parse(&[]).admin_token().unwrap(), None);
        assert_eq!(parse(&["--admin-token", ""]).admin_token().unwrap(), None);
        let c = parse(&["--token", "a", "--admin-token", "b"]);
        assert_eq!(c.admin_token().unwrap().as_deref(), Some("b"));
        let e = parse(&["--token", "a", "--admin-token", "a"])
            .admin_token()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--admin-token") && e.contains("--token"), "{e}");
    }
}
