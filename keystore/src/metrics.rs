//! Prometheus metrics, kept in a registry of our own (not the global one) so that several servers
//! in one process, as in the tests, do not mix their counts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The key store's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests per operation and outcome (claimed, in_flight, completed, mismatch, stored,
    /// released, renewed, stale, bad_request, unauthorized, error; a batch's entries under their
    /// own call's name, the batch itself as `batch` `answered`, or `bad_entry` per malformed entry).
    pub ops: IntCounterVec,
    /// Backend call latency per operation, errors included.
    pub backend_seconds: HistogramVec,
    /// Backend failures (each answered 503) per operation.
    pub backend_errors: IntCounterVec,
    /// Open connections per listener (`data`, `health`).
    pub connections_open: IntGaugeVec,
    /// Accepted connections per listener.
    pub connections: IntCounterVec,
    /// Connections refused per listener and reason (`max_connections`, `accept_error`).
    pub connections_refused: IntCounterVec,
    /// Connections or requests cut by a timeout: `header`, `body`, `idle`, `write`, `shutdown`.
    pub timeouts: IntCounterVec,
    /// Claims waiting (`wait_ms`) now.
    pub waiters: IntGauge,
    /// Claims answered at once because `--max-waiters` claims were already waiting.
    pub waiters_refused: IntCounter,
    /// Batches (`/v1/batch`) whose entries ran (the envelope was valid).
    pub batches: IntCounter,
    /// Entries per batch that ran.
    pub batch_entries: Histogram,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let ops = IntCounterVec::new(
            Opts::new(
                "keystore_requests_total",
                "Key-store requests by operation and outcome",
            ),
            &["op", "outcome"],
        )?;
        let backend_seconds = HistogramVec::new(
            HistogramOpts::new("keystore_backend_duration_seconds", "Backend call latency")
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0,
                ]),
            &["backend", "op"],
        )?;
        let backend_errors = IntCounterVec::new(
            Opts::new(
                "keystore_backend_errors_total",
                "Backend calls that failed or timed out",
            ),
            &["backend", "op"],
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new("keystore_connections_open", "Open connections per listener"),
            &["listener"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "keystore_connections_total",
                "Accepted connections per listener",
            ),
            &["listener"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "keystore_connections_refused_total",
                "Connections refused per listener and reason",
            ),
            &["listener", "reason"],
        )?;
        let timeouts = IntCounterVec::new(
            Opts::new(
                "keystore_timeouts_total",
                "Connections or requests cut by a timeout, per kind",
            ),
            &["kind"],
        )?;
        let waiters = IntGauge::new("keystore_waiters", "Claims waiting for an in-flight key")?;
        let waiters_refused = IntCounter::new(
            "keystore_waiters_refused_total",
            "Claims answered without waiting: --max-waiters reached",
        )?;
        let batches = IntCounter::new(
            "keystore_batches_total",
            "Batches (/v1/batch) whose entries ran",
        )?;
        let batch_entries = Histogram::with_opts(
            HistogramOpts::new("keystore_batch_entries", "Entries per batch (/v1/batch)")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        for c in [
            Box::new(batches.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batch_entries.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(timeouts.clone()),
            Box::new(waiters.clone()),
            Box::new(waiters_refused.clone()),
        ] {
            registry.register(c)?;
        }
        registry.register(Box::new(ops.clone()))?;
        registry.register(Box::new(backend_seconds.clone()))?;
        registry.register(Box::new(backend_errors.clone()))?;
        Ok(Self {
            registry,
            ops,
            backend_seconds,
            backend_errors,
            connections_open,
            connections,
            connections_refused,
            timeouts,
            waiters,
            waiters_refused,
            batches,
            batch_entries,
        })
    }

    /// Counts one timeout of `kind`.
    pub fn timeout(&self, kind: &str) {
        self.timeouts.with_label_values(&[kind]).inc();
    }

    /// Counts one request.
    pub fn op(&self, op: &str, outcome: &str) {
        self.ops.with_label_values(&[op, outcome]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
