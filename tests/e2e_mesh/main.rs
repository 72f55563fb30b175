//! Mesh-wide end-to-end tests: two real Envoys (gateways A and B, `--concurrency 2`
//! each) in front of one payments upstream, sharing the real `idempotency-keystore` process on the
//! memory backend or on a real `redis-server` (appendonly, fsync always). Each test owns its
//! processes and ports.
//!
//! - replay across gateways (and 422 for another payload, a separate execution for another
//!   caller), 100 concurrent duplicates over both, on every backend;
//! - a request in flight on one gateway: 409 with `Retry-After` on the other; a 5xx on one
//!   gateway frees the key for the whole mesh;
//! - no key store from the start with fail_open: forwarded, and replayed from the near cache;
//! - the key store SIGKILLed mid-load, per failure mode, then restarted on the same port;
//! - the key store and Redis restarted: completed records still replay on both gateways;
//! - a gateway SIGKILLed while it holds a claim, under `unknown_outcome: "release"`: 409 on the
//!   other until the lease expires, then the key executes again (under the default `"lock"`:
//!   `e2e_gateway_dies`).
//!
//! Needs `make build` (the `.wasm` and the binaries), Envoy, and `redis-server` for the Redis
//! backend (`scripts/setup.sh`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod key_store_down;
mod replay;
mod restarts;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::mesh::{Mesh, MeshOptions};
use support::*;

/// The bearer token the key store requires and the filter sends.
const TOKEN: &str = "mesh-e2e-token";
const BODY: &str = r#"{"amount":4200,"currency":"EUR"}"#;

/// Which backend a mesh's key store runs.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
}

/// The demo's route and caller, the key store with its token, and the given failure mode and
/// claim lease.
fn plugin(failure_mode: &str, lock_lease_ms: u64) -> String {
    Plugin::payments("mesh-e2e-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .set("failure_mode", failure_mode)
        .set("lock_lease_ms", lock_lease_ms)
        .keystore(1000, Some(TOKEN))
        .json()
}

/// Upstream, key store (on `backend`, with the token), two gateways using it.
async fn mesh(backend: Backend, plugin: String) -> Mesh {
    let options = MeshOptions {
        token: Some(TOKEN.into()),
        redis: matches!(backend, Backend::Redis),
        ..MeshOptions::default()
    };
    Mesh::start(&plugin, options).await
}

/// Alice's `POST /payments` to a gateway's URL (usable from a spawned task: no borrow of the Envoy).
fn post_to(http: &reqwest::Client, url: &str, key: &str) -> reqwest::RequestBuilder {
    post_as(http, url, "Bearer alice", key, BODY)
}

/// `POST /payments` to a gateway's URL as `caller`, with `key` and `body`.
fn post_as(
    http: &reqwest::Client,
    url: &str,
    caller: &str,
    key: &str,
    body: &'static str,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "application/json")
        .header("authorization", caller)
        .header("idempotency-key", format!("\"{key}\""))
        .body(body)
}

/// A first execution: 201, not a replay, a JSON payment with an id.
fn assert_created(resp: &Resp, what: &str) {
    assert_eq!(resp.status, 201, "{what}: {}", resp.describe());
    assert!(!resp.replayed(), "{what} must execute: {}", resp.describe());
    assert!(
        resp.json()["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("pay_")),
        "{what}: {}",
        resp.describe()
    );
}

/// Both gateways still run and admin `/ready` answers `LIVE`.
async fn assert_gateways_alive(mesh: &mut Mesh) {
    for (name, envoy) in [("A", &mut mesh.a), ("B", &mut mesh.b)] {
        assert!(
            envoy.process_alive(),
            "gateway {name} exited; log:\n{}",
            envoy.log_tail(60)
        );
        let ready = envoy.admin_ready().await;
        assert_eq!(
            ready,
            Ok((200, "LIVE".to_owned())),
            "gateway {name} admin /ready; log:\n{}",
            envoy.log_tail(60)
        );
    }
}

/// After the key store is back: a fresh key executes on one gateway and replays on the other
/// (only the key store can tell the other gateway), in both directions.
async fn assert_mesh_dedupe_works(mesh: &Mesh, what: &str) {
    let http = client();
    for (first, second) in [(&mesh.a, &mesh.b), (&mesh.b, &mesh.a)] {
        let key = new_key();
        let before = mesh.upstream.post_requests().await;
        let created = send(post_to(&http, &first.url("/payments"), &key)).await;
        assert_created(&created, what);
        let replay = send(post_to(&http, &second.url("/payments"), &key)).await;
        assert_replay(&created, &replay);
        assert_eq!(
            mesh.upstream.post_requests().await,
            before + 1,
            "{what}: one execution"
        );
    }
}
