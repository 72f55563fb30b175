//! Redis backend, single node or cluster: one implementation generic over the connection type.
//!
//! Layout: one hash per record, `idem:{<key>}` (the braces keep any future companion keys of a
//! record in one cluster slot), fields `s` (`f` in flight / `c` completed), `fp`, `tok`, `until`
//! (absolute ms, Redis clock), `keep` (a claim's: ms it is kept, abandoned, after its lease; the
//! key's `PEXPIRE` is the lease plus `keep`), `rec` (raw bytes) and `at` (when it was completed, Unix ms, Redis
//! clock; records completed before that field existed lack it). Every state change is one Lua script, so it is
//! atomic and one round trip; the scripts read the Redis server clock (`TIME`) so that gateways
//! with skewed clocks agree, and check `until` on read besides the key's own `PEXPIRE`.
//!
//! Connections: `redis://` or `rediss://` (TLS; the server's certificate is checked against the
//! system's roots or `--redis-ca`, never skipped), with `user:password@` for Redis ACLs. URLs are
//! never logged with their password. While Redis is unreachable, calls fail at once and
//! reconnection is tried with backoff ([`breaker`]).
//!
//! Memory: every script that may grow memory makes `HSET` its first write, the one Redis checks
//! against `maxmemory` (with `noeviction`), so a full Redis refuses it before it changes anything
//! (`OOM`, answered as [`BackendError::Full`]); reads, releases and renewals still run (see
//! `scripts::RENEW_FLAGS`). Redis checks before a command, not after: one write may pass the
//! limit by its own size (a record at most `--max-record-bytes`), then every growing write is
//! refused.
//!
//! A waiting claim polls (the trait's default `watch`): another key-store process may complete the
//! key, and a read is one script call, so polling with backoff costs less to run and to reason
//! about than a subscriber per process that must resubscribe across reconnects and cluster moves.

mod breaker;
mod scripts;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Script, Value};
use tokio::sync::OnceCell;

use self::breaker::{Breaker, Guarded};
use self::scripts::{
    fenced, record_state, CLAIM, COMPLETE, FENCE, INSPECT, LOOKUP, NOW, PURGE, RELEASE, RENEW,
    RENEW_FLAGS, STATE, VIEW,
};
use super::{Backend, BackendError, ClaimOutcome, Fenced, LookupOutcome};
use crate::config::Config;
use crate::protocol::{
    abandoned_retention_ms, takes_over, token_or_new, ClaimRequest, CompleteRequest, Hex64,
    LookupRequest, RecordState, ReleaseRequest, RenewRequest,
};

/// How Redis servers' certificates are checked on `rediss://`.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// PEM of the CA to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl Tls {
    /// From `--redis-ca`.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let ca_pem = match &config.redis_ca {
            None => None,
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("--redis-ca {}", path.display()))?,
            ),
        };
        Ok(Self { ca_pem })
    }

    fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }
}

/// A Redis URL as it may be logged: the password replaced.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() => {
            let userinfo = &rest[..at - scheme.len() - 3];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Refuses URLs that would skip the server's certificate check.
fn check_url(url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !url.contains("#insecure"),
        "--redis-url {}: `#insecure` would skip the server's certificate check; give the CA with --redis-ca instead",
        redact(url)
    );
    Ok(())
}

/// `TCP_NODELAY` on every connection to Redis: the multiplexed connection writes the scripts of a
/// batch's entries one after another as their calls come, and with Nagle's algorithm on, one written
/// while the previous is unacknowledged would wait for that acknowledgement.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

type Connect<C> =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = RedisResult<C>> + Send>> + Send + Sync>;

/// A Redis backend over a reconnecting connection `C` (`ConnectionManager` or `ClusterConnection`).
pub struct RedisBackend<C> {
    /// Makes the connection; run on first use so the service can start before Redis.
    connect: Connect<C>,
    conn: OnceCell<C>,
    breaker: Breaker,
    claim: Script,
    lookup: Script,
    complete: Script,
    release: Script,
    renew: Script,
    inspect: Script,
    purge: Script,
    name: &'static str,
}

