//! A tiny in-memory payments API: the demo and test upstream of the idempotency filter.
//!
//! Endpoints:
//! - `POST /payments` with a JSON body creates a payment and answers `201` with
//!   `{"id", "sequence", "request"}` (the request JSON echoed back) and a `Location` header.
//!   A body that is not JSON gets `400`.
//! - `GET /payments` lists every payment created, oldest first (a JSON array).
//! - `GET /payments/{id}` returns one payment, or `404`.
//! - `POST /_demo/echo` answers `200` with the request body byte for byte (same `content-type`),
//!   every request header named `x-echo-*` sent back (repeated ones repeated), and two
//!   `set-cookie` fields: a byte-exact mirror for tests of replays. Counted in `echo_requests`.
//! - `GET /_demo/stats` answers `{"post_requests": N, "payments": M}`: how many `POST /payments`
//!   requests reached this upstream (whatever their outcome) and how many payments exist, so tests
//!   can assert how many times the upstream really executed.
//!
//! Like a real server, `POST /payments` finishes its work once it has arrived: the work runs in a
//! task of its own, so a caller that goes away (a timeout, a reset) does not stop it.
//!
//! Test knobs on `POST /payments` (request headers; a bad value gets `400` and does nothing):
//! - `x-demo-delay-ms: N` waits N milliseconds (at most 60 s) before the work, to keep a request
//!   in flight.
//! - `x-demo-status: NNN` (200..=599) answers with that status and a JSON body and creates nothing.
//! - `x-demo-reset: after-work` does the work (creates the payment), then resets the connection
//!   without answering: the client reads no response byte, only `ECONNRESET` (the socket is closed
//!   with `SO_LINGER` 0, which sends a TCP RST). It needs the connection, so it works under
//!   [`serve`] only; elsewhere (e.g. `axum::serve`) it answers `500` after the work.
//! - `x-demo-set-cookie: V` adds `Set-Cookie: V` to the answer, as an application that opens a
//!   session with its response does.
//! - `x-demo-body-cut: N` does the work, sends the status line and headers (with the full
//!   `Content-Length`), then the first N bytes of the body (at most all but its last byte), then
//!   closes the connection: the client sees the head, then an incomplete body.

mod knobs;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::Service as _;

use crate::knobs::{cut_body, After, Knobs};

/// The API's state: every payment created and the count of `POST /payments` requests received.
#[derive(Debug, Default)]
pub struct Payments {
    post_requests: AtomicU64,
    echo_requests: AtomicU64,
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
        .route("/_demo/echo", axum::routing::post(echo))
        .with_state(state)
}

/// Serves `app` over HTTP/1.1 until `shutdown` resolves, then lets open connections finish.
///
/// Unlike `axum::serve`, each request carries a handle on its connection, which is what lets
/// `x-demo-reset` reset it.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    eprintln!("payments-demo: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(stream, app.clone(), stop_rx.clone()));
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    // Each connection task holds a receiver until it ends.
    stop_tx.closed().await;
    Ok(())
}

/// Lets a handler reset the connection its request came on (see `x-demo-reset`).
#[derive(Debug, Clone)]
struct ConnectionHandle(Arc<Notify>);

/// Serves one connection; a reset asked for by a handler drops it with an RST.
async fn connection(stream: TcpStream, app: Router, mut stop: watch::Receiver<bool>) {
    let reset = Arc::new(Notify::new());
    let handle = ConnectionHandle(Arc::clone(&reset));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(handle.clone());
        app.clone().call(req)
    });
    let mut conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut stopping = false;
    let reset_asked = loop {
        tokio::select! {
            _ = &mut conn => break false,
            () = reset.notified() => break true,
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    if reset_asked {
        let stream = conn.into_parts().io.into_inner();
        // SO_LINGER 0: the close sends RST instead of FIN, and nothing buffered goes out.
        if let Err(e) = stream.set_zero_linger() {
            eprintln!("payments-demo: cannot reset the connection: {e}");
        }
    }
}

/// A JSON error body with the given status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn create_payment(
    State(state): State<Arc<Payments>>,
    connection: Option<Extension<ConnectionHandle>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.post_requests.fetch_add(1, Ordering::SeqCst);
    let knobs = match Knobs::parse(&headers) {
        Ok(knobs) => knobs,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // A task of its own: dropping this handler (the client went away) does not stop the work.
    let work = tokio::spawn(async move {
        tokio::time::sleep(knobs.delay).await;
        execute(&state, knobs.status, &body)
    });
    let mut response = match work.await {
        Ok(response) => response,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("work failed: {e}"),
            )
        }
    };
    if let Some(cookie) = headers.get("x-demo-set-cookie") {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    match knobs.after {
        After::Answer => response,
        After::Reset => match connection {
            Some(Extension(ConnectionHandle(reset))) => {
                reset.notify_one();
                // The connection task drops this handler with the connection.
                std::future::pending().await
            }
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "x-demo-reset: this server cannot reset connections (use payments_demo::serve)",
            ),
        },
        After::BodyCut(n) => cut_body(response, n).await,
    }
}

/// The work of one `POST /payments`: a forced status, or a new payment.
fn execute(state: &Payments, status: Option<StatusCode>, body: &[u8]) -> Response {
    if let Some(status) = status {
        return (
            status,
            Json(json!({
                "status": status.as_u16(),
                "detail": "status forced by x-demo-status; no payment created",
            })),
        )
            .into_response();
    }

    let request: Value = match serde_json::from_slice(body) {
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
    Json(json!({
        "post_requests": state.post_requests(),
        "payments": payments,
        "echo_requests": state.echo_requests.load(Ordering::SeqCst),
    }))
}

async fn echo(State(state): State<Arc<Payments>>, headers: HeaderMap, body: Bytes) -> Response {
    state.echo_requests.fetch_add(1, Ordering::SeqCst);
    let mut out = HeaderMap::new();
    for (name, value) in &headers {
        if name.as_str().starts_with("x-echo-") || name == header::CONTENT_TYPE {
            out.append(name.clone(), value.clone());
        }
    }
    out.append(header::SET_COOKIE, header::HeaderValue::from_static("a=1"));
    out.append(header::SET_COOKIE, header::HeaderValue::from_static("b=2"));
    (StatusCode::OK, out, body).into_response()
}

#[cfg(test)]
mod tests;
