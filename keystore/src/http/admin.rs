//! The admin API, `/admin/v1`: an operator reads what a record key holds and clears a stuck key.
//! It is mounted only with an admin token, which is its only credential: the `/v1` token never
//! opens it, and it never opens `/v1`. Every call is counted (`op` `admin_inspect` or
//! `admin_purge`) and logged with the key's 12-hex prefix only.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::bearer::{bearer_matches, unauthorized};
use super::{AppState, Failure};
use crate::metrics::Metrics;
use crate::protocol::{Hex64, PurgeResponse, RecordState};

const INSPECT: &str = "admin_inspect";
const PURGE: &str = "admin_purge";

/// What the admin API's authentication needs.
#[derive(Clone)]
struct Guard {
    token: Arc<[u8]>,
    metrics: Metrics,
}

/// The admin routes, behind `token`.
pub(super) fn router(state: &AppState, token: String) -> Router<AppState> {
    let guard = Guard {
        token: Arc::from(token.into_bytes()),
        metrics: state.metrics.clone(),
    };
    Router::new()
        .route("/records/{key}", get(inspect).delete(purge))
        .route_layer(middleware::from_fn_with_state(guard, authenticate))
}

async fn authenticate(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if !bearer_matches(&req, &g.token) {
        let op = if req.method() == Method::DELETE {
            PURGE
        } else {
            INSPECT
        };
        g.metrics.op(op, "unauthorized");
        tracing::warn!(op, "admin call refused: missing or wrong admin token");
        return unauthorized();
    }
    next.run(req).await
}

/// The state's name, the outcome label of the call.
fn label(state: &RecordState) -> &'static str {
    match state {
        RecordState::Absent => "absent",
        RecordState::InFlight { .. } => "in_flight",
        RecordState::Completed { .. } => "completed",
        RecordState::Expired { .. } => "expired",
    }
}

/// The record key from the path, or a 400 naming it.
fn record_key(s: &AppState, op: &str, key: &str) -> Result<Hex64, Failure> {
    Hex64::parse(key).ok_or_else(|| {
        s.metrics.op(op, "bad_request");
        Failure(
            StatusCode::BAD_REQUEST,
            "key: must be 64 lowercase hex characters".to_owned(),
        )
    })
}

/// The first 12 hex characters of a record key: enough to correlate log lines, nothing to reuse.
fn prefix(key: &Hex64) -> &str {
    key.as_str().get(..12).unwrap_or_default()
}

async fn inspect(State(s): State<AppState>, Path(key): Path<String>) -> Result<Response, Failure> {
    let key = record_key(&s, INSPECT, &key)?;
    let state = s.call(INSPECT, s.backend.inspect(&key)).await?;
    s.metrics.op(INSPECT, label(&state));
    tracing::info!(
        op = INSPECT,
        key = prefix(&key),
        state = label(&state),
        "admin call"
    );
    Ok(Json(state).into_response())
}

async fn purge(State(s): State<AppState>, Path(key): Path<String>) -> Result<Response, Failure> {
    let key = record_key(&s, PURGE, &key)?;
    let removed = s.call(PURGE, s.backend.purge(&key)).await?;
    s.metrics.op(PURGE, label(&removed));
    tracing::info!(
        op = PURGE,
        key = prefix(&key),
        removed = label(&removed),
        "admin call"
    );
    Ok(Json(PurgeResponse { removed }).into_response())
}
