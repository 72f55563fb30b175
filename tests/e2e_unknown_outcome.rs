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

mod support;

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
        let resp = send(post_payment(
            &http,
            gateway,
            "Bearer alice",
            Some(key),
            body,
        ))
        .await;
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
                    let again = send(post_payment(&http, g, "Bearer alice", Some(key), body)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_then_retries_get_409_then_outcome_unknown_and_it_runs_once() {
    let mesh = mesh(plugin(json!({}))).await;
    let (key, body) = (new_key(), r#"{"amount":100}"#);
    abandon_payment(
        &mesh.a,
        "Bearer alice",
        &key,
        body,
        2500,
        Duration::from_secs(1),
    )
    .await;
    let conflicts = retries_until_outcome_unknown(&mesh, &key, body).await;
    assert!(
        conflicts >= 2,
        "retries during the hold get 409 ({conflicts})"
    );
    settled(&mesh.upstream, 1).await;
    assert_eq!(mesh.upstream.post_requests().await, 1, "executions");
    assert_eq!(mesh.upstream.payment_count().await, 1);
    assert_eq!(mesh.a.counter("unknown_outcome").await, 1);
    assert!(
        mesh.a.counter("unknown_outcome_answered").await
            + mesh.b.counter("unknown_outcome_answered").await
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_under_the_release_policy_executes_again() {
    // At least once, as documented for `unknown_outcome: "release"`.
    let mesh = mesh(plugin(json!({"unknown_outcome": "release"}))).await;
    let (key, body) = (new_key(), r#"{"amount":101}"#);
    abandon_payment(
        &mesh.a,
        "Bearer alice",
        &key,
        body,
        1500,
        Duration::from_millis(500),
    )
    .await;
    let http = client();
    let (again, _) = until_201(Duration::from_secs(10), || {
        send(post_payment(
            &http,
            &mesh.b,
            "Bearer alice",
            Some(&key),
            body,
        ))
    })
    .await;
    assert!(!again.replayed(), "{}", again.describe());
    settled(&mesh.upstream, 2).await;
    assert_eq!(
        mesh.upstream.payment_count().await,
        2,
        "released: executed twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_504_then_retries_and_it_runs_once() {
    let mesh = Mesh::start(
        &plugin(json!({})),
        MeshOptions {
            route_timeout: Some(Duration::from_secs(1)),
            ..options()
        },
    )
    .await;
    let (key, body) = (new_key(), r#"{"amount":102}"#);
    let http = client();
    let first = send(
        post_payment(&http, &mesh.a, "Bearer alice", Some(&key), body)
            .header("x-demo-delay-ms", "2500"),
    )
    .await;
    assert_eq!(
        first.status,
        504,
        "Envoy's route timeout: {}",
        first.describe()
    );
    retries_until_outcome_unknown(&mesh, &key, body).await;
    settled(&mesh.upstream, 1).await;
    assert_eq!(mesh.upstream.post_requests().await, 1);
    assert_eq!(mesh.upstream.payment_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_or_cut_body_after_the_work_runs_once() {
    let mesh = mesh(plugin(json!({}))).await;
    let http = client();
    for (n, (knob, value)) in [("x-demo-reset", "after-work"), ("x-demo-body-cut", "5")]
        .into_iter()
        .enumerate()
    {
        let (key, body) = (new_key(), format!(r#"{{"amount":{}}}"#, 103 + n));
        let first = post_payment(&http, &mesh.a, "Bearer alice", Some(&key), &body)
            .header(knob, value)
            .send()
            .await;
        match first {
            // A reset before the response: Envoy answers for the upstream.
            Ok(resp) if knob == "x-demo-reset" => {
                assert!(resp.status().is_server_error(), "{knob}: {}", resp.status())
            }
            // A cut body: the head arrived, the body fails.
            Ok(resp) => assert!(
                resp.bytes().await.is_err(),
                "{knob}: the body should be cut"
            ),
            Err(_) => {}
        }
        retries_until_outcome_unknown(&mesh, &key, &body).await;
        assert_eq!(mesh.upstream.post_requests().await, n as u64 + 1, "{knob}");
        assert_eq!(mesh.upstream.payment_count().await, n as u64 + 1, "{knob}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_never_reached_is_released_and_the_retry_runs_once() {
    let port = closed_port();
    let keystore = KeystoreProcess::start(StoreBackend::Memory, Some(TOKEN)).await;
    let options = EnvoyOptions::with_filter(port, plugin(json!({}))).keystore(keystore.port);
    let envoy = Envoy::start(&options).await;
    let (key, body) = (new_key(), r#"{"amount":110}"#);
    let http = client();
    let refused = send(post_payment(
        &http,
        &envoy,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
    assert_eq!(
        refused.status,
        503,
        "connection refused: {}",
        refused.describe()
    );
    assert_eq!(envoy.counter("released").await, 1);
    assert_eq!(envoy.counter("unknown_outcome").await, 0);
    // The upstream comes up where the gateway points: the retry executes, once.
    let upstream = Upstream::start_at(port).await;
    let done = send(post_payment(
        &http,
        &envoy,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
    assert_eq!(done.status, 201, "{}", done.describe());
    assert!(!done.replayed());
    let replay = send(post_payment(
        &http,
        &envoy,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
    assert_replay(&done, &replay);
    assert_eq!(upstream.payment_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_while_the_record_is_stored_still_lands_and_replays_elsewhere() {
    // Gateway A reaches the key store over a link that adds 1 s per request: the claim takes 1 s,
    // the record another 1 s, and the client gives up in between.
    let mesh = Mesh::start(
        &plugin(json!({})),
        MeshOptions {
            a_keystore_delay: Some(Duration::from_millis(1000)),
            ..options()
        },
    )
    .await;
    let (key, body) = (new_key(), r#"{"amount":111}"#);
    let gone = post_payment(
        &impatient(Duration::from_millis(1500)),
        &mesh.a,
        "Bearer alice",
        Some(&key),
        body,
    )
    .send()
    .await;
    // The head comes at once; the end of the response waits for the record.
    let gone = match gone {
        Ok(resp) => resp.bytes().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        gone.is_err(),
        "the client should have left while the record was stored"
    );
    assert_eq!(mesh.upstream.payment_count().await, 1);
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let replay = loop {
        let resp = send(post_payment(
            &http,
            &mesh.b,
            "Bearer alice",
            Some(&key),
            body,
        ))
        .await;
        if resp.status != 409 {
            break resp;
        }
        assert!(Instant::now() < deadline, "the record never landed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(replay.status, 201, "{}", replay.describe());
    assert!(replay.replayed(), "{}", replay.describe());
    assert_eq!(
        replay.json(),
        mesh.upstream.payments().await[0],
        "the one payment"
    );
    assert_eq!(mesh.upstream.post_requests().await, 1);
    assert_eq!(
        mesh.a.counter("unknown_outcome").await,
        0,
        "the real answer was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slower_than_three_leases_keeps_its_lock_across_gateways() {
    let mesh = mesh(plugin(json!({"lock_lease_ms": 1000}))).await;
    let (key, body) = (new_key(), r#"{"amount":112}"#);
    let http = client();
    let started = Instant::now();
    let first = tokio::spawn(send(
        post_payment(&http, &mesh.a, "Bearer alice", Some(&key), body)
            .header("x-demo-delay-ms", "3500"),
    ));
    mesh.upstream.wait_post_requests(1).await;
    let mut conflicts = 0;
    while started.elapsed() < Duration::from_millis(3300) {
        for gateway in [&mesh.a, &mesh.b] {
            let dup = send(post_payment(
                &http,
                gateway,
                "Bearer alice",
                Some(&key),
                body,
            ))
            .await;
            assert_eq!(
                dup.status,
                409,
                "a takeover while the first still runs: {}",
                dup.describe()
            );
            conflicts += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = first.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.describe());
    for gateway in [&mesh.a, &mesh.b] {
        let replay = send(post_payment(
            &http,
            gateway,
            "Bearer alice",
            Some(&key),
            body,
        ))
        .await;
        assert_replay(&first, &replay);
    }
    assert!(conflicts >= 10, "{conflicts}");
    assert_eq!(mesh.upstream.post_requests().await, 1);
    assert_eq!(mesh.a.counter("renewal_refused").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_duplicates_over_two_gateways_with_client_timeouts_run_once_per_key() {
    let mesh = mesh(plugin(json!({"unknown_hold_ms": 1000}))).await;
    let keys: Vec<String> = (0..100).map(|_| new_key()).collect();
    let (patient, hasty) = (client(), impatient(Duration::from_millis(150)));
    let (a, b) = (mesh.a.url("/payments"), mesh.b.url("/payments"));
    let mut tasks = Vec::new();
    for round in 0..10 {
        for (i, key) in keys.iter().enumerate() {
            let url = if (i + round) % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            // Every third request is from a client that gives up before the upstream answers.
            let hasty_client = (i + round) % 3 == 0;
            let http = if hasty_client {
                hasty.clone()
            } else {
                patient.clone()
            };
            let body = json!({"key": key}).to_string();
            let key = key.clone();
            let retries = !hasty_client;
            tasks.push(tokio::spawn(async move {
                // A patient client retries 409s as client libraries do (Retry-After, for up to
                // 20 s); a hasty one gives up at its first timeout.
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("authorization", "Bearer alice")
                        .header("idempotency-key", &key)
                        .header("x-demo-delay-ms", "300")
                        .body(body.clone())
                        .send()
                        .await;
                    let status = match sent {
                        Ok(resp) => resp.status().as_u16(),
                        Err(_) => return None,
                    };
                    if status != 409 || !retries || std::time::Instant::now() > deadline {
                        return Some(status);
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }));
        }
    }
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0u32) += 1;
    }
    for status in statuses.keys().flatten() {
        assert!(
            [201, 409, 410].contains(status),
            "unexpected status {status}: {statuses:?}"
        );
    }
    settled(&mesh.upstream, 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let payments = mesh.upstream.payments().await;
    let mut per_key = std::collections::HashMap::new();
    for p in &payments {
        *per_key
            .entry(p["request"]["key"].as_str().unwrap().to_owned())
            .or_insert(0u32) += 1;
    }
    assert_eq!(per_key.len(), 100, "every key executed");
    assert!(
        per_key.values().all(|&n| n == 1),
        "a key executed twice: {per_key:?}"
    );
    assert_eq!(
        mesh.upstream.post_requests().await,
        100,
        "statuses: {statuses:?}"
    );
    eprintln!("1,000 duplicates, statuses: {statuses:?}");
}
