//! End-to-end harness: starts the payments upstream, the key store and Envoy (with or
//! without the idempotency filter) on free ports, and offers HTTP/1.1, h2c and h2c-with-trailers
//! clients plus helpers to read the upstream's counters and Envoy's stats.
//!
//! Every process is owned by a guard that stops it on drop. When a test panics, the guards print
//! the tail of the process logs (Envoy's log, the key store's stderr) to help with the diagnosis.
//!
//! Envoy: `$ENVOY_BIN`, else `.venv/bin/envoy` (from `make setup`), else `envoy` on `PATH`.
//! The filter: `<target>/wasm32-wasip1/release/idempotency_filter.wasm` (from `make build`).
//! The upstream and key store: `<target>/debug/payments-demo` and `<target>/debug/idempotency-keystore`.
//! Redis nodes come from the workspace's `idempotency-testkit`, shared with the key store's tests.

#![allow(dead_code, unused_imports)] // each test binary uses its own subset

/// What a client must see: problems, replays, a held key.
pub mod assertions;
/// A running Envoy, its log and stats.
pub mod envoy;
/// The Envoy bootstrap a test runs.
pub mod envoy_config;
/// The key store as a process, crashable and restartable.
pub mod keystore;
/// Two gateways sharing one key store.
pub mod mesh;
/// The filter's plugin configuration.
pub mod plugin;
/// Process guards, binaries and free ports.
pub mod process;
/// The replay listener of routed replays.
pub mod replay_listener;
/// Clients, requests and responses.
pub mod requests;
/// A TCP link with latency, to make the key store slow.
pub mod slow_link;
/// The payments upstream.
pub mod upstream;

pub use assertions::*;
pub use envoy::*;
pub use envoy_config::*;
pub use keystore::*;
pub use plugin::*;
pub use process::{closed_port, log_tail, repo_root, target_dir, workspace_bin, Proc};
pub use requests::*;
pub use upstream::*;
