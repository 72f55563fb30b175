//! One connection: served by hyper (HTTP/1.1 or HTTP/2, told apart by the preface), its socket's
//! writes bounded in time ([`super::io`]), and a watchdog that closes it when its client stalls
//! outside a request or when the server stops.
//!
//! The watchdog, not hyper's own `header_read_timeout`, bounds header reads: hyper's timer runs
//! from the moment an HTTP/1.1 connection is idle, so it cannot tell a keep-alive connection at
//! rest (bounded by the idle timeout) from one sending its headers a byte at a time (bounded by
//! the header timeout), and it does not cover the preface that decides the protocol. The watchdog
//! sees both through [`Activity`]: requests in progress (counted around the router) and bytes
//! read since the last one ended (noted by the socket).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tower::ServiceExt as _;

use super::activity::{Activity, Limits};
use super::io::Deadlined;
use crate::metrics::Metrics;

/// What every connection of a listener shares.
pub struct Shared {
    pub app: Router,
    pub builder: auto::Builder<TokioExecutor>,
    pub limits: Limits,
    pub metrics: Metrics,
    /// `data` or `health`, the metrics' label.
    pub listener: &'static str,
    /// `Some(deadline)` once the server stops: finish by then.
    pub stop: watch::Receiver<Option<Instant>>,
}

/// The hyper settings of every connection: no hyper header timer (the watchdog's instead), and
/// header buffers of 64 KiB, far above what Envoy sends, so a header flood costs little.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().header_read_timeout(None).max_buf_size(64 * 1024);
    b.http2().max_header_list_size(64 * 1024);
    b
}

/// Serves one connection until it ends, its client stalls, or the server's stop deadline.
pub async fn serve(stream: TcpStream, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    // Answers go out as soon as they are written. With Nagle's algorithm on, an answer written
    // while the previous one is not yet acknowledged waits for that acknowledgement, which the
    // gateway may delay by up to 40 ms (a delayed ACK): the answers of a batch whose entries
    // wait on Redis finish one after another, and each would wait. A socket option failing
    // leaves the connection as it was.
    let _ = stream.set_nodelay(true);
    let open = shared
        .metrics
        .connections_open
        .with_label_values(&[shared.listener]);
    open.inc();
    let activity = Arc::new(Activity::new());
    let write_timeouts = shared.metrics.timeouts.with_label_values(&["write"]);
    let io = Deadlined::new(
        stream,
        shared.limits.write,
        write_timeouts,
        activity.clone(),
    );
    let service = {
        let activity = activity.clone();
        let app = shared.app.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let turn = activity.enter();
            let app = app.clone();
            async move {
                let _turn = turn;
                app.oneshot(req.map(Body::new)).await
            }
        })
    };
    let conn = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stop = shared.stop.clone();
    let mut tick = tokio::time::interval(shared.limits.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once the connection is asked to finish: by then it is cut.
    let mut closing: Option<(Instant, Option<&'static str>)> = None;
    let mut stopping = stop.borrow_and_update().is_some();
    loop {
        if stopping && closing.is_none() {
            if activity.in_flight() == 0 {
                break;
            }
            conn.as_mut().graceful_shutdown();
            let deadline = stop.borrow().unwrap_or_else(Instant::now);
            closing = Some((deadline, Some("shutdown")));
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended in error");
                }
                break;
            }
            changed = stop.changed(), if !stopping => {
                stopping = changed.is_err() || stop.borrow().is_some();
            }
            _ = tick.tick() => match closing {
                Some((deadline, kind)) => if Instant::now() >= deadline {
                    if let Some(kind) = kind {
                        shared.metrics.timeout(kind);
                    }
                    break;
                },
                None => match activity.verdict(&shared.limits) {
                    // Mid-headers: there is no request to finish.
                    Some("header") => {
                        shared.metrics.timeout("header");
                        break;
                    }
                    Some(kind) => {
                        shared.metrics.timeout(kind);
                        conn.as_mut().graceful_shutdown();
                        closing = Some((Instant::now() + shared.limits.write, None));
                    }
                    None => {}
                },
            },
        }
    }
    open.dec();
}
