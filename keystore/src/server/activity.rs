//! What a connection's watchdog knows of it: the time bounds it is held to ([`Limits`]) and its
//! [`Activity`] (requests in progress, counted around the router, and bytes read since the last one
//! ended, noted by the socket), shared by the connection ([`super::conn`]) and its socket
//! ([`super::io`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection's time bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
    pub write: Duration,
}

impl Limits {
    /// How often the watchdog looks: a quarter of the shortest bound, 10 ms to 1 s.
    pub(super) fn tick(&self) -> Duration {
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
    pub(super) fn new() -> Self {
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
    pub(super) fn enter(self: &Arc<Self>) -> Turn {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.first_byte.store(u64::MAX, Ordering::Relaxed);
        Turn(Arc::clone(self))
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Which bound the connection has passed, if any, with no request in progress.
    pub(super) fn verdict(&self, limits: &Limits) -> Option<&'static str> {
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
pub(super) struct Turn(Arc<Activity>);

impl Drop for Turn {
    fn drop(&mut self) {
        let a = &self.0;
        a.quiet_since.store(a.now_ms(), Ordering::Relaxed);
        a.first_byte.store(u64::MAX, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
