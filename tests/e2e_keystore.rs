//! End-to-end tests with the key store: two Envoys (gateways A and B) share one
//! `idempotency-keystore` (memory backend) and one payments upstream, so a retry sent to either
//! gateway sees the first request's record. Also the key store unreachable, per failure mode.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashSet;

use support::*;

/// The demo's configuration with the key store cluster and the given failure mode.
fn plugin(failure_mode: &str) -> String {
    Plugin::payments("e2e-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .set("failure_mode", failure_mode)
        .keystore(500, None)
        .json()
}

/// Upstream, key store and two gateways using it.
struct Mesh {
    upstream: Upstream,
    _keystore: Keystore,
    a: Envoy,
    b: Envoy,
}

async fn mesh() -> Mesh {
    let upstream = Upstream::start().await;
    let keystore = Keystore::start().await;
    let options =
        EnvoyOptions::with_filter(upstream.port, plugin("fail_closed")).keystore(keystore.port);
    let (a, b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    Mesh {
        upstream,
        _keystore: keystore,
        a,
        b,
    }
}

#[tokio::test]
async fn retry_on_the_other_gateway_replays() {
    let mesh = mesh().await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":100}"#;

    let first = send(post_payment(&http, &mesh.a, "alice", Some(&key), body)).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert!(!first.replayed());

    let on_b = send(post_payment(&http, &mesh.b, "alice", Some(&key), body)).await;
    assert_replay(&first, &on_b);
    let on_a = send(post_payment(&http, &mesh.a, "alice", Some(&key), body)).await;
    assert_replay(&first, &on_a);
    let mismatch = send(post_payment(
        &http,
        &mesh.b,
        "alice",
        Some(&key),
        r#"{"amount":101}"#,
    ))
    .await;
    assert_problem(&mismatch, 422);
    // Another caller with the same key on B executes on its own.
    let bob = send(post_payment(&http, &mesh.b, "bob", Some(&key), body)).await;
    assert_eq!(bob.status, 201, "{}", bob.describe());
    assert!(!bob.replayed());

    assert_eq!(mesh.upstream.post_requests().await, 2);
    assert_eq!(mesh.upstream.payment_count().await, 2);
}

#[tokio::test]
async fn in_flight_on_one_gateway_conflicts_on_the_other() {
    let mesh = mesh().await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":200}"#;

    let slow = tokio::spawn(send(
        post_payment(&http, &mesh.a, "alice", Some(&key), body).header("x-demo-delay-ms", "1500"),
    ));
    mesh.upstream.wait_post_requests(1).await;

    let conflict = send(post_payment(&http, &mesh.b, "alice", Some(&key), body)).await;
    assert_problem(&conflict, 409);
    assert!(
        conflict.header("retry-after").is_some(),
        "{}",
        conflict.describe()
    );

    let first = slow.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.describe());
    let retry = send(post_payment(&http, &mesh.b, "alice", Some(&key), body)).await;
    assert_replay(&first, &retry);
    assert_eq!(mesh.upstream.post_requests().await, 1);
}

#[tokio::test]
async fn a_5xx_releases_the_claim_for_the_whole_mesh() {
    let mesh = mesh().await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":300}"#;

    let failed = send(
        post_payment(&http, &mesh.a, "alice", Some(&key), body).header("x-demo-status", "502"),
    )
    .await;
    assert_eq!(failed.status, 502, "{}", failed.describe());

    let on_b = send(post_payment(&http, &mesh.b, "alice", Some(&key), body)).await;
    assert_eq!(
        on_b.status,
        201,
        "the retry after a 5xx must execute: {}",
        on_b.describe()
    );
    assert!(!on_b.replayed());
    let on_a = send(post_payment(&http, &mesh.a, "alice", Some(&key), body)).await;
    assert_replay(&on_b, &on_a);
    assert_eq!(mesh.upstream.post_requests().await, 2);
    assert_eq!(mesh.upstream.payment_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_on_both_gateways_create_one_payment() {
    let mesh = mesh().await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":400}"#;

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let gateway = if i % 2 == 0 { &mesh.a } else { &mesh.b };
            let req = post_payment(&http, gateway, "alice", Some(&key), body)
                .header("x-demo-delay-ms", "300");
            tokio::spawn(send(req))
        })
        .collect();
    let mut originals = 0;
    let mut bodies = HashSet::new();
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            201 => {
                originals += usize::from(!answer.replayed());
                bodies.insert(answer.body.clone());
            }
            409 => {
                assert_problem(&answer, 409);
            }
            _ => panic!("unexpected answer: {}", answer.describe()),
        }
    }
    assert_eq!(originals, 1, "exactly one answer comes from the upstream");
    assert_eq!(bodies.len(), 1, "every 201 carries the same payment");
    assert_eq!(mesh.upstream.post_requests().await, 1);
}

#[tokio::test]
async fn key_store_unreachable_fail_closed_gets_503() {
    let upstream = Upstream::start().await;
    let options =
        EnvoyOptions::with_filter(upstream.port, plugin("fail_closed")).keystore(closed_port());
    let envoy = Envoy::start(&options).await;

    let resp = send(post_payment(
        &client(),
        &envoy,
        "alice",
        Some(&new_key()),
        "{}",
    ))
    .await;
    assert_problem(&resp, 503);
    assert_eq!(upstream.post_requests().await, 0);
    assert!(envoy.counter("store_error").await >= 1);
}

#[tokio::test]
async fn key_store_unreachable_fail_open_forwards() {
    let upstream = Upstream::start().await;
    let options =
        EnvoyOptions::with_filter(upstream.port, plugin("fail_open")).keystore(closed_port());
    let envoy = Envoy::start(&options).await;
    let http = client();
    let key = new_key();

    let first = send(post_payment(&http, &envoy, "alice", Some(&key), "{}")).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_eq!(upstream.post_requests().await, 1);
    assert!(envoy.counter("fail_open").await >= 1);
    // Still protected by the local cache: the retry on the same Envoy replays.
    let retry = send(post_payment(&http, &envoy, "alice", Some(&key), "{}")).await;
    assert_replay(&first, &retry);
    assert_eq!(upstream.post_requests().await, 1);
}
