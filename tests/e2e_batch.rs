//! Group commit of key-store calls (`keystore.batch_max_entries`), end to end: two real Envoys
//! (`--concurrency 2` each) and the real key store (memory backend), the filter batching the
//! claims, lookups, completes and releases of each worker's streams into `/v1/batch`.
//!
//! - many concurrent first executions with distinct keys each execute once, each client gets its
//!   own answer, and every one replays on both gateways; batches carried them (the filter's
//!   `keystore_batches` counters and the key store's `keystore_batches_total`);
//! - clients that leave while their calls wait or travel in a batch (gateway `a` reaches the
//!   key store over a slow link) take nobody's answer: the clients that stay each get their own.
//!
//! Needs `make build` (the `.wasm` and the binaries) and Envoy (`scripts/setup.sh`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::keystore::KeystoreProcess;
use support::mesh::{Mesh, MeshOptions};
use support::*;

const TOKEN: &str = "batch-e2e-token";

/// The demo's route, the key store with batches of at most 32 calls and one callout in flight
/// per worker (so that calls gather as soon as two overlap).
fn plugin() -> String {
    Plugin::payments("batch-e2e-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .set("failure_mode", "fail_closed")
        .keystore(2000, Some(TOKEN))
        .merge(&json!({"keystore": {
            "cluster": "keystore", "timeout_ms": 2000, "token": TOKEN,
            "batch_max_entries": 32, "batches_in_flight": 1,
        }}))
        .json()
}

async fn mesh(a_keystore_delay: Option<Duration>) -> Mesh {
    let options = MeshOptions {
        token: Some(TOKEN.into()),
        a_keystore_delay,
        ..MeshOptions::default()
    };
    Mesh::start(&plugin(), options).await
}

/// The key store's `name` (a counter, or a histogram's `_sum`/`_count`), from its metrics.
async fn keystore_metric(keystore: &KeystoreProcess, name: &str) -> f64 {
    keystore
        .metric_sum(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .await
}

fn body_of(i: usize) -> String {
    format!(r#"{{"amount":{i},"currency":"EUR"}}"#)
}

fn post(http: &reqwest::Client, url: &str, key: &str, i: usize) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer alice")
        .header("idempotency-key", key)
        .body(body_of(i))
}

/// Sends `keys[i]` with body `i` to gateway `a` (even `i`) or `b`, all at once.
async fn all_at_once(mesh: &Mesh, keys: &[String]) -> Vec<Resp> {
    let http = client();
    let tasks: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let url = if i % 2 == 0 { &mesh.a } else { &mesh.b }.url("/payments");
            tokio::spawn(send(post(&http, &url, key, i)))
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The answer is the upstream's for request `i`, not another's.
fn assert_own(resp: &Resp, i: usize, what: &str) {
    assert_eq!(resp.status, 201, "{what} {i}: {}", resp.describe());
    assert_eq!(
        resp.json()["request"]["amount"],
        json!(i),
        "{what} {i} got another request's answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_executions_travel_in_batches_execute_once_and_replay() {
    const N: usize = 160;
    let mesh = mesh(None).await;
    let keys: Vec<String> = (0..N).map(|_| new_key()).collect();

    let first = all_at_once(&mesh, &keys).await;
    for (i, resp) in first.iter().enumerate() {
        assert_own(resp, i, "first execution");
        assert!(!resp.replayed());
    }
    assert_eq!(
        mesh.upstream.post_requests().await,
        N as u64,
        "one execution per key"
    );

    // Every key replays on both gateways (B's near cache lacks A's keys: the key store answers).
    let again = all_at_once(&mesh, &keys).await;
    let swapped: Vec<String> = keys.iter().skip(1).chain(keys.first()).cloned().collect();
    let crossed = all_at_once(&mesh, &swapped).await;
    for (i, resp) in again.iter().enumerate() {
        assert_replay(&first[i], resp);
    }
    for (j, resp) in crossed.iter().enumerate() {
        let i = (j + 1) % N;
        // Sent with body `j`: another body under the same key is refused, its own replays.
        if i == j {
            assert_replay(&first[i], resp);
        } else {
            assert_eq!(resp.status, 422, "{}", resp.describe());
        }
    }
    assert_eq!(
        mesh.upstream.post_requests().await,
        N as u64,
        "no execution on replay"
    );

    let batches =
        mesh.a.counter("keystore_batches").await + mesh.b.counter("keystore_batches").await;
    let entries = mesh.a.counter("keystore_batch_entries").await
        + mesh.b.counter("keystore_batch_entries").await;
    let store_batches = keystore_metric(&mesh.keystore, "keystore_batches_total").await;
    eprintln!(
        "filter batches {batches} carrying {entries} calls; key store batches {store_batches}"
    );
    assert!(batches > 0, "no call travelled in a batch");
    assert!(
        entries > batches,
        "batches of one only: {entries} calls in {batches}"
    );
    assert!(store_batches > 0.0, "the key store saw no batch");
    assert_eq!(
        mesh.a.counter("store_error").await + mesh.b.counter("store_error").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_leave_while_their_calls_are_batched_take_nobodys_answer() {
    const N: usize = 60;
    // Gateway `a` reaches the key store 150 ms late: its calls gather while others travel.
    let mesh = mesh(Some(Duration::from_millis(150))).await;
    let url = mesh.a.url("/payments");
    let (patient, leaving) = (client(), impatient(Duration::from_millis(100)));
    let keys: Vec<String> = (0..N).map(|_| new_key()).collect();
    let tasks: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let http = if i % 2 == 0 { &patient } else { &leaving };
            tokio::spawn(post(http, &url, key, i).send())
        })
        .collect();
    let mut stayed = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let result = t.await.unwrap();
        if i % 2 == 0 {
            let resp = result.expect("a patient client gets an answer");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(status, 201, "patient {i}: {body}");
            assert_eq!(
                body["request"]["amount"],
                json!(i),
                "patient {i}: another's answer"
            );
            stayed.push(i);
        } else {
            assert!(result.is_err(), "the impatient client {i} should have left");
        }
    }
    // Each patient request executed once; the gateway still serves, and its batches still flow.
    let replays: Vec<_> = stayed
        .iter()
        .map(|&i| tokio::spawn(send(post(&patient, &url, &keys[i], i))))
        .collect();
    for (t, &i) in replays.into_iter().zip(&stayed) {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, 201, "replay {i}: {}", resp.describe());
        assert!(resp.replayed(), "replay {i}");
        assert_eq!(resp.json()["request"]["amount"], json!(i));
    }
    let fresh = send(post(&patient, &url, &new_key(), 7)).await;
    assert_own(&fresh, 7, "a request after the burst");
    assert!(mesh.a.counter("keystore_batches").await > 0);
}
