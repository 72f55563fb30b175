//! Fault injection, end to end: the real Envoy with the real filter, the real key store and real
//! Redis where they apply, and stand-ins where the real process cannot misbehave the way a fault
//! needs (see `hardening`): a key store that stalls past the callout timeout, answers 500,
//! answers garbage or cuts its answer; an upstream that resets the connection.
//!
//! Every run checks what the client got, how many times the upstream executed, that Envoy is
//! alive (`/ready` LIVE, no panic or critical line in its log), that no claim leaked (the same key
//! or a new one executes afterwards, or the retry does what the README says) and which metrics
//! counted it. Each run prints a `FAULT|...` row (`--nocapture`): the fault table of docs/hardening.md is built from them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod hardening;
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hardening::*;
use serde_json::json;
use support::killable::{KeystoreProcess, StoreBackend};
use support::redis::RedisServer;
use support::*;

/// The demo's configuration with the key store, a failure mode, a callout timeout and a lease.
fn plugin(failure_mode: &str, timeout_ms: u64, lease_ms: u64) -> String {
    json!({
        "routes": [{"exact": "/payments", "methods": ["POST"], "required": true}],
        "caller": {"header": "authorization"},
        "hmac_secret": "faults-secret-0123456789abcdef0123456789abcdef",
        "failure_mode": failure_mode,
        "lock_lease_ms": lease_ms,
        "keystore": {"cluster": "keystore", "timeout_ms": timeout_ms},
    })
    .to_string()
}

/// One row of the fault table in docs/hardening.md, printed with `--nocapture`.
fn row(fault: &str, client: &str, executions: &str, leaked: &str, counted: &[String]) {
    println!(
        "FAULT|{fault}|{client}|{executions}|no|{leaked}|{}|",
        counted.join(", ")
    );
}

#[tokio::test]
async fn key_store_slow_erring_garbled_or_cut() {
    // The real key store cannot be made to stall, err, talk garbage or cut its answers: a fake
    // HTTP/1.1 server on a picked port stands in for it (see hardening::FakeKeystore).
    let fake = FakeKeystore::start().await;
    let upstream = Upstream::start().await;
    let closed = EnvoyOptions::with_filter(upstream.port, plugin("fail_closed", 300, 30_000))
        .keystore(fake.port);
    let open = EnvoyOptions::with_filter(upstream.port, plugin("fail_open", 300, 30_000))
        .keystore(fake.port);
    let (mut closed, mut open) = tokio::join!(Envoy::start(&closed), Envoy::start(&open));
    let http = client();
    let body = r#"{"amount":1}"#;

    for (mode, name) in [
        (Mode::Slow, "key store slow (3 s, callout timeout 300 ms)"),
        (Mode::Error500, "key store answers 500"),
        (
            Mode::Garbage,
            "key store answers 200 with garbage (not JSON)",
        ),
        (Mode::Cut, "key store cuts its answer mid-body"),
    ] {
        let (c0, o0, posts0) = (
            metrics(&closed).await,
            metrics(&open).await,
            upstream.post_requests().await,
        );
        fake.set_mode(mode);
        let (closed_key, open_key) = (new_key(), new_key());

        // fail_closed: 503 problem, nothing executes.
        let resp = send(post_payment(
            &http,
            &closed,
            "alice",
            Some(&closed_key),
            body,
        ))
        .await;
        assert_problem(&resp, 503);
        assert_eq!(upstream.post_requests().await, posts0, "{name}: executed");
        // fail_open: forwarded once; the retry on the same Envoy replays from L1.
        let first = send(post_payment(&http, &open, "alice", Some(&open_key), body)).await;
        assert_eq!(first.status, 201, "{name}: {}", first.describe());
        let retry = send(post_payment(&http, &open, "alice", Some(&open_key), body)).await;
        assert_replay(&first, &retry);
        assert_eq!(upstream.post_requests().await, posts0 + 1, "{name}");

        let (c1, o1) = (metrics(&closed).await, metrics(&open).await);
        assert_eq!(delta(&c0, &c1, "store_error"), 1, "{name}: {c1:?}");
        assert_eq!(delta(&c0, &c1, "executed"), 0, "{name}: {c1:?}");
        assert_eq!(delta(&o0, &o1, "fail_open"), 1, "{name}: {o1:?}");
        assert!(delta(&o0, &o1, "store_error") >= 1, "{name}: {o1:?}");

        // The key store heals: the key refused under fail_closed is not stuck; the fail_open
        // Envoy takes new keys through the key store again.
        fake.set_mode(Mode::Healthy);
        let again = send(post_payment(
            &http,
            &closed,
            "alice",
            Some(&closed_key),
            body,
        ))
        .await;
        assert_eq!(again.status, 201, "{name}: {}", again.describe());
        assert!(!again.replayed());
        let fresh = send(post_payment(&http, &open, "alice", Some(&new_key()), body)).await;
        assert_eq!(fresh.status, 201, "{name}: {}", fresh.describe());
        assert_eq!(upstream.post_requests().await, posts0 + 3, "{name}");

        assert_envoy_healthy(&mut closed, name).await;
        assert_envoy_healthy(&mut open, name).await;
        let mut count = counted(&c0, &c1)
            .into_iter()
            .map(|c| format!("closed {c}"))
            .collect::<Vec<_>>();
        count.extend(counted(&o0, &o1).into_iter().map(|c| format!("open {c}")));
        row(
            name,
            "fail_closed: 503 problem (store-unavailable); fail_open: 201, retry replayed from L1",
            "fail_closed 0; fail_open 1",
            "no: once healthy, the refused key executes (201)",
            &count,
        );
    }

    // The claim succeeds, the complete call fails: the client still gets its answer (it ran),
    // the record lives in this Envoy's L1, the failure is counted.
    fake.set_mode(Mode::CompleteFails);
    let (c0, posts0) = (metrics(&closed).await, upstream.post_requests().await);
    let key = new_key();
    let first = send(post_payment(&http, &closed, "alice", Some(&key), body)).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    let retry = send(post_payment(&http, &closed, "alice", Some(&key), body)).await;
    assert_replay(&first, &retry);
    let c1 = metrics(&closed).await;
    assert_eq!(delta(&c0, &c1, "store_error"), 1, "{c1:?}");
    assert_eq!(upstream.post_requests().await, posts0 + 1);
    assert_envoy_healthy(&mut closed, "complete fails").await;
    row(
        "key store answers 500 to `complete` (claim was granted)",
        "201 (it ran); retry on the same Envoy replayed from L1",
        "1",
        "no (record kept in L1; the key-store claim expires with its lease)",
        &counted(&c0, &c1),
    );
}

