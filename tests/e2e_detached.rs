//! The caller gets the one result: detached execution (the plugin sends the first request itself,
//! so its answer is stored even when the client has gone) and duplicates that wait for the record
//! instead of getting 409. Real Envoys, the real key store, and an upstream that finishes its
//! work when its caller goes away.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::keystore::{KeystoreProcess, StoreBackend};
use support::mesh::{Mesh, MeshOptions};
use support::*;

const TOKEN: &str = "detached-e2e-token";

/// Both routes detached to the `payments` cluster, duplicates wait; `extra` overrides rule fields.
fn plugin(extra: Value, keystore: bool) -> String {
    let rule = merged(
        json!({
            "prefix": "/", "methods": ["POST"], "required": true,
            "execution": "detached", "upstream_cluster": "payments_detached", "upstream_timeout_ms": 5000,
            "in_flight": "wait", "max_wait_ms": 5000, "unknown_hold_ms": 1500,
        }),
        &extra,
    );
    let plugin = Plugin::signed("detached-e2e-secret-0123456789abcdef0123456789abcdef")
        .set("routes", json!([rule]))
        .set("max_response_bytes", 1 << 20);
    if keystore {
        plugin.keystore(1000, Some(TOKEN)).json()
    } else {
        plugin.json()
    }
}

async fn mesh(plugin: String) -> Mesh {
    let options = MeshOptions {
        token: Some(TOKEN.into()),
        ..MeshOptions::default()
    };
    Mesh::start(&plugin, options).await
}

