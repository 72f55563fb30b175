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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tower::ServiceExt as _;

use super::io::Deadlined;
use crate::metrics::Metrics;

/// A connection's time bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
    pub write: Duration,
}

impl Limits {
    /// How often the watchdog looks: a quarter of the shortest bound, 10 ms to 1 s.
    fn tick(&self) -> Duration {
        (self.header.min(self.idle) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// What the watchdog knows of a connection.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds from `epoch` to the end of the last request (0: none yet).
    quiet_since: AtomicU64,
    /// Milliseconds from `epoch` to the first byte read since then (`u64::MAX`: none).
    first_byte: AtomicU64,
    read_any: AtomicBool,
    /// The client opened with the HTTP/2 preface: its control frames (window updates, pings)
    /// arrive between requests, so there bytes between requests are not a request's headers.
    h2: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            quiet_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(u64::MAX),
            read_any: AtomicBool::new(false),
            h2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes came in (`first`: the connection's first read, to recognise the HTTP/2 preface).
    pub fn read_some(&self, first: &[u8]) {
        if !self.read_any.swap(true, Ordering::Relaxed) && first.starts_with(b"PRI * HTTP/2.0") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.first_byte.compare_exchange(
                u64::MAX,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A request reached the router; the returned guard marks its end when dropped.
    fn enter(self: &Arc<Self>) -> Turn {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.first_byte.store(u64::MAX, Ordering::Relaxed);
        Turn(Arc::clone(self))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Which bound the connection has passed, if any, with no request in progress.
    fn verdict(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight() > 0 {
            return None;
        }
        let now = self.now_ms();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let first_byte = self.first_byte.load(Ordering::Relaxed);
        let waiting_headers = if self.requests.load(Ordering::Relaxed) == 0 {
            Some(0)
        } else if self.h2.load(Ordering::Relaxed) || first_byte == u64::MAX {
            None
        } else {
            Some(first_byte)
        };
        if waiting_headers.is_some_and(|since| now.saturating_sub(since) >= ms(limits.header)) {
            return Some("header");
        }
        let quiet = self.quiet_since.load(Ordering::Relaxed);
        (now.saturating_sub(quiet) >= ms(limits.idle)).then_some("idle")
    }
}

/// A request in progress on a connection.
struct Turn(Arc<Activity>);

impl Drop for Turn {
    fn drop(&mut self) {
        let a = &self.0;
        a.quiet_since.store(a.now_ms(), Ordering::Relaxed);
        a.first_byte.store(u64::MAX, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

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
