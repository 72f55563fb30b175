//! HTTP layer: the v1 routes, bearer authentication, body limit, health, readiness and metrics;
//! the admin API ([`admin`]) when an admin token is set.

mod admin;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::backend::{Backend, BackendError, ClaimOutcome, Fenced, LookupOutcome};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{
    ClaimAnswer, ClaimRequest, ClaimResponse, Compact, CompleteRequest, ErrorBody, FencedResponse,
    Format, LookupRequest, LookupResponse, ReleaseRequest, RenewBatchRequest, RenewBatchResponse,
    RenewOutcome, RenewRequest, Request as WireRequest,
};

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
}

/// Builds the service's router.
pub fn router(backend: Arc<dyn Backend>, settings: Settings, metrics: Metrics) -> Router {
    let state = AppState {
        backend,
        metrics,
        token: settings.token.map(|t| Arc::from(t.into_bytes())),
        timeout: settings.backend_timeout,
        drain: settings.drain,
        max_record_bytes: settings.max_record_bytes,
    };
    let admin = settings.admin_token.map(|t| admin::router(&state, t));
    let v1 = Router::new()
        .route("/claim", post(claim))
        .route("/lookup", post(lookup))
        .route("/complete", post(complete))
        .route("/release", post(release))
        .route("/renew", post(renew))
        .route("/renew-batch", post(renew_batch))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let app = match admin {
        Some(admin) => Router::new().nest("/admin/v1", admin),
        None => Router::new(),
    };
    app.nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state)
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

/// Compares without an early exit, so response time does not leak how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `req` carries `Authorization: Bearer <expected>`. The scheme is case-insensitive
/// (RFC 9110 §11.1); the token is compared exactly, in constant time.
fn bearer_matches(req: &Request, expected: &[u8]) -> bool {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.as_bytes())
        .unwrap_or_default();
    constant_time_eq(given, expected)
}

/// The 401 of a missing or wrong bearer token.
fn unauthorized() -> Response {
    let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(expected) = &s.token {
        if !bearer_matches(&req, expected) {
            s.metrics.op(op_of(req.uri().path()), "unauthorized");
            return unauthorized();
        }
    }
    next.run(req).await
}

/// The operation label of a /v1 path (route_layer only sees our routes).
fn op_of(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("renew-batch") => "renew_batch",
        Some("claim") => "claim",
        Some("complete") => "complete",
        Some("renew") => "renew",
        Some("lookup") => "lookup",
        _ => "release",
    }
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
            self.metrics.op(op, "error");
            Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("backend unavailable: {e}"),
            )
        })
    }

    /// Claims; while the key is in flight with this fingerprint, waits (at most `wait_ms`) for it
    /// to be completed, released or to expire, and claims again. The last read comes after the
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
            // Nobody announces a lease running out: wake at its end to take the key over.
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

async fn claim(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let req: ClaimRequest = s.parse("claim", format, body)?;
    let (outcome, waited) = if req.wait_ms == 0 {
        (s.call("claim", s.backend.claim(&req)).await?, false)
    } else {
        s.claim_waiting(&req).await?
    };
    let (label, response) = match outcome {
        ClaimOutcome::Claimed { token } => ("claimed", ClaimResponse::Claimed { token }),
        ClaimOutcome::InFlight { retry_after_ms } => {
            ("in_flight", ClaimResponse::InFlight { retry_after_ms })
        }
        ClaimOutcome::Completed { record } => ("completed", ClaimResponse::Completed { record }),
        ClaimOutcome::Mismatch => ("mismatch", ClaimResponse::Mismatch),
    };
    s.metrics.op("claim", label);
    // A claim that was held says so (`waited`), for the caller's wait metrics.
    Ok(answer(
        reply,
        StatusCode::OK,
        &ClaimAnswer { response, waited },
    ))
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