#[tokio::test]
async fn key_store_killed_and_restarted() {
    let upstream = Upstream::start().await;
    let mut keystore = KeystoreProcess::start(StoreBackend::Memory, None).await;
    let mut envoy = Envoy::start(
        &EnvoyOptions::with_filter(upstream.port, plugin("fail_closed", 500, 30_000))
            .keystore(keystore.port),
    )
    .await;
    let http = client();
    let body = r#"{"amount":2}"#;
    let m0 = metrics(&envoy).await;

    let k1 = new_key();
    let first = send(post_payment(&http, &envoy, "alice", Some(&k1), body)).await;
    assert_eq!(first.status, 201, "{}", first.describe());

    // Killed while a request is in flight: the request still completes (the complete call fails).
    let k3 = new_key();
    let slow = tokio::spawn(send(
        post_payment(&http, &envoy, "alice", Some(&k3), body).header("x-demo-delay-ms", "1000"),
    ));
    upstream.wait_post_requests(2).await;
    keystore.kill().await;
    let in_flight = slow.await.unwrap();
    assert_eq!(in_flight.status, 201, "{}", in_flight.describe());

    // Down: fail_closed answers 503 and executes nothing.
    let k2 = new_key();
    let refused = send(post_payment(&http, &envoy, "alice", Some(&k2), body)).await;
    assert_problem(&refused, 503);
    assert_eq!(upstream.post_requests().await, 2);
    let m1 = metrics(&envoy).await;
    assert_eq!(
        delta(&m0, &m1, "store_error"),
        2,
        "the failed complete and the refused claim: {m1:?}"
    );

    // Back (same port, empty memory): the refused key executes; the earlier ones replay from L1.
    keystore.restart().await;
    let k2_again = send(post_payment(&http, &envoy, "alice", Some(&k2), body)).await;
    assert_eq!(k2_again.status, 201, "{}", k2_again.describe());
    assert!(!k2_again.replayed());
    assert_replay(
        &first,
        &send(post_payment(&http, &envoy, "alice", Some(&k1), body)).await,
    );
    assert_replay(
        &in_flight,
        &send(post_payment(&http, &envoy, "alice", Some(&k3), body)).await,
    );
    assert_eq!(upstream.post_requests().await, 3);
    assert_envoy_healthy(&mut envoy, "key store killed").await;
    let m2 = metrics(&envoy).await;
    row(
        "real key store SIGKILLed (one request in flight), then restarted on its port",
        "in-flight request: 201; while down: 503 problem; after restart: 201, earlier keys replayed from L1",
        "1 per key (3 keys, 3 executions)",
        "no: the key refused while down executes after the restart",
        &counted(&m0, &m2),
    );
}

