//! Exactly once when the outcome is unknown: the client times out, the route times out, the
//! upstream resets or cuts its answer, the client leaves while the record is stored, the upstream
//! is slower than several leases. Real Envoys, the real key store, and an upstream that finishes
//! its work when its caller goes away (as real servers do): the count that matters is how many
//! payments the upstream created.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod across_gateways;
mod sidecar;
#[path = "../support/mod.rs"]
mod support;
mod timeouts;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::keystore::{KeystoreProcess, StoreBackend};
use support::mesh::{Mesh, MeshOptions};
use support::*;

const TOKEN: &str = "unknown-outcome-e2e-token";

/// The demo route, a key store, and the given extra settings (lease, hold, policy).
fn plugin(extra: Value) -> String {
    Plugin::payments("unknown-outcome-e2e-secret-0123456789abcdef0123456789abcdef")
        .set("unknown_hold_ms", 3000)
        .keystore(3000, Some(TOKEN))
        .merge(&extra)
        .json()
}

fn options() -> MeshOptions {
    MeshOptions {
        token: Some(TOKEN.into()),
        ..MeshOptions::default()
    }
}

async fn mesh(plugin: String) -> Mesh {
    Mesh::start(&plugin, options()).await
}

/// Waits until the upstream's counters stop moving (its abandoned work has finished).
async fn settled(upstream: &Upstream, payments: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.payment_count().await < payments {
        assert!(
            Instant::now() < deadline,
            "the upstream never finished its work"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries the key as a client library does (alternating gateways) until the terminal answer:
/// every answer before it must be a 409 with `Retry-After`, and the terminal one the
/// "outcome unknown" problem. Returns how many 409s were seen.
async fn retries_until_outcome_unknown(mesh: &Mesh, key: &str, body: &str) -> u32 {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conflicts = 0;
    for attempt in 0.. {
        let gateway = if attempt % 2 == 0 { &mesh.a } else { &mesh.b };
        let resp = send_payment(&http, gateway, "Bearer alice", Some(key), body).await;
        match resp.status {
            409 => {
                assert_problem(&resp, 409);
                let after: u64 = resp
                    .header("retry-after")
                    .unwrap_or("")
                    .parse()
                    .unwrap_or(0);
                assert!((1..=3).contains(&after), "Retry-After: {}", resp.describe());
                conflicts += 1;
            }
            410 => {
                let problem = assert_problem(&resp, 410);
                assert!(
                    problem["type"]
                        .as_str()
                        .unwrap()
                        .ends_with("outcome-unknown"),
                    "{problem}"
                );
                assert!(resp.header("retry-after").is_none());
                // The terminal answer stays, on both gateways.
                for g in [&mesh.a, &mesh.b] {
                    let again = send_payment(&http, g, "Bearer alice", Some(key), body).await;
                    assert_problem(&again, 410);
                }
                return conflicts;
            }
            _ => panic!("a retry must never execute again: {}", resp.describe()),
        }
        assert!(Instant::now() < deadline, "no terminal answer after 20 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    unreachable!()
}
