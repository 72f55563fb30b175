//! The `idempotency-keystore` binary: flags, logging, then the library's `run`.

use clap::Parser as _;
use idempotency_keystore::{run, shutdown_signal, Config};

/// Every request allocates (body, JSON values, HTTP/2 frames) on a multi-threaded runtime; glibc's
/// malloc spent about a quarter of the key store's CPU there (bench/README.md, "Profile").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries only the "listening on" line.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    run(Config::parse(), shutdown_signal()).await
}
