//! The v1 API, `/v1`: claim, lookup, complete, release, renew and renew-batch (and the batch of
//! [`super::batch`]), each a body in JSON or the
//! compact format answered in the format the caller reads, behind the `/v1` bearer token.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::bearer::{bearer_matches, unauthorized};
use super::calls::fenced_status;
use super::formats::{answer, formats};
use super::{AppState, Failure};
use crate::backend::Fenced;
use crate::protocol::{
    ClaimRequest, Compact, CompleteRequest, Format, LookupRequest, ReleaseRequest,
    RenewBatchRequest, RenewBatchResponse, RenewOutcome, RenewRequest, Request as WireRequest,
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
        .route("/batch", post(super::batch::batch))
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

impl AppState {
    /// Reads and validates a body in `format`, or answers 400/413 naming the problem.
    fn parse<T: WireRequest + Compact>(
        &self,
        op: &str,
        format: Format,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<T, Failure> {
        let bytes = self.body_or_failure(op, body)?;
        format.decode_request(&bytes).map_err(|e| {
            self.metrics.op(op, "bad_request");
            Failure(StatusCode::BAD_REQUEST, e.to_string())
        })
    }
}

async fn claim(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: ClaimRequest = s.parse("claim", format, body)?;
    let body = s.claim_answer(&req).await?;
    Ok(answer(reply, StatusCode::OK, &body))
}

async fn lookup(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: LookupRequest = s.parse("lookup", format, body)?;
    let body = s.lookup_answer(&req).await?;
    Ok(answer(reply, StatusCode::OK, &body))
}

async fn complete(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: CompleteRequest = s.parse("complete", format, body)?;
    let body = s.complete_answer(&req).await?;
    Ok(answer(reply, fenced_status(body), &body))
}

async fn release(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: ReleaseRequest = s.parse("release", format, body)?;
    let body = s.release_answer(&req).await?;
    Ok(answer(reply, fenced_status(body), &body))
}

async fn renew(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: RenewRequest = s.parse("renew", format, body)?;
    let body = s.renew_answer(&req).await?;
    Ok(answer(reply, fenced_status(body), &body))
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
