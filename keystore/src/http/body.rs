//! Reading a `/v1` request body, bounded in time and size before the handler sees it.
//!
//! A body must arrive whole within `--body-timeout-ms` of its headers (else 408), and within its
//! route's size: a `complete` or a `batch` carries records (up to `--max-body-bytes`), a `renew-batch` at most
//! [`MAX_RENEW_BATCH`] renewals, every other call a few hundred bytes. A declared
//! `content-length` past the bound is refused before a byte of the body is read; a body without
//! one is cut at the bound. Bodies held at once are bounded in bytes too (`--max-body-memory`):
//! a body is counted at its declared length (its route's bound when it declares none) from its
//! headers to the end of its answer, and one that does not fit gets 503 at once rather than
//! memory. Large answers are counted in the same budget until written ([`super::held`]). While
//! the server drains, a body still arriving gets 503 at once.

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::{AppState, Failure};
use crate::protocol::MAX_RENEW_BATCH;

/// Largest body of a call that carries no record: a claim, lookup, release or renew is under
/// 1 KiB; the rest leaves room for fields a newer filter may add.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Largest `renew-batch` body: 2 KiB a renewal (a renew is ~150 bytes of JSON with the filter's
/// 32-character tokens; 256-character tokens written as `\u` escapes stay under it).
pub const RENEW_BATCH_BODY_BYTES: usize = MAX_RENEW_BATCH * 2048;

/// The metrics label of a batch (and of the envelope's own failures).
pub(super) const BATCH_OP: &str = "batch";

/// The operation label of a /v1 path (route_layer only sees our routes), for the metrics.
pub(super) fn op_of(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("renew-batch") => "renew_batch",
        Some("batch") => BATCH_OP,
        Some("claim") => "claim",
        Some("complete") => "complete",
        Some("renew") => "renew",
        Some("lookup") => "lookup",
        _ => "release",
    }
}

impl AppState {
    /// The body as read by the body layer, or the 400/413 it was refused with.
    pub(super) fn body_or_failure(
        &self,
        op: &str,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Bytes, Failure> {
        body.map_err(|rejection| {
            let status = rejection.status();
            let label = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "bad_request"
            };
            self.metrics.op(op, label);
            Failure(status, format!("body: {}", rejection.body_text()))
        })
    }

    /// The body bound of the `/v1` call at `path`.
    fn body_limit(&self, path: &str) -> usize {
        match path.rsplit('/').next() {
            Some("complete" | "batch") => self.max_body_bytes,
            Some("renew-batch") => RENEW_BATCH_BODY_BYTES.min(self.max_body_bytes),
            _ => SMALL_BODY_BYTES.min(self.max_body_bytes),
        }
    }
}

/// Reads the whole body (bounded), then hands the request on with it.
pub(super) async fn read_whole(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let limit = s.body_limit(req.uri().path());
    let op = op_of(req.uri().path());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        s.metrics.op(op, "too_large");
        return too_large(limit);
    }
    let kib = declared
        .map_or(limit, |n| usize::try_from(n).unwrap_or(limit))
        .div_ceil(1024);
    let Ok(_held) = s
        .body_memory
        .clone()
        .try_acquire_many_owned(u32::try_from(kib).unwrap_or(u32::MAX))
    else {
        s.metrics.op(op, "body_memory_full");
        return Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "body: too many request bodies held at once (--max-body-memory)".into(),
        )
        .into_response();
    };
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, limit).collect();
    let bytes: Bytes = tokio::select! {
        // A body already here is read even while draining.
        biased;
        read = tokio::time::timeout(s.body_timeout, read) => match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<LengthLimitError>() => {
                s.metrics.op(op, "too_large");
                return too_large(limit);
            }
            Ok(Err(e)) => {
                s.metrics.op(op, "bad_request");
                return Failure(StatusCode::BAD_REQUEST, format!("body: {e}")).into_response();
            }
            Err(_) => {
                s.metrics.timeout("body");
                s.metrics.op(op, "body_timeout");
                return Failure(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "body: not received within --body-timeout-ms {}",
                        s.body_timeout.as_millis()
                    ),
                )
                .into_response();
            }
        },
        () = s.drain.started() => {
            s.metrics.timeout("shutdown");
            return Failure(StatusCode::SERVICE_UNAVAILABLE, "body: the key store is stopping".into())
                .into_response();
        }
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    hold_answer(&s, op, response).await
}

/// A large answer takes its bytes from the same budget until it is written ([`super::held`]).
async fn hold_answer(s: &AppState, op: &str, response: Response) -> Response {
    let large = http_body::Body::size_hint(response.body())
        .exact()
        .is_some_and(|n| n >= super::held::HELD_FROM as u64);
    if !large {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The handler's answer is already whole in memory: collecting it copies nothing.
    let Ok(collected) = body.collect().await else {
        return Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "answer: unreadable".into(),
        )
        .into_response();
    };
    let bytes = collected.to_bytes();
    let kib = u32::try_from(bytes.len().div_ceil(1024)).unwrap_or(u32::MAX);
    match s.body_memory.clone().try_acquire_many_owned(kib) {
        Ok(permit) => Response::from_parts(parts, super::held::Held::body(bytes, permit)),
        Err(_) => {
            s.metrics.op(op, "body_memory_full");
            Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "answer: too many large answers not yet read (--max-body-memory)".into(),
            )
            .into_response()
        }
    }
}

fn too_large(limit: usize) -> Response {
    Failure(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body: over this call's limit of {limit} bytes"),
    )
    .into_response()
}
