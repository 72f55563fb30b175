//! Fast failure while Redis is unreachable. After a call fails for want of a connection (refused,
//! dropped, timed out, or abandoned by the caller's time bound), calls fail at once, without
//! touching the socket, until a backoff has passed (50 ms, doubling to 2 s, with jitter); then one
//! call at a time goes through as a probe, and the first that reaches Redis closes the breaker. A
//! request during an outage thus gets its 503 in microseconds instead of after a reconnect round,
//! and a dead Redis sees one attempt per backoff instead of one per request.
//!
//! Only the single-node backend has one: a cluster connection reaches several nodes, and one
//! node down must not fail the calls bound for the others.
//!
//! An answer from Redis, even an error (`OOM`, `NOSCRIPT`, a script error), counts as reachable:
//! the breaker is about connections, not about what Redis answers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct State {
    /// While set, calls fail at once until this instant.
    open_until: Option<Instant>,
    backoff: Duration,
    /// A probe is out: other calls keep failing at once until it returns.
    probing: bool,
}

/// The connection state shared by every clone of a backend's connection (`None`: no breaker,
/// every call goes through).
#[derive(Debug, Clone, Default)]
pub struct Breaker(Option<Arc<Mutex<State>>>);

/// Leave to make one call; dropped without [`Pass::finish`] (the caller's time bound abandoned
/// the call) it counts as a failure to reach Redis.
pub struct Pass {
    breaker: Breaker,
    finished: bool,
}

impl Breaker {
    /// A breaker that fails fast.
    pub fn new() -> Self {
        Self(Some(Arc::default()))
    }

    fn state(&self) -> Option<std::sync::MutexGuard<'_, State>> {
        let m = self.0.as_ref()?;
        Some(m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Leave for a call, or the error to answer at once.
    pub fn admit(&self) -> Result<Pass, RedisError> {
        let pass = || Pass {
            breaker: self.clone(),
            finished: false,
        };
        let Some(mut s) = self.state() else {
            return Ok(pass());
        };
        if let Some(until) = s.open_until {
            let now = Instant::now();
            if now < until || s.probing {
                let left = until.saturating_duration_since(now).as_millis();
                return Err(RedisError::from((
                    ErrorKind::IoError,
                    "unreachable",
                    format!("failing fast, next connection attempt in {left} ms"),
                )));
            }
            s.probing = true;
        }
        Ok(pass())
    }

    fn reached(&self, reached: bool) {
        let Some(mut s) = self.state() else {
            return;
        };
        s.probing = false;
        if reached {
            if s.open_until.take().is_some() {
                tracing::info!("redis reachable again");
            }
            s.backoff = Duration::ZERO;
            return;
        }
        s.backoff = (s.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        // Up to a quarter more, so that key stores restarted together do not probe in step.
        let jitter = s.backoff.mul_f64(rand::random::<f64>() / 4.0);
        if s.open_until.is_none() {
            tracing::warn!("redis unreachable: failing fast, reconnecting with backoff");
        }
        s.open_until = Some(Instant::now() + s.backoff + jitter);
    }
}

/// Whether an error says the connection, not Redis, failed.
pub fn unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout()
}

impl Pass {
    /// Records how the call went.
    pub fn finish<T>(mut self, result: &RedisResult<T>) {
        self.finished = true;
        self.breaker
            .reached(!result.as_ref().is_err_and(unreachable));
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.finished {
            self.breaker.reached(false);
        }
    }
}

/// A connection whose calls go through the breaker.
#[derive(Clone)]
pub struct Guarded<C> {
    pub inner: C,
    pub breaker: Breaker,
}

impl<C: ConnectionLike + Send> ConnectionLike for Guarded<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let pass = self.breaker.admit()?;
            let result = self.inner.req_packed_command(cmd).await;
            pass.finish(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let pass = self.breaker.admit()?;
            let result = self.inner.req_packed_commands(cmd, offset, count).await;
            pass.finish(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fails_fast_after_a_failure_then_lets_one_probe_through() {
        let b = Breaker::new();
        let pass = b.admit().unwrap();
        drop(pass); // abandoned: a failure
        let e = b.admit().err().unwrap();
        assert!(e.to_string().contains("failing fast"), "{e}");
        std::thread::sleep(FIRST_BACKOFF + FIRST_BACKOFF / 4 + Duration::from_millis(5));
        let probe = b.admit().unwrap();
        assert!(b.admit().is_err(), "a second call while the probe is out");
        probe.finish::<()>(&Ok(()));
        assert!(b.admit().is_ok());
    }
}
