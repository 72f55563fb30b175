//! HTTP layer: the router with its body limit, health, readiness and metrics; the v1 API
//! ([`v1`]) with its bodies read in bounded time and size ([`body`]), and the admin API
//! ([`admin`]) when an admin token is set, each behind its own bearer token ([`bearer`]).
//! Connections themselves (timeouts, caps, shutdown) are [`crate::server`]'s.

mod admin;
mod batch;
mod bearer;
mod body;
mod calls;
mod formats;
mod held;
mod v1;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{watch, Semaphore};

use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::ErrorBody;

/// What the HTTP layer needs besides the backend.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bearer token required on /v1 (`None`: open).
    pub token: Option<String>,
    /// Bearer token of the admin API (`None`: the admin API is off, 404).
    pub admin_token: Option<String>,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// Larger records (decoded) get 413 from `complete`.
    pub max_record_bytes: usize,
    /// Bound of one backend call; past it, 503. A waiting claim makes several calls, each with
    /// this bound, and waits between them without it.
    pub backend_timeout: Duration,
    /// Time to receive a whole request body; past it, 408.
    pub body_timeout: Duration,
    /// Most claims waiting at once; past it, a claim answers without waiting.
    pub max_waiters: usize,
    /// Most bytes of request bodies held at once; past it, 503.
    pub max_body_memory: usize,
    /// Ends the waits of waiting claims when the server stops.
    pub drain: Drain,
}

/// Tells waiting claims that the server is stopping, so that they answer (with a fresh read) at
/// once instead of holding up the drain for up to their `wait_ms`.
#[derive(Debug, Clone)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    /// A drain and the sender that starts it (`send(true)`).
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    /// Resolves once draining has started; never, if its sender is gone without starting it.
    async fn started(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Default for Drain {
    /// A drain that never starts.
    fn default() -> Self {
        Self(watch::channel(false).1)
    }
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Self {
        Self {
            // An empty KEYSTORE_TOKEN (a common templating leftover) means no token, not "".
            token: c.token.clone().filter(|t| !t.is_empty()),
            // `run` refuses an admin token equal to the /v1 token before this.
            admin_token: c.admin_token().unwrap_or_default(),
            // `run` refuses a --max-body-bytes too small for the largest record before this.
            max_body_bytes: c.body_limit().unwrap_or(usize::MAX),
            max_record_bytes: c.max_record_bytes,
            backend_timeout: c.backend_timeout(),
            body_timeout: crate::config::millis(c.body_timeout_ms),
            max_waiters: c.max_waiters,
            max_body_memory: c.max_body_memory,
            drain: Drain::default(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    backend: Arc<dyn Backend>,
    metrics: Metrics,
    /// The bearer token required on /v1.
    token: Option<Arc<[u8]>>,
    timeout: Duration,
    drain: Drain,
    max_record_bytes: usize,
    max_body_bytes: usize,
    body_timeout: Duration,
    /// One permit per claim allowed to wait.
    waiters: Arc<Semaphore>,
    /// One permit per KiB of request body held.
    body_memory: Arc<Semaphore>,
}

/// Builds the service's router.
pub fn router(backend: Arc<dyn Backend>, settings: Settings, metrics: Metrics) -> Router {
    routers(backend, settings, metrics).0
}

/// The service's router, and the router of the health listener: /healthz, /readyz and
/// /metrics only, on the same backend and metrics.
pub fn routers(
    backend: Arc<dyn Backend>,
    settings: Settings,
    metrics: Metrics,
) -> (Router, Router) {
    let state = AppState {
        backend,
        metrics,
        token: settings.token.map(|t| Arc::from(t.into_bytes())),
        timeout: settings.backend_timeout,
        drain: settings.drain,
        max_record_bytes: settings.max_record_bytes,
        max_body_bytes: settings.max_body_bytes,
        body_timeout: settings.body_timeout,
        waiters: Arc::new(Semaphore::new(settings.max_waiters)),
        body_memory: Arc::new(Semaphore::new(
            (settings.max_body_memory / 1024).min(Semaphore::MAX_PERMITS),
        )),
    };
    let health = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state.clone());
    let admin = settings.admin_token.map(|t| admin::router(&state, t));
    let v1 = v1::router(&state);
    let app = match admin {
        Some(admin) => Router::new().nest("/admin/v1", admin),
        None => Router::new(),
    };
    let app = app
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state);
    (app, health)
}

impl AppState {
    /// Runs one backend call with the time bound and metrics; a failure becomes a 503 response.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Failure> {
        let backend = self.backend.name();
        let start = Instant::now();
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout(
                u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            )),
        };
        self.metrics
            .backend_seconds
            .with_label_values(&[backend, op])
            .observe(start.elapsed().as_secs_f64());
        result.map_err(|e| {
            tracing::warn!(backend, op, error = %e, "backend call failed");
            self.metrics
                .backend_errors
                .with_label_values(&[backend, op])
                .inc();
            self.metrics.op(op, e.label());
            let message = match e {
                BackendError::Full(_) => e.to_string(),
                _ => format!("backend unavailable: {e}"),
            };
            Failure(StatusCode::SERVICE_UNAVAILABLE, message)
        })
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    Failure(status, message.into()).into_response()
}

/// A request that ends in an error answer: `{"error": "..."}` with this status.
#[derive(Debug)]
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    match tokio::time::timeout(s.timeout, s.backend.ping()).await {
        Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("backend unavailable: {e}"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend unavailable: ping timed out",
        ),
    }
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    match s.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
