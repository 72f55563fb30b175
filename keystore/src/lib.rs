//! Idempotency key store: the mesh-wide truth for idempotency records, reached by the Envoy
//! filter over HTTP (see "Key-store API (v1)" in the repository README).
//!
//! Modules: [`config`] (flags), [`protocol`] (the wire types shared with the filter, and
//! server-side helpers), [`backend`] (the `Backend` trait with memory, Redis and Redis Cluster
//! implementations), [`http`] (router: the v1 API, and the admin API behind its own token),
//! [`metrics`] (Prometheus), [`server`] (listeners and connections: caps, timeouts, shutdown).

pub mod backend;
pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;

use std::future::Future;
use std::io::Write as _;

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use config::{BackendKind, Config};

/// Runs the service until `shutdown` resolves, then drains: new connections are refused,
/// waiting claims answer, idle connections close, and busy ones get until
/// `--shutdown-timeout-ms`, after which they are cut and this returns.
///
/// Once bound, prints `listening on ADDR` as the single line of stdout, so that a supervisor or a
/// test started with port 0 learns the port (and `health on ADDR` before it with
/// `--health-listen`).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.body_limit()?;
    config.admin_token()?;
    let backend = backend::build(&config)?;
    let metrics = metrics::Metrics::new().context("metrics")?;
    let (drain_tx, drain) = http::Drain::new();
    let settings = http::Settings {
        drain,
        ..http::Settings::from(&config)
    };
    let (app, health_app) = http::routers(backend, settings, metrics.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("--listen {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut listeners = vec![server::Listener {
        listener,
        app,
        max_connections: server::fit_to_fd_limit(config.max_connections.max(1)),
        name: "data",
    }];
    let mut out = std::io::stdout().lock();
    if let Some(health) = config.health_listen {
        let listener = TcpListener::bind(health)
            .await
            .with_context(|| format!("--health-listen {health}"))?;
        writeln!(out, "health on {}", listener.local_addr()?)?;
        listeners.push(server::Listener {
            listener,
            app: health_app,
            max_connections: server::HEALTH_CONNECTIONS,
            name: "health",
        });
    }
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    tracing::info!(%addr, backend = ?config.backend, "key store started");
    let limits = server::Limits {
        header: config::millis(config.header_timeout_ms),
        idle: config::millis(config.idle_timeout_ms),
        write: config::millis(config.write_timeout_ms),
    };
    let serving = server::serve(listeners, limits, &metrics);
    shutdown.await;
    // Waiting claims and bodies still arriving answer at once, so they do not hold up the drain.
    let _ = drain_tx.send(true);
    let cut = serving
        .stop(config::millis(config.shutdown_timeout_ms))
        .await;
    if cut > 0 {
        tracing::warn!(
            cut,
            "connections still busy at --shutdown-timeout-ms were cut"
        );
    }
    tracing::info!("key store stopped");
    Ok(())
}

/// Resolves on SIGTERM (orchestrators) or SIGINT (Ctrl-C in a terminal). The handlers are
/// installed by this call, not when the future is first polled, so that a signal sent as soon as
/// the key store has printed its address is not lost to the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM or SIGINT");
                    std::future::pending::<()>().await;
                }
            }
            tracing::info!("shutdown signal received, draining");
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received, draining");
    }
}