#[tokio::test]
async fn redis_killed_and_restarted_under_the_key_store() {
    let upstream = Upstream::start().await;
    let mut redis = RedisServer::start().await;
    let keystore = KeystoreProcess::start(StoreBackend::Redis(redis.url()), None).await;
    // The lease bounds how long A's root context retries a record the key store could not take.
    let options = EnvoyOptions::with_filter(upstream.port, plugin("fail_closed", 500, 15_000))
        .keystore(keystore.port);
    let (mut a, mut b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    let http = client();
    let body = r#"{"amount":3}"#;
    let (a0, b0) = (metrics(&a).await, metrics(&b).await);

    let k1 = new_key();
    let first = send(post_payment(&http, &a, "alice", Some(&k1), body)).await;
    assert_eq!(first.status, 201, "{}", first.describe());

    // Redis dies while a request is in flight on A, and stays down past its answer.
    let k3 = new_key();
    let slow = tokio::spawn(send(
        post_payment(&http, &a, "alice", Some(&k3), body).header("x-demo-delay-ms", "800"),
    ));
    upstream.wait_post_requests(2).await;
    redis.kill().await;
    let in_flight = slow.await.unwrap();
    assert_eq!(in_flight.status, 201, "{}", in_flight.describe());

    // The key store answers 503 (backend unavailable): fail_closed gives 503, nothing executes.
    let k2 = new_key();
    let refused = send(post_payment(&http, &a, "alice", Some(&k2), body)).await;
    assert_problem(&refused, 503);
    assert_eq!(upstream.post_requests().await, 2);
    let a1 = metrics(&a).await;
    assert_eq!(delta(&a0, &a1, "store_error"), 2, "{a1:?}");
    let log = a.full_log();
    assert!(
        log.contains("key store answered 503"),
        "the key store itself should have answered 503; Envoy log:\n{}",
        a.log_tail(30)
    );

    // Redis back (append-only file: what was stored survives).
    redis.restart().await;
    keystore.wait_ready(Duration::from_secs(20)).await;
    let k2_again = send(post_payment(&http, &a, "alice", Some(&k2), body)).await;
    assert_eq!(k2_again.status, 201, "{}", k2_again.describe());
    // K1 was stored before the crash: B (empty L1) replays it from Redis.
    assert_replay(
        &first,
        &send(post_payment(&http, &b, "alice", Some(&k1), body)).await,
    );
    // K3's record did not reach Redis when its response went out; A keeps it in L1 and its root
    // context retries the store until the claim's lease ends. Once Redis is back the record lands,
    // and B, which has never seen K3, replays it from the key store: no second execution.
    assert_replay(
        &in_flight,
        &send(post_payment(&http, &a, "alice", Some(&k3), body)).await,
    );
    let (k3_on_b, conflicts) = until_201(Duration::from_secs(15), || {
        send(post_payment(&http, &b, "alice", Some(&k3), body))
    })
    .await;
    assert_replay(&in_flight, &k3_on_b);
    assert_eq!(upstream.post_requests().await, 3);
    assert_envoy_healthy(&mut a, "redis killed").await;
    assert_envoy_healthy(&mut b, "redis killed").await;
    let (a2, b2) = (metrics(&a).await, metrics(&b).await);
    let mut count: Vec<String> = counted(&a0, &a2)
        .into_iter()
        .map(|c| format!("A {c}"))
        .collect();
    count.extend(counted(&b0, &b2).into_iter().map(|c| format!("B {c}")));
    row(
        "Redis SIGKILLed under the real key store (one request in flight on A), then restarted",
        &format!(
            "in-flight: 201 (record stored late); while down: 503 problem (key store said 503); after restart: \
             201, stored key replayed on B from Redis; the in-flight key: replay on A, {conflicts}× 409 on B until A's \
             retried store landed, then a replay on B"
        ),
        "1 per key (the in-flight key's record is stored late, by A's root context, within its lease)",
        "no",
        &count,
    );
}

#[tokio::test]
async fn upstream_resets_the_connection() {
    // A raw TCP server that reads the request and resets stands in for a crashing upstream.
    let reset = ResettingUpstream::start().await;
    let keystore = Keystore::start().await;
    let mut envoy = Envoy::start(
        &EnvoyOptions::with_filter(reset.port, plugin("fail_closed", 500, 30_000))
            .keystore(keystore.port),
    )
    .await;
    let http = client();
    let key = new_key();
    let m0 = metrics(&envoy).await;
    let resp = send(post_payment(&http, &envoy, "alice", Some(&key), "{}")).await;
    assert_eq!(resp.status, 503, "{}", resp.describe());
    assert!(!resp.replayed());
    // The upstream read the request before it reset: it may have executed, so the key is locked.
    let retry = send(post_payment(&http, &envoy, "alice", Some(&key), "{}")).await;
    assert_problem(&retry, 409);
    assert_eq!(reset.requests(), 1, "the retry must not reach the upstream");
    let m1 = metrics(&envoy).await;
    assert_eq!(delta(&m0, &m1, "unknown_outcome"), 1, "{m1:?}");
    assert_eq!(delta(&m0, &m1, "executed"), 1, "{m1:?}");
    assert_eq!(delta(&m0, &m1, "released"), 0, "{m1:?}");
    assert_envoy_healthy(&mut envoy, "upstream reset").await;
    row(
        "upstream resets the connection (raw TCP server: read, then RST)",
        "503 from Envoy (reset before headers); outcome unknown: the retry 409, then 410 after the hold",
        "1",
        "no: locked as outcome unknown",
        &counted(&m0, &m1),
    );
}

#[tokio::test]
async fn upstream_hangs_fails_or_loses_its_client() {
    let upstream = Upstream::start().await;
    let keystore = Keystore::start().await;
    let mut envoy = Envoy::start(
        &EnvoyOptions::with_filter(upstream.port, plugin("fail_closed", 500, 30_000))
            .keystore(keystore.port)
            .route_timeout(Duration::from_millis(800)),
    )
    .await;
    let http = client();
    let body = r#"{"amount":4}"#;

    // Hanging past the route timeout (800 ms): 504, outcome unknown, the retry gets 409.
    let m0 = metrics(&envoy).await;
    let key = new_key();
    let hung = send(
        post_payment(&http, &envoy, "alice", Some(&key), body).header("x-demo-delay-ms", "2500"),
    )
    .await;
    assert_eq!(hung.status, 504, "{}", hung.describe());
    let retry = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
    assert_problem(&retry, 409);
    assert_eq!(upstream.post_requests().await, 1);
    let m1 = metrics(&envoy).await;
    assert_eq!(delta(&m0, &m1, "unknown_outcome"), 1, "{m1:?}");
    // Envoy reset the hung upstream request, and the upstream finished its work anyway.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        upstream.payment_count().await,
        1,
        "the timed-out attempt ran"
    );
    assert_envoy_healthy(&mut envoy, "route timeout").await;
    row(
        "upstream hangs past the route timeout (800 ms; upstream delay 2.5 s)",
        "504 from Envoy; outcome unknown: the retry 409, then 410 after the hold",
        "1 (the hung request finished its work after Envoy gave up on it)",
        "no: locked as outcome unknown",
        &counted(&m0, &m1),
    );

    // 5xx: passed on, released, the retry executes.
    let m0 = metrics(&envoy).await;
    let key = new_key();
    let failed =
        send(post_payment(&http, &envoy, "alice", Some(&key), body).header("x-demo-status", "503"))
            .await;
    assert_eq!(failed.status, 503, "{}", failed.describe());
    assert!(!failed.is_problem_like());
    let retry = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
    assert_eq!(retry.status, 201, "{}", retry.describe());
    assert!(!retry.replayed());
    assert_eq!(upstream.post_requests().await, 3);
    let m1 = metrics(&envoy).await;
    assert_eq!(delta(&m0, &m1, "released"), 1, "{m1:?}");
    assert_envoy_healthy(&mut envoy, "upstream 5xx").await;
    row(
        "upstream answers 503",
        "the upstream's 503, passed on and not stored; the retry 201",
        "1 per attempt (2)",
        "no: the retry executes",
        &counted(&m0, &m1),
    );

    // The client goes away while its request is at the upstream.
    let m0 = metrics(&envoy).await;
    let key = new_key();
    let impatient = impatient(Duration::from_millis(250));
    let gone = post_payment(&impatient, &envoy, "alice", Some(&key), body)
        .header("x-demo-delay-ms", "600")
        .send()
        .await;
    assert!(gone.is_err(), "the client should have given up: {gone:?}");
    let retry = send(post_payment(&http, &envoy, "alice", Some(&key), body)).await;
    assert_problem(&retry, 409);
    let m1 = metrics(&envoy).await;
    assert_eq!(delta(&m0, &m1, "unknown_outcome"), 1, "{m1:?}");
    assert_eq!(delta(&m0, &m1, "released"), 0, "{m1:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        upstream.payment_count().await,
        3,
        "payments: the hung one, the 5xx retry, and this one"
    );
    assert_eq!(upstream.post_requests().await, 4, "never executed again");
    assert_envoy_healthy(&mut envoy, "client gone").await;
    row(
        "client disconnects while its request is at the upstream",
        "(nothing: gone); outcome unknown: the retry 409, then 410 after the hold",
        "1 (the upstream finished the abandoned request)",
        "no: locked as outcome unknown",
        &counted(&m0, &m1),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_1000_duplicates_over_two_gateways() {
    let upstream = Upstream::start().await;
    let keystore = Keystore::start().await;
    let options = EnvoyOptions::with_filter(upstream.port, plugin("fail_closed", 500, 30_000))
        .keystore(keystore.port);
    let (mut a, mut b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    let (a0, b0) = (metrics(&a).await, metrics(&b).await);
    let key = new_key();
    let body = r#"{"amount":1000}"#;
    let limit = Arc::new(tokio::sync::Semaphore::new(200));
    let clients: Vec<reqwest::Client> = (0..4).map(|_| client()).collect();

    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let gateway = if i % 2 == 0 { &a } else { &b };
            let req = post_payment(&clients[i % 4], gateway, "alice", Some(&key), body)
                .header("x-demo-delay-ms", "400");
            let limit = limit.clone();
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.unwrap();
                send(req).await
            })
        })
        .collect();
    let (mut originals, mut replays, mut conflicts) = (0, 0, 0);
    let mut bodies = HashSet::new();
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            201 if answer.replayed() => replays += 1,
            201 => originals += 1,
            409 => {
                assert_problem(&answer, 409);
                conflicts += 1;
            }
            _ => panic!("unexpected answer: {}", answer.describe()),
        }
        if answer.status == 201 {
            bodies.insert(answer.body.clone());
        }
    }
    let took = started.elapsed();
    assert_eq!(originals, 1, "exactly one answer comes from the upstream");
    assert_eq!(bodies.len(), 1, "every 201 carries the same payment");
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(upstream.payment_count().await, 1);
    let (a1, b1) = (metrics(&a).await, metrics(&b).await);
    let total = |name: &str| delta(&a0, &a1, name) + delta(&b0, &b1, name);
    assert_eq!(total("executed"), 1);
    assert_eq!(total("replayed"), replays);
    assert_eq!(total("conflict"), conflicts);
    // The key is settled: one more through either gateway replays.
    let http = client();
    for gateway in [&a, &b] {
        let resp = send(post_payment(&http, gateway, "alice", Some(&key), body)).await;
        assert!(resp.replayed(), "{}", resp.describe());
    }
    assert_envoy_healthy(&mut a, "burst").await;
    assert_envoy_healthy(&mut b, "burst").await;
    let mut count: Vec<String> = counted(&a0, &a1)
        .into_iter()
        .map(|c| format!("A {c}"))
        .collect();
    count.extend(counted(&b0, &b1).into_iter().map(|c| format!("B {c}")));
    row(
        "1,000 concurrent duplicates (same caller, key, body) over two Envoys, 200 at a time",
        &format!(
            "1× 201 original, {replays}× 201 replayed, {conflicts}× 409 (in {:.1} s)",
            took.as_secs_f64()
        ),
        "1",
        "no: the next request on either Envoy replays",
        &count,
    );
}

trait ProblemLike {
    fn is_problem_like(&self) -> bool;
}

impl ProblemLike for Resp {
    /// Whether this is one of the filter's problem answers (rather than the upstream's body).
    fn is_problem_like(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| v.starts_with("application/problem+json"))
    }
}
