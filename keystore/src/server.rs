//! Listening and connections: each listener accepts up to its connection cap (a connection past
//! it gets a one-shot 503 and is closed), serves each connection under its time bounds
//! ([`conn`], [`io`]), and on stop closes idle connections at once and gives busy ones until a
//! deadline, after which they are cut and the process goes on to exit.
//!
//! Two listeners: `--listen` (everything), and optionally `--health-listen` (/healthz, /readyz,
//! /metrics), whose own small cap keeps probes answered while the data port is saturated.

mod activity;
mod conn;
mod io;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;
pub use activity::Limits;

/// Connections the health listener takes at once: probes and a scraper.
pub const HEALTH_CONNECTIONS: usize = 64;

/// File descriptors kept for other things than data connections: the health listener's
/// connections, backend connections, the listeners themselves.
const FD_HEADROOM: usize = HEALTH_CONNECTIONS + 64;

/// The answer to a connection past the cap, written once without waiting, then the connection is
/// closed.
fn refusal(max: usize) -> Vec<u8> {
    let body = format!("{{\"error\":\"connection limit reached: --max-connections {max}\"}}");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One listener with its connection cap.
pub struct Listener {
    pub listener: TcpListener,
    pub app: Router,
    pub max_connections: usize,
    /// `data` or `health`.
    pub name: &'static str,
}

/// Listeners being served; [`Serving::stop`] ends them.
pub struct Serving {
    stop: watch::Sender<Option<Instant>>,
    caps: Vec<(Arc<Semaphore>, usize)>,
    accepting: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts accepting on every listener.
pub fn serve(listeners: Vec<Listener>, limits: Limits, metrics: &Metrics) -> Serving {
    let (stop, stop_rx) = watch::channel(None);
    let mut caps = Vec::new();
    let mut accepting = Vec::new();
    for l in listeners {
        let cap = Arc::new(Semaphore::new(l.max_connections));
        caps.push((cap.clone(), l.max_connections));
        let shared = Arc::new(conn::Shared {
            app: l.app,
            builder: conn::builder(),
            limits,
            metrics: metrics.clone(),
            listener: l.name,
            stop: stop_rx.clone(),
        });
        accepting.push(tokio::spawn(accept(
            l.listener,
            shared,
            cap,
            l.max_connections,
        )));
    }
    Serving {
        stop,
        caps,
        accepting,
    }
}

async fn accept(listener: TcpListener, shared: Arc<conn::Shared>, cap: Arc<Semaphore>, max: usize) {
    let refused = shared
        .metrics
        .connections_refused
        .with_label_values(&[shared.listener, "max_connections"]);
    let accepted = shared
        .metrics
        .connections
        .with_label_values(&[shared.listener]);
    let answer = refusal(max);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match cap.clone().try_acquire_owned() {
                Ok(permit) => {
                    accepted.inc();
                    tokio::spawn(conn::serve(stream, shared.clone(), permit));
                }
                Err(_) => {
                    refused.inc();
                    refuse(&stream, &answer);
                }
            },
            Err(e) => {
                // Out of file descriptors, mostly: wait for some to be freed rather than spin.
                shared
                    .metrics
                    .connections_refused
                    .with_label_values(&[shared.listener, "accept_error"])
                    .inc();
                tracing::warn!(error = %e, listener = shared.listener, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Writes the refusal if the socket takes it at once (a fresh socket's buffer does), then closes.
fn refuse(stream: &TcpStream, answer: &[u8]) {
    let _ = stream.try_write(answer);
}

impl Serving {
    /// Stops accepting, closes idle connections, lets busy ones finish until `within` has
    /// passed, then cuts what is left. Returns how many connections were cut.
    pub async fn stop(self, within: Duration) -> usize {
        for a in &self.accepting {
            a.abort();
        }
        let deadline = Instant::now() + within;
        let _ = self.stop.send(Some(deadline));
        let mut cut = 0;
        for (cap, max) in &self.caps {
            let all = u32::try_from(*max).unwrap_or(u32::MAX);
            let left = deadline.saturating_duration_since(Instant::now());
            // Every connection holds a permit until its task ends; a little past the deadline
            // lets the tasks see it and end.
            let grace = left + Duration::from_millis(200);
            if tokio::time::timeout(grace, cap.acquire_many(all))
                .await
                .is_err()
            {
                cut += max.saturating_sub(cap.available_permits());
            }
        }
        cut
    }
}

/// The data listener's cap, lowered to what the open-files limit leaves room for (raising the
/// soft limit towards the hard one first), so that past the cap connections are refused by us,
/// with an answer, and not by the kernel with accept errors that starve /readyz too.
pub fn fit_to_fd_limit(wanted: usize) -> usize {
    let needed = wanted.saturating_add(FD_HEADROOM);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        let needed_rl = needed as libc::rlim_t;
        if lim.rlim_cur < needed_rl {
            let raised = libc::rlimit {
                rlim_cur: needed_rl.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
    }
    let room = usize::try_from(lim.rlim_cur)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_HEADROOM)
        .max(1);
    if room < wanted {
        tracing::warn!(
            wanted,
            room,
            "--max-connections lowered to what the open-files limit (ulimit -n) leaves room for"
        );
    }
    wanted.min(room)
}
