//! A tiny in-memory payments API: the demo and test upstream of the idempotency filter.
//!
//! Endpoints (SPEC §10):
//! - `POST /payments` with a JSON body creates a payment and answers `201` with
//!   `{"id", "sequence", "request"}` (the request JSON echoed back) and a `Location` header.
//!   A body that is not JSON gets `400`.
//! - `GET /payments` lists every payment created, oldest first (a JSON array).
//! - `GET /payments/{id}` returns one payment, or `404`.
//! - `GET /_demo/stats` answers `{"post_requests": N, "payments": M}`: how many `POST /payments`
//!   requests reached this upstream (whatever their outcome) and how many payments exist, so tests
//!   can assert how many times the upstream really executed.
//!
//! Test knobs on `POST /payments` (request headers):
//! - `x-demo-delay-ms: N` waits N milliseconds (at most 60 s) before answering, to keep a request
//!   in flight.
//! - `x-demo-status: NNN` (200..=599) answers with that status and a JSON body and creates nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Longest delay honoured from `x-demo-delay-ms`.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// The API's state: every payment created and the count of `POST /payments` requests received.
#[derive(Debug, Default)]
pub struct Payments {
    post_requests: AtomicU64,
    payments: Mutex<Vec<Value>>,
}

impl Payments {
    /// Number of `POST /payments` requests received so far.
    pub fn post_requests(&self) -> u64 {
        self.post_requests.load(Ordering::SeqCst)
    }

    /// A snapshot of the payments created so far, oldest first.
    pub fn list(&self) -> Vec<Value> {
        self.payments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The router with fresh, empty state.
pub fn app() -> Router {
    app_with_state(Arc::new(Payments::default()))
}

/// The router over the given state (lets a caller inspect it).
pub fn app_with_state(state: Arc<Payments>) -> Router {
    Router::new()
        .route("/payments", get(list_payments).post(create_payment))
        .route("/payments/{id}", get(get_payment))
        .route("/_demo/stats", get(stats))
        .with_state(state)
}

/// A JSON error body with the given status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A header's value as text, if present and visible ASCII.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn create_payment(
    State(state): State<Arc<Payments>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.post_requests.fetch_add(1, Ordering::SeqCst);

    if let Some(raw) = header_text(&headers, "x-demo-delay-ms") {
        match raw.trim().parse::<u64>() {
            Ok(ms) => tokio::time::sleep(Duration::from_millis(ms).min(MAX_DELAY)).await,
            Err(_) => return error(StatusCode::BAD_REQUEST, "x-demo-delay-ms: not an integer"),
        }
    }

    if let Some(raw) = headers.get("x-demo-status") {
        let status = raw
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|code| (200..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok());
        return match status {
            Some(status) => (
                status,
                Json(json!({
                    "status": status.as_u16(),
                    "detail": "status forced by x-demo-status; no payment created",
                })),
            )
                .into_response(),
            None => error(
                StatusCode::BAD_REQUEST,
                "x-demo-status: expected a status code from 200 to 599",
            ),
        };
    }

    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {err}")),
    };

    let payment = {
        let mut payments = state
            .payments
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let payment = json!({
            "id": format!("pay_{}", uuid::Uuid::new_v4().simple()),
            "sequence": payments.len() + 1,
            "request": request,
        });
        payments.push(payment.clone());
        payment
    };
    let location = format!("/payments/{}", payment["id"].as_str().unwrap_or_default());
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(payment),
    )
        .into_response()
}

async fn list_payments(State(state): State<Arc<Payments>>) -> Json<Vec<Value>> {
    Json(state.list())
}

async fn get_payment(State(state): State<Arc<Payments>>, Path(id): Path<String>) -> Response {
    match state.list().into_iter().find(|p| p["id"] == id.as_str()) {
        Some(payment) => Json(payment).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such payment"),
    }
}

async fn stats(State(state): State<Arc<Payments>>) -> Json<Value> {
    let payments = state.list().len();
    Json(json!({ "post_requests": state.post_requests(), "payments": payments }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    fn post() -> axum::http::request::Builder {
        Request::post("/payments").header("content-type", "application/json")
    }

    #[tokio::test]
    async fn creates_lists_and_counts() {
        let state = Arc::new(Payments::default());
        let app = app_with_state(state.clone());
        let body = r#"{"amount":100}"#;
        let (status, headers, first) = call(&app, post().body(Body::from(body)).unwrap()).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(first["request"], json!({"amount": 100}));
        assert_eq!(first["sequence"], 1);
        let id = first["id"].as_str().unwrap().to_owned();
        assert_eq!(headers[header::LOCATION], format!("/payments/{id}"));

        let (_, _, second) = call(&app, post().body(Body::from(body)).unwrap()).await;
        assert_ne!(second["id"], first["id"]);
        assert_eq!(second["sequence"], 2);

        let (status, _, list) =
            call(&app, Request::get("/payments").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list, json!([first, second]));

        let (_, _, one) = call(
            &app,
            Request::get(format!("/payments/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(one, first);

        let (_, _, stats) = call(
            &app,
            Request::get("/_demo/stats").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(stats, json!({"post_requests": 2, "payments": 2}));
    }

    #[tokio::test]
    async fn invalid_json_and_forced_status_create_nothing() {
        let app = app();
        let (status, _, body) = call(&app, post().body(Body::from("{not json")).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("invalid JSON"));

        let req = post()
            .header("x-demo-status", "503")
            .body(Body::from("{}"))
            .unwrap();
        let (status, _, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], 503);

        let req = post()
            .header("x-demo-status", "abc")
            .body(Body::from("{}"))
            .unwrap();
        assert_eq!(call(&app, req).await.0, StatusCode::BAD_REQUEST);

        let (_, _, stats) = call(
            &app,
            Request::get("/_demo/stats").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(stats, json!({"post_requests": 3, "payments": 0}));
    }

    #[tokio::test]
    async fn delay_header_delays_the_answer() {
        let app = app();
        let started = std::time::Instant::now();
        let req = post()
            .header("x-demo-delay-ms", "300")
            .body(Body::from("{}"))
            .unwrap();
        assert_eq!(call(&app, req).await.0, StatusCode::CREATED);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
