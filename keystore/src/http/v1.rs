//! The v1 API, `/v1`: claim, lookup, complete, release and renew, each a body in JSON or the
//! compact format answered in the format the caller reads, behind the `/v1` bearer token.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Serialize;

use super::bearer::{bearer_matches, unauthorized};
use super::{AppState, Failure};
use crate::backend::{ClaimOutcome, Fenced, LookupOutcome};
use crate::protocol::{
    ClaimAnswer, ClaimRequest, ClaimResponse, Compact, CompleteRequest, FencedResponse, Format,
    LookupRequest, LookupResponse, ReleaseRequest, RenewBatchRequest, RenewBatchResponse,
    RenewOutcome, RenewRequest, Request as WireRequest, ABANDONED_RETRY_AFTER_MS,
};

/// The v1 routes, behind the `/v1` token when one is set.
pub(super) fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/claim", post(claim))
        .route("/lookup", post(lookup))
        .route("/complete", post(complete))
        .route("/release", post(release))
        .route("/renew", post(renew))
        .route("/renew-batch", post(renew_batch))
        // Bodies are read (bounded) only once the caller is authenticated.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::body::read_whole,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
}

async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(expected) = &s.token {
        if !bearer_matches(&req, expected) {
            s.metrics
                .op(super::body::op_of(req.uri().path()), "unauthorized");
            return unauthorized();
        }
    }
    next.run(req).await
}

/// The formats of a request body (its `content-type`; JSON when it names neither) and of the
/// answer (`accept`, when it names one, else the request's).
fn formats(headers: &HeaderMap) -> (Format, Format) {
    let named = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| Format::of_media_type(v.as_bytes()))
    };
    let request = named(header::CONTENT_TYPE).unwrap_or_default();
    (request, named(header::ACCEPT).unwrap_or(request))
}

/// A 2xx or 409 answer in the format the caller reads.
fn answer<T: Serialize + Compact>(format: Format, status: StatusCode, body: &T) -> Response {
    let content_type = HeaderValue::from_static(format.content_type());
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        format.encode(body),
    )
        .into_response()
}

impl AppState {
    /// Reads and validates a body in `format`, or answers 400/413 naming the problem.
    fn parse<T: WireRequest + Compact>(
        &self,
        op: &str,
        format: Format,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<T, Failure> {
        let outcome = match body {
            Err(rejection) => Err((
                rejection.status(),
                format!("body: {}", rejection.body_text()),
            )),
            Ok(bytes) => format
                .decode_request(&bytes)
                .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string())),
        };
        outcome.map_err(|(status, message)| {
            let label = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "bad_request"
            };
            self.metrics.op(op, label);
            Failure(status, message)
        })
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

    fn fenced(&self, op: &str, format: Format, result: Fenced, done: FencedResponse) -> Response {
        let (status, body) = match result {
            Fenced::Done => (StatusCode::OK, done),
            Fenced::Stale => (StatusCode::CONFLICT, FencedResponse::Stale),
        };
        let label = match body {
            FencedResponse::Stored => "stored",
            FencedResponse::Released => "released",
            FencedResponse::Renewed => "renewed",
            FencedResponse::Stale => "stale",
        };
        self.metrics.op(op, label);
        answer(format, status, &body)
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

async fn claim(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: ClaimRequest = s.parse("claim", format, body)?;
    // Past --max-waiters, a claim answers at once, as with `wait_ms` 0.
    let permit = match req.wait_ms {
        0 => None,
        _ => match s.waiters.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                s.metrics.waiters_refused.inc();
                None
            }
        },
    };
    let (outcome, waited) = match permit {
        None => (s.call("claim", s.backend.claim(&req)).await?, false),
        Some(_permit) => {
            let _counted = Waiting::new(&s.metrics.waiters);
            s.claim_waiting(&req).await?
        }
    };
    let (label, response) = match outcome {
        ClaimOutcome::Claimed { token } => ("claimed", ClaimResponse::Claimed { token }),
        ClaimOutcome::InFlight { retry_after_ms } => {
            ("in_flight", ClaimResponse::InFlight { retry_after_ms })
        }
        ClaimOutcome::Completed { record } => ("completed", ClaimResponse::Completed { record }),
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
    s.metrics.op("claim", label);
    // A claim that was held says so (`waited`), for the caller's wait metrics.
    Ok(answer(
        reply,
        StatusCode::OK,
        &ClaimAnswer { response, waited },
    ))
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

async fn lookup(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: LookupRequest = s.parse("lookup", format, body)?;
    let outcome = s.call("lookup", s.backend.lookup(&req)).await?;
    let (label, body) = match outcome {
        LookupOutcome::Absent => ("absent", LookupResponse::Absent),
        LookupOutcome::InFlight { retry_after_ms } => {
            ("in_flight", LookupResponse::InFlight { retry_after_ms })
        }
        LookupOutcome::Completed { record } => ("completed", LookupResponse::Completed { record }),
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
    s.metrics.op("lookup", label);
    Ok(answer(reply, StatusCode::OK, &body))
}

async fn complete(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: CompleteRequest = s.parse("complete", format, body)?;
    if req.record.len() > s.max_record_bytes {
        s.metrics.op("complete", "too_large");
        return Err(Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "record: {} bytes, over the key store's --max-record-bytes {}",
                req.record.len(),
                s.max_record_bytes
            ),
        ));
    }
    let result = s.call("complete", s.backend.complete(&req)).await?;
    Ok(s.fenced("complete", reply, result, FencedResponse::Stored))
}

async fn release(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: ReleaseRequest = s.parse("release", format, body)?;
    let result = s.call("release", s.backend.release(&req)).await?;
    Ok(s.fenced("release", reply, result, FencedResponse::Released))
}

async fn renew(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: RenewRequest = s.parse("renew", format, body)?;
    let result = s.call("renew", s.backend.renew(&req)).await?;
    Ok(s.fenced("renew", reply, result, FencedResponse::Renewed))
}

/// Several renewals at once (a filter's claims due in one tick): always 200, with one outcome per
/// renewal in order, each counted as `renew_batch` `renewed` or `stale`; a backend failure is one
/// 503 for the whole batch.
async fn renew_batch(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: RenewBatchRequest = s.parse("renew_batch", format, body)?;
    let results = s
        .call("renew_batch", s.backend.renew_batch(&req.renewals))
        .await?;
    let outcomes = results
        .into_iter()
        .map(|result| {
            let (label, outcome) = match result {
                Fenced::Done => ("renewed", RenewOutcome::Renewed),
                Fenced::Stale => ("stale", RenewOutcome::Stale),
            };
            s.metrics.op("renew_batch", label);
            outcome
        })
        .collect();
    Ok(answer(
        reply,
        StatusCode::OK,
        &RenewBatchResponse { outcomes },
    ))
}
