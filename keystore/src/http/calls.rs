//! What each v1 call answers once its request is read and valid, with its metrics: shared by the
//! call's own endpoint ([`super::v1`]) and by the batch ([`super::batch`]), so an entry of a batch
//! is answered exactly as the single call would be.

use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::{AppState, Failure};
use crate::backend::{ClaimOutcome, Fenced, LookupOutcome};
use crate::protocol::{
    ClaimAnswer, ClaimRequest, ClaimResponse, CompleteRequest, FencedResponse, LookupRequest,
    LookupResponse, ReleaseRequest, RenewRequest, ABANDONED_RETRY_AFTER_MS,
};

impl AppState {
    /// A claim's answer; one with `wait_ms` waits (below) unless `--max-waiters` claims already
    /// do, in which case it answers at once, as with `wait_ms` 0.
    pub(super) async fn claim_answer(&self, req: &ClaimRequest) -> Result<ClaimAnswer, Failure> {
        let permit = match req.wait_ms {
            0 => None,
            _ => match self.waiters.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.metrics.waiters_refused.inc();
                    None
                }
            },
        };
        let (outcome, waited) = match permit {
            None => (self.call("claim", self.backend.claim(req)).await?, false),
            Some(_permit) => {
                let _counted = Waiting::new(&self.metrics.waiters);
                self.claim_waiting(req).await?
            }
        };
        let (label, response) = match outcome {
            ClaimOutcome::Claimed { token } => ("claimed", ClaimResponse::Claimed { token }),
            ClaimOutcome::InFlight { retry_after_ms } => {
                ("in_flight", ClaimResponse::InFlight { retry_after_ms })
            }
            ClaimOutcome::Completed { record } => {
                ("completed", ClaimResponse::Completed { record })
            }
            ClaimOutcome::Mismatch => ("mismatch", ClaimResponse::Mismatch),
            ClaimOutcome::Abandoned { lease_ended_ms_ago } => (
                "abandoned",
                abandoned(req.abandoned.is_some(), lease_ended_ms_ago, |ms| {
                    ClaimResponse::Abandoned {
                        lease_ended_ms_ago: ms,
                    }
                })
                .unwrap_or(ClaimResponse::InFlight {
                    retry_after_ms: ABANDONED_RETRY_AFTER_MS,
                }),
            ),
        };
        self.metrics.op("claim", label);
        // A claim that was held says so (`waited`), for the caller's wait metrics.
        Ok(ClaimAnswer { response, waited })
    }

    /// Claims; while the key is in flight with this fingerprint, waits (at most `wait_ms`) for it
    /// to be completed, released or abandoned, and claims again. The last read comes after the
    /// wait, so an `in_flight` answer is fresh; the whole is bounded by `wait_ms` plus one call.
    /// Also says whether the request was held at all (`waited`).
    async fn claim_waiting(&self, req: &ClaimRequest) -> Result<(ClaimOutcome, bool), Failure> {
        let mut deadline = Instant::now() + Duration::from_millis(req.wait_ms);
        let mut round = 0u32;
        loop {
            // Registered before the read, so a completion right after it still wakes us.
            let change = self.backend.watch(&req.key, round);
            let outcome = self.call("claim", self.backend.claim(req)).await?;
            let ClaimOutcome::InFlight { retry_after_ms } = outcome else {
                return Ok((outcome, round > 0));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((outcome, round > 0));
            }
            // Nobody announces a lease running out: wake at its end to take the key over or to
            // report it abandoned.
            let nap = left.min(Duration::from_millis(retry_after_ms));
            tokio::select! {
                // Elapsed or woken, the next read tells which.
                _ = tokio::time::timeout(nap, change) => {}
                () = self.drain.started() => deadline = Instant::now(),
            }
            round = round.saturating_add(1);
        }
    }

    /// A lookup's answer.
    pub(super) async fn lookup_answer(
        &self,
        req: &LookupRequest,
    ) -> Result<LookupResponse, Failure> {
        let outcome = self.call("lookup", self.backend.lookup(req)).await?;
        let (label, body) = match outcome {
            LookupOutcome::Absent => ("absent", LookupResponse::Absent),
            LookupOutcome::InFlight { retry_after_ms } => {
                ("in_flight", LookupResponse::InFlight { retry_after_ms })
            }
            LookupOutcome::Completed { record } => {
                ("completed", LookupResponse::Completed { record })
            }
            LookupOutcome::Mismatch => ("mismatch", LookupResponse::Mismatch),
            LookupOutcome::Abandoned { lease_ended_ms_ago } => (
                "abandoned",
                abandoned(req.abandoned.is_some(), lease_ended_ms_ago, |ms| {
                    LookupResponse::Abandoned {
                        lease_ended_ms_ago: ms,
                    }
                })
                .unwrap_or(LookupResponse::InFlight {
                    retry_after_ms: ABANDONED_RETRY_AFTER_MS,
                }),
            ),
        };
        self.metrics.op("lookup", label);
        Ok(body)
    }

    /// A complete's answer (`stale` goes out with 409); a record over `--max-record-bytes` is a
    /// 413 before the backend is asked.
    pub(super) async fn complete_answer(
        &self,
        req: &CompleteRequest,
    ) -> Result<FencedResponse, Failure> {
        if req.record.len() > self.max_record_bytes {
            self.metrics.op("complete", "too_large");
            return Err(Failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "record: {} bytes, over the key store's --max-record-bytes {}",
                    req.record.len(),
                    self.max_record_bytes
                ),
            ));
        }
        let result = self.call("complete", self.backend.complete(req)).await?;
        Ok(self.fenced("complete", result, FencedResponse::Stored))
    }

    /// A release's answer (`stale` goes out with 409).
    pub(super) async fn release_answer(
        &self,
        req: &ReleaseRequest,
    ) -> Result<FencedResponse, Failure> {
        let result = self.call("release", self.backend.release(req)).await?;
        Ok(self.fenced("release", result, FencedResponse::Released))
    }

    /// A renew's answer (`stale` goes out with 409).
    pub(super) async fn renew_answer(&self, req: &RenewRequest) -> Result<FencedResponse, Failure> {
        let result = self.call("renew", self.backend.renew(req)).await?;
        Ok(self.fenced("renew", result, FencedResponse::Renewed))
    }

    fn fenced(&self, op: &str, result: Fenced, done: FencedResponse) -> FencedResponse {
        let body = match result {
            Fenced::Done => done,
            Fenced::Stale => FencedResponse::Stale,
        };
        let label = match body {
            FencedResponse::Stored => "stored",
            FencedResponse::Released => "released",
            FencedResponse::Renewed => "renewed",
            FencedResponse::Stale => "stale",
        };
        self.metrics.op(op, label);
        body
    }
}

/// The status a fenced answer goes out with: 409 for `stale`, else 200.
pub(super) fn fenced_status(body: FencedResponse) -> StatusCode {
    match body {
        FencedResponse::Stale => StatusCode::CONFLICT,
        _ => StatusCode::OK,
    }
}

/// A waiting claim, counted in `keystore_waiters` until it ends, answered or dropped.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `abandoned` answer for a caller that declared it understands it (it named an `abandoned`
/// policy); `None` for an older caller, which gets `in_flight` instead and so fails closed (409,
/// the key not executed again) rather than reading an answer it cannot parse.
fn abandoned<T>(
    understood: bool,
    lease_ended_ms_ago: u64,
    answer: impl FnOnce(u64) -> T,
) -> Option<T> {
    understood.then(|| answer(lease_ended_ms_ago))
}
