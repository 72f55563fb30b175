//! Idempotency key store: the mesh-wide truth for idempotency records, reached by the Envoy
//! filter over HTTP (see "Key-store API (v1)" in the repository README).
//!
//! Modules: [`config`] (flags), [`protocol`] (the wire types shared with the filter, and
//! server-side helpers), [`backend`] (the `Backend` trait with memory, Redis and Redis Cluster
//! implementations), [`http`] (router), [`metrics`] (Prometheus).

pub mod backend;
pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;

use std::future::Future;
use std::io::Write as _;

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use config::{BackendKind, Config};

/// Runs the service until `shutdown` resolves, then drains in-flight requests.
///
/// Once bound, prints `listening on ADDR` as the single line of stdout, so that a supervisor or a
/// test started with port 0 learns the port.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.body_limit()?;
    let backend = backend::build(&config)?;
    let metrics = metrics::Metrics::new().context("metrics")?;
    let (drain_tx, drain) = http::Drain::new();
    let settings = http::Settings {
        drain,
        ..http::Settings::from(&config)
    };
    let app = http::router(backend, settings, metrics);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("--listen {}", config.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, backend = ?config.backend, "key store started");
    // Waiting claims answer at once when the drain starts, so they do not hold it up.
    let shutdown = async move {
        shutdown.await;
        let _ = drain_tx.send(true);
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serve")?;
    tracing::info!("key store stopped");
    Ok(())
}

/// Resolves on SIGTERM (orchestrators) or Ctrl-C (a terminal).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received, draining");
}
