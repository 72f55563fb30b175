//! `payments-demo`: serves the demo payments API (see the library docs) until Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;

/// The demo payments API used behind the idempotency filter.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Tests and scripts wait for this exact line to learn the port.
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    payments_demo::serve(listener, payments_demo::app(), shutdown()).await
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