impl RedisBackend<ConnectionManager> {
    /// A single node at `urls[0]`. `timeout` bounds connecting and each reply.
    pub fn single(urls: &[String], timeout: Duration) -> anyhow::Result<Self> {
        Self::single_with(urls, timeout, &Tls::default())
    }

    /// [`RedisBackend::single`], checking a `rediss://` server against `tls`.
    pub fn single_with(urls: &[String], timeout: Duration, tls: &Tls) -> anyhow::Result<Self> {
        let [url] = urls else {
            anyhow::bail!(
                "--redis-url: the redis backend takes exactly one URL, got {}",
                urls.len()
            );
        };
        check_url(url)?;
        let client = match tls.certificates() {
            Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
            None => redis::Client::open(url.as_str()),
        }
        .map_err(|e| anyhow::anyhow!("--redis-url {}: {e}", redact(url)))?;
        // One quick reconnect attempt per round: the breaker spaces the rounds out, and requests
        // in between get their 503 at once.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_factor(50)
            .set_max_delay(500)
            .set_tcp_settings(tcp_settings());
        let connect: Connect<ConnectionManager> = Box::new(move || {
            let (client, config) = (client.clone(), config.clone());
            Box::pin(async move { ConnectionManager::new_with_config(client, config).await })
        });
        Ok(Self::new(connect, "redis", Breaker::new()))
    }
}

impl RedisBackend<ClusterConnection> {
    /// A cluster discovered from the seed nodes `urls`.
    pub fn cluster(urls: &[String], timeout: Duration) -> anyhow::Result<Self> {
        Self::cluster_with(urls, timeout, &Tls::default())
    }

    /// [`RedisBackend::cluster`], checking `rediss://` nodes against `tls`. The seed URLs'
    /// user and password authenticate to every node.
    pub fn cluster_with(urls: &[String], timeout: Duration, tls: &Tls) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !urls.is_empty(),
            "--redis-url: give at least one cluster seed node"
        );
        for url in urls {
            check_url(url)?;
        }
        let mut builder = ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .tcp_settings(tcp_settings());
        if let Some(certs) = tls.certificates() {
            builder = builder.certs(certs);
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?;
        let connect: Connect<ClusterConnection> = Box::new(move || {
            let client = client.clone();
            Box::pin(async move { client.get_async_connection().await })
        });
        Ok(Self::new(connect, "redis-cluster", Breaker::default()))
    }
}

impl<C> RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn new(connect: Connect<C>, name: &'static str, breaker: Breaker) -> Self {
        let script = |body: &str| Script::new(&format!("{NOW}{body}"));
        Self {
            connect,
            conn: OnceCell::new(),
            breaker,
            claim: script(&format!("{STATE}{CLAIM}")),
            lookup: script(&format!("{STATE}{LOOKUP}")),
            complete: script(&format!("{FENCE}{COMPLETE}")),
            release: script(&format!("{FENCE}{RELEASE}")),
            renew: Script::new(&format!("{RENEW_FLAGS}{NOW}{FENCE}{RENEW}")),
            inspect: script(&format!("{VIEW}{INSPECT}")),
            purge: script(&format!("{VIEW}{PURGE}")),
            name,
        }
    }

    /// The shared connection behind the breaker, connecting if no attempt succeeded yet (the
    /// first connection, too, fails fast while Redis is known to be unreachable).
    async fn connection(&self) -> Result<Guarded<C>, BackendError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let pass = self.breaker.admit()?;
                let result = (self.connect)().await;
                pass.finish(&result);
                result
            })
            .await?;
        Ok(Guarded {
            inner: conn.clone(),
            breaker: self.breaker.clone(),
        })
    }

    /// Redis key of a record.
    fn record_key(key: &Hex64) -> String {
        format!("idem:{{{}}}", key.as_str())
    }
}