/// The key store's count of `claim` requests (all outcomes), from its Prometheus metrics.
async fn keystore_claims(keystore: &KeystoreProcess) -> u64 {
    keystore
        .metric_sum(|l| l.starts_with("keystore_requests_total") && l.contains("op=\"claim\""))
        .await as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_timed_out_retries_and_gets_the_one_result_on_either_gateway() {
    let mesh = mesh(plugin(json!({}), true)).await;
    let (key, body) = (new_key(), r#"{"amount":200}"#);
    abandon_payment(
        &mesh.a,
        "Bearer alice",
        &key,
        body,
        2500,
        Duration::from_secs(1),
    )
    .await;
    let http = client();
    // The retry arrives while the upstream still works: it waits, then gets the result.
    let started = Instant::now();
    let retry_a = send_payment(&http, &mesh.a, "Bearer alice", Some(&key), body).await;
    assert_eq!(retry_a.status, 201, "{}", retry_a.describe());
    assert!(retry_a.replayed(), "{}", retry_a.describe());
    assert!(started.elapsed() < Duration::from_secs(4));
    let retry_b = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), body).await;
    assert_eq!(retry_b.status, 201, "{}", retry_b.describe());
    assert!(retry_b.replayed());
    assert_eq!(retry_a.body, retry_b.body);
    let payments = mesh.upstream.payments().await;
    assert_eq!(payments.len(), 1, "exactly one execution");
    assert_eq!(retry_a.json(), payments[0], "the result of that execution");
    assert_eq!(
        retry_a.header("location"),
        Some(format!("/payments/{}", payments[0]["id"].as_str().unwrap()).as_str())
    );
    assert_eq!(mesh.upstream.post_requests().await, 1);
    assert_eq!(mesh.a.counter("detached_executed").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_waiting_duplicates_over_two_gateways_get_the_same_body_and_no_409() {
    let mesh = mesh(plugin(json!({}), true)).await;
    let (key, body) = (new_key(), r#"{"amount":201}"#);
    let http = client();
    let first = {
        let req = post_payment(&http, &mesh.a, "Bearer alice", Some(&key), body)
            .header("x-demo-delay-ms", "1500");
        tokio::spawn(send(req))
    };
    mesh.upstream.wait_post_requests(1).await;
    let claims_before = keystore_claims(&mesh.keystore).await;
    let mut waiters = Vec::new();
    for i in 0..100 {
        let url = if i % 2 == 0 {
            mesh.a.url("/payments")
        } else {
            mesh.b.url("/payments")
        };
        let req = http
            .post(url)
            .header("content-type", "application/json")
            .header("authorization", "Bearer alice")
            .header("idempotency-key", key.clone())
            .body(body);
        waiters.push(tokio::spawn(send(req)));
    }
    let first = first.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.describe());
    for w in waiters {
        let resp = w.await.unwrap();
        assert_eq!(resp.status, 201, "a waiter got {}", resp.describe());
        assert_eq!(resp.body, first.body, "every caller gets the same body");
    }
    let claims = keystore_claims(&mesh.keystore).await - claims_before;
    eprintln!("100 waiters: {claims} claim requests to the key store");
    assert!(
        claims <= 110,
        "one long-poll claim per waiter, not a busy loop: {claims}"
    );
    assert_eq!(mesh.upstream.payment_count().await, 1);
    let waited = mesh.a.counter("waited").await + mesh.b.counter("waited").await;
    let replayed = mesh.a.counter("wait_replayed").await + mesh.b.counter("wait_replayed").await;
    assert!(
        waited >= 90 && replayed >= 90,
        "waited {waited}, replayed {replayed}"
    );
    assert_eq!(
        mesh.a.counter("conflict").await + mesh.b.counter("conflict").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_shorter_than_the_upstream_ends_in_409() {
    let mesh = mesh(plugin(json!({"max_wait_ms": 500}), true)).await;
    let (key, body) = (new_key(), r#"{"amount":202}"#);
    let http = client();
    let first = tokio::spawn(send(
        post_payment(&http, &mesh.a, "Bearer alice", Some(&key), body)
            .header("x-demo-delay-ms", "2000"),
    ));
    mesh.upstream.wait_post_requests(1).await;
    let started = Instant::now();
    let dup = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), body).await;
    assert_problem(&dup, 409);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "answered after {waited:?}"
    );
    assert_eq!(mesh.b.counter("wait_timed_out").await, 1);
    assert_eq!(first.await.unwrap().status, 201);
    assert_eq!(mesh.upstream.payment_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_failures_follow_the_unknown_outcome_and_release_rules() {
    let port = closed_port();
    let keystore = KeystoreProcess::start(StoreBackend::Memory, Some(TOKEN)).await;
    let options =
        EnvoyOptions::with_filter(port, plugin(json!({"upstream_timeout_ms": 800}), true))
            .keystore(keystore.port);
    let envoy = Envoy::start(&options).await;
    let http = client();

    // Upstream down: never sent, released; the retry executes once the upstream is up.
    let (key, body) = (new_key(), r#"{"amount":203}"#);
    let down = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    let problem = assert_problem(&down, 503);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("upstream-unavailable"));
    let upstream = Upstream::start_at(port).await;
    let up = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    assert_eq!(up.status, 201, "{}", up.describe());
    assert!(!up.replayed());

    // Slow past upstream_timeout_ms: 504, then locked (409 during the hold, then 410).
    let (key, body) = (new_key(), r#"{"amount":204}"#);
    let slow = send(
        post_payment(&http, &envoy, "Bearer alice", Some(&key), body)
            .header("x-demo-delay-ms", "2000"),
    )
    .await;
    assert_problem(&slow, 504);
    let retry = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    assert_problem(&retry, 409);

    // The upstream resets after the work: 502, locked.
    let (key, body) = (new_key(), r#"{"amount":205}"#);
    let reset = send(
        post_payment(&http, &envoy, "Bearer alice", Some(&key), body)
            .header("x-demo-reset", "after-work"),
    )
    .await;
    assert_problem(&reset, 502);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let after = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    let problem = assert_problem(&after, 410);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("outcome-unknown"));

    // The slow request finished its work anyway: one payment each, never a second execution.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.payment_count().await < 3 {
        assert!(Instant::now() < deadline, "the slow request never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.post_requests().await, 3);
    assert_eq!(envoy.counter("unknown_outcome").await, 2);
    assert_eq!(envoy.counter("released").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_binary_bodies_and_repeated_headers_pass_through_byte_exact() {
    let mesh = mesh(plugin(json!({}), true)).await;
    let http = client();
    let body: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(7919) % 256) as u8)
        .collect();
    let key = new_key();
    let echo = |url: String| {
        http.post(url)
            .header("content-type", "application/octet-stream")
            .header("authorization", "Bearer alice")
            .header("idempotency-key", key.clone())
            .header("x-echo-a", "1")
            .header("x-echo-a", "2")
            .header("x-echo-bin", "caf\u{e9}")
            .body(body.clone())
    };
    let first = send(echo(mesh.a.url("/_demo/echo"))).await;
    assert_eq!(first.status, 200, "{}", first.status);
    assert_eq!(
        first.body.as_ref(),
        body.as_slice(),
        "the body, byte for byte"
    );
    let values = |r: &Resp, name: &str| -> Vec<String> {
        r.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    assert_eq!(values(&first, "x-echo-a"), ["1", "2"]);
    assert_eq!(values(&first, "set-cookie"), ["a=1", "b=2"]);
    // Replays carry everything but `set-cookie`, which is never stored (docs/security.md).
    for gateway in [&mesh.a, &mesh.b] {
        let replay = send(echo(gateway.url("/_demo/echo"))).await;
        assert!(replay.replayed(), "{}", replay.status);
        assert_eq!((replay.status, &replay.body), (first.status, &first.body));
        assert_eq!(values(&replay, "x-echo-a"), ["1", "2"]);
        assert_eq!(values(&replay, "x-echo-bin"), values(&first, "x-echo-bin"));
        assert_eq!(
            values(&replay, "content-type"),
            ["application/octet-stream"]
        );
        assert!(values(&replay, "set-cookie").is_empty());
    }
    assert_eq!(mesh.upstream.stats().await["echo_requests"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_store_duplicates_wait_on_this_envoy() {
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&EnvoyOptions::with_filter(
        upstream.port,
        plugin(
            json!({"execution": "inline", "upstream_cluster": null, "upstream_timeout_ms": null}),
            false,
        ),
    ))
    .await;
    let (key, body) = (new_key(), r#"{"amount":206}"#);
    let http = client();
    let first = tokio::spawn(send(
        post_payment(&http, &envoy, "Bearer alice", Some(&key), body)
            .header("x-demo-delay-ms", "800"),
    ));
    upstream.wait_post_requests(1).await;
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(send(post_payment(
                &http,
                &envoy,
                "Bearer alice",
                Some(&key),
                body,
            )))
        })
        .collect();
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    for w in waiters {
        let resp = w.await.unwrap();
        assert_eq!(resp.status, 201, "{}", resp.describe());
        assert_eq!(resp.body, first.body);
        assert!(resp.replayed());
    }
    assert_eq!(upstream.payment_count().await, 1);
    assert_eq!(envoy.counter("waited").await, 20);
    assert_eq!(envoy.counter("wait_replayed").await, 20);
}
