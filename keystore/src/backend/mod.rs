//! Storage backends behind one trait, so the HTTP layer and the test suite are shared.
//!
//! Every state change is one atomic operation in the backend (a per-key compute in memory, one
//! Lua script in Redis), so two gateways racing on one key can never both win a claim.
//!
//! A claim that waits for an in-flight key (`wait_ms`) is a loop in the HTTP layer: read with
//! `claim`, and while the answer is `in_flight`, wait on [`Backend::watch`] (made before the read,
//! so a change in between is not missed), bounded by the lease left and the time left.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;

use crate::config::{BackendKind, Config};
use crate::protocol::{
    ClaimRequest, CompleteRequest, Hex64, LookupRequest, RecordState, ReleaseRequest, RenewRequest,
};

/// Result of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller now holds the key with this fencing token.
    Claimed { token: String },
    /// Another claim holds the key for this many more milliseconds.
    InFlight { retry_after_ms: u64 },
    /// The stored record, byte-exact.
    Completed { record: Vec<u8> },
    /// The key is held or completed with another fingerprint.
    Mismatch,
    /// The key holds an abandoned claim with this fingerprint: its lease ended this many
    /// milliseconds ago without complete or release (the claim did not ask to take it over).
    Abandoned { lease_ended_ms_ago: u64 },
}

/// Result of a lookup: a claim's answers, without claiming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupOutcome {
    /// Nothing live under the key.
    Absent,
    InFlight {
        retry_after_ms: u64,
    },
    Completed {
        record: Vec<u8>,
    },
    Mismatch,
    Abandoned {
        lease_ended_ms_ago: u64,
    },
}

/// Result of an operation fenced by a token (complete, release, renew).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The token was the current claim's and the change was made.
    Done,
    /// The token is not the current claim's (taken over, completed, released, dropped at the
    /// end of its retention, unknown).
    Stale,
}

/// The backend could not answer; the HTTP layer turns it into 503.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("redis: {0}")]
    Redis(::redis::RedisError),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// No room for the write: the memory backend has nothing left it may evict (only claims,
    /// live or abandoned, remain), or Redis is at its `maxmemory` and refused the write before
    /// changing anything.
    #[error("store full: {0}")]
    Full(String),
}

/// A Redis error as the key store answers it: Redis at its `maxmemory` (`OOM`, which it answers
/// before the refused write changes anything) is a full store, anything else a failure.
impl From<::redis::RedisError> for BackendError {
    fn from(e: ::redis::RedisError) -> Self {
        if e.code() == Some("OOM") {
            Self::Full(format!(
                "redis is at its maxmemory and refused the write, which changed nothing ({e})"
            ))
        } else {
            Self::Redis(e)
        }
    }
}

impl BackendError {
    /// The outcome label of a request this error failed, for metrics: `full` for a store that
    /// refused to grow, `error` for every failure to answer.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Full(_) => "full",
            _ => "error",
        }
    }
}

/// A record store with the claim / complete / release semantics of the v1 API.
///
/// A claim whose lease ran out without complete or release is *abandoned*: it stays under its
/// key until its retention (the claim's `retention_ms`, counted from the lease's end) has passed,
/// and its token still names it, so a late complete, release or renewal by its holder is accepted
/// (a renewal revives it). A claim asking to take it over (`abandoned: take_over`) gets the key
/// with a new token in the same atomic step, fencing the old one; any other claim gets
/// [`ClaimOutcome::Abandoned`] and the key stays as it is.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Claims `key`, or reports who holds it, or returns its record.
    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, BackendError>;
    /// What `key` holds, changing nothing.
    async fn lookup(&self, req: &LookupRequest) -> Result<LookupOutcome, BackendError>;
    /// Turns the current claim into a completed record.
    async fn complete(&self, req: &CompleteRequest) -> Result<Fenced, BackendError>;
    /// Drops the current claim so the next request runs again.
    async fn release(&self, req: &ReleaseRequest) -> Result<Fenced, BackendError>;
    /// Moves the current claim's lease end to now + `lease_ms`, so a slow upstream keeps its key.
    async fn renew(&self, req: &RenewRequest) -> Result<Fenced, BackendError>;
    /// Renews each claim of a batch, answering in order; one failure fails the batch (the
    /// renewals that went through stay done: a renewal repeated is harmless). The renewals run
    /// concurrently: on Redis they share the multiplexed connection, so they go out back to back
    /// without waiting for each other's reply (one round trip for the batch, not one per key),
    /// and on a cluster each goes to the node of its key's slot.
    async fn renew_batch(&self, reqs: &[RenewRequest]) -> Result<Vec<Fenced>, BackendError> {
        join_all(reqs.iter().map(|r| self.renew(r)))
            .await
            .into_iter()
            .collect()
    }
    /// A wait that ends when `key` may have changed. It is registered on return, before the read
    /// it guards; `round` counts the waits already made for this request.
    ///
    /// The default polls: it just sleeps, from 20 ms doubling up to 200 ms, since a backend shared
    /// by several processes (Redis) sees changes made elsewhere only by reading again.
    fn watch(&self, _key: &Hex64, round: u32) -> KeyChange {
        Box::pin(tokio::time::sleep(poll_interval(round)))
    }
    /// What `key` holds, for an operator (the admin API): state, fingerprint, record and times,
    /// an entry past its deadline but not yet dropped included. Changes nothing.
    async fn inspect(&self, key: &Hex64) -> Result<RecordState, BackendError>;
    /// Removes whatever `key` holds, whoever holds it, and says what that was (read and removal
    /// are one atomic step). A claim purged in flight becomes stale for its holder.
    async fn purge(&self, key: &Hex64) -> Result<RecordState, BackendError>;
    /// Checks that the store answers (readiness).
    async fn ping(&self) -> Result<(), BackendError>;
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// See [`Backend::watch`].
pub type KeyChange = Pin<Box<dyn Future<Output = ()> + Send>>;

/// First poll of a waiting claim on a polling backend.
pub const FIRST_POLL: Duration = Duration::from_millis(20);
/// Longest poll interval: how late at most a polling waiter sees a completion.
pub const MAX_POLL: Duration = Duration::from_millis(200);

/// 20, 40, 80, 160, then 200 ms: quick for short upstreams, then at most 5 reads a second.
pub fn poll_interval(round: u32) -> Duration {
    FIRST_POLL
        .saturating_mul(1u32 << round.min(4))
        .min(MAX_POLL)
}

/// Builds the configured backend. Redis backends connect lazily, so the service starts (and reports
/// not ready) while Redis is still down.
pub fn build(config: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    let tls = redis::Tls::from_config(config)?;
    Ok(match config.backend {
        BackendKind::Memory => Arc::new(memory::MemoryBackend::new(
            config.max_bytes,
            config.max_entries,
        )),
        BackendKind::Redis => Arc::new(redis::RedisBackend::single_with(
            &config.redis_urls,
            config.backend_timeout(),
            &tls,
        )?),
        BackendKind::RedisCluster => Arc::new(redis::RedisBackend::cluster_with(
            &config.redis_urls,
            config.backend_timeout(),
            &tls,
        )?),
    })
}