#[async_trait]
impl<C> Backend for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, BackendError> {
        let mut conn = self.connection().await?;
        let token = token_or_new(req);
        let reply: Vec<Vec<u8>> = self
            .claim
            .key(Self::record_key(&req.key))
            .arg(req.fingerprint.as_str())
            .arg(&token)
            .arg(req.lease_ms)
            .arg(abandoned_retention_ms(req))
            .arg(if takes_over(req) { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        let bad = || BackendError::Protocol(format!("claim: {reply:?}"));
        let millis = |ms: &[u8]| {
            std::str::from_utf8(ms)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(bad)
        };
        match reply.as_slice() {
            [tag, t] if tag.as_slice() == b"claimed" => Ok(ClaimOutcome::Claimed {
                token: String::from_utf8(t.clone()).map_err(|_| bad())?,
            }),
            [tag, ms] if tag.as_slice() == b"in_flight" => Ok(ClaimOutcome::InFlight {
                retry_after_ms: millis(ms)?.max(1),
            }),
            [tag, ms] if tag.as_slice() == b"abandoned" => Ok(ClaimOutcome::Abandoned {
                lease_ended_ms_ago: millis(ms)?,
            }),
            [tag, rec] if tag.as_slice() == b"completed" => Ok(ClaimOutcome::Completed {
                record: rec.clone(),
            }),
            [tag] if tag.as_slice() == b"mismatch" => Ok(ClaimOutcome::Mismatch),
            _ => Err(bad()),
        }
    }

    async fn lookup(&self, req: &LookupRequest) -> Result<LookupOutcome, BackendError> {
        let mut conn = self.connection().await?;
        let reply: Vec<Vec<u8>> = self
            .lookup
            .key(Self::record_key(&req.key))
            .arg(req.fingerprint.as_str())
            .invoke_async(&mut conn)
            .await?;
        let bad = || BackendError::Protocol(format!("lookup: {reply:?}"));
        let millis = |ms: &[u8]| {
            std::str::from_utf8(ms)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(bad)
        };
        match reply.as_slice() {
            [tag] if tag.as_slice() == b"absent" => Ok(LookupOutcome::Absent),
            [tag] if tag.as_slice() == b"mismatch" => Ok(LookupOutcome::Mismatch),
            [tag, rec] if tag.as_slice() == b"completed" => Ok(LookupOutcome::Completed {
                record: rec.clone(),
            }),
            [tag, ms] if tag.as_slice() == b"in_flight" => Ok(LookupOutcome::InFlight {
                retry_after_ms: millis(ms)?.max(1),
            }),
            [tag, ms] if tag.as_slice() == b"abandoned" => Ok(LookupOutcome::Abandoned {
                lease_ended_ms_ago: millis(ms)?,
            }),
            _ => Err(bad()),
        }
    }

    async fn complete(&self, req: &CompleteRequest) -> Result<Fenced, BackendError> {
        let mut conn = self.connection().await?;
        let reply: String = self
            .complete
            .key(Self::record_key(&req.key))
            .arg(&req.token)
            .arg(req.record.as_slice())
            .arg(req.retention_ms)
            .invoke_async(&mut conn)
            .await?;
        fenced(&reply, "stored")
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Fenced, BackendError> {
        let mut conn = self.connection().await?;
        let reply: String = self
            .release
            .key(Self::record_key(&req.key))
            .arg(&req.token)
            .invoke_async(&mut conn)
            .await?;
        fenced(&reply, "released")
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Fenced, BackendError> {
        let mut conn = self.connection().await?;
        let reply: String = self
            .renew
            .key(Self::record_key(&req.key))
            .arg(&req.token)
            .arg(req.lease_ms)
            .invoke_async(&mut conn)
            .await?;
        fenced(&reply, "renewed")
    }

    async fn inspect(&self, key: &Hex64) -> Result<RecordState, BackendError> {
        let mut conn = self.connection().await?;
        let reply: Vec<Vec<u8>> = self
            .inspect
            .key(Self::record_key(key))
            .invoke_async(&mut conn)
            .await?;
        record_state(&reply)
    }

    async fn purge(&self, key: &Hex64) -> Result<RecordState, BackendError> {
        let mut conn = self.connection().await?;
        let reply: Vec<Vec<u8>> = self
            .purge
            .key(Self::record_key(key))
            .invoke_async(&mut conn)
            .await?;
        record_state(&reply)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.connection().await?;
        let _: Value = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        self.name
    }
}
