//! Key-store faults: slow, erring, garbled or cut answers from a stand-in; the real key store
//! killed and restarted; Redis killed and restarted under it.

use super::*;

#[tokio::test]
async fn key_store_slow_erring_garbled_or_cut() {
    // The real key store cannot be made to stall, err, talk garbage or cut its answers: a fake
    // HTTP/1.1 server on a picked port stands in for it (see hardening::FakeKeystore).
    let fake = FakeKeystore::start().await;
    let upstream = Upstream::start().await;
    let closed = EnvoyOptions::with_filter(upstream.port, plugin("fail_closed", 300, 30_000))
        .keystore(fake.port)
        .keystore_over_http1();
    let open = EnvoyOptions::with_filter(upstream.port, plugin("fail_open", 300, 30_000))
        .keystore(fake.port)
        .keystore_over_http1();
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
        let resp = send_payment(&http, &closed, "alice", Some(&closed_key), body).await;
        assert_problem(&resp, 503);
        assert_eq!(upstream.post_requests().await, posts0, "{name}: executed");
        // fail_open: forwarded once; the retry on the same Envoy replays from L1.
        let first = send_payment(&http, &open, "alice", Some(&open_key), body).await;
        assert_eq!(first.status, 201, "{name}: {}", first.describe());
        let retry = send_payment(&http, &open, "alice", Some(&open_key), body).await;
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
        let again = send_payment(&http, &closed, "alice", Some(&closed_key), body).await;
        assert_eq!(again.status, 201, "{name}: {}", again.describe());
        assert!(!again.replayed());
        let fresh = send_payment(&http, &open, "alice", Some(&new_key()), body).await;
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
    let first = send_payment(&http, &closed, "alice", Some(&key), body).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    let retry = send_payment(&http, &closed, "alice", Some(&key), body).await;
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
    let first = send_payment(&http, &envoy, "alice", Some(&k1), body).await;
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
    let refused = send_payment(&http, &envoy, "alice", Some(&k2), body).await;
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
    let k2_again = send_payment(&http, &envoy, "alice", Some(&k2), body).await;
    assert_eq!(k2_again.status, 201, "{}", k2_again.describe());
    assert!(!k2_again.replayed());
    assert_replay(
        &first,
        &send_payment(&http, &envoy, "alice", Some(&k1), body).await,
    );
    assert_replay(
        &in_flight,
        &send_payment(&http, &envoy, "alice", Some(&k3), body).await,
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
    let mut redis = RedisServer::durable();
    let keystore = KeystoreProcess::start(StoreBackend::Redis(redis.url()), None).await;
    // The lease bounds how long A's root context retries a record the key store could not take.
    let options = EnvoyOptions::with_filter(upstream.port, plugin("fail_closed", 500, 15_000))
        .keystore(keystore.port);
    let (mut a, mut b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    let http = client();
    let body = r#"{"amount":3}"#;
    let (a0, b0) = (metrics(&a).await, metrics(&b).await);

    let k1 = new_key();
    let first = send_payment(&http, &a, "alice", Some(&k1), body).await;
    assert_eq!(first.status, 201, "{}", first.describe());

    // Redis dies while a request is in flight on A, and stays down past its answer.
    let k3 = new_key();
    let slow = tokio::spawn(send(
        post_payment(&http, &a, "alice", Some(&k3), body).header("x-demo-delay-ms", "800"),
    ));
    upstream.wait_post_requests(2).await;
    redis.kill();
    let in_flight = slow.await.unwrap();
    assert_eq!(in_flight.status, 201, "{}", in_flight.describe());

    // The key store answers 503 (backend unavailable): fail_closed gives 503, nothing executes.
    let k2 = new_key();
    let refused = send_payment(&http, &a, "alice", Some(&k2), body).await;
    assert_problem(&refused, 503);
    assert_eq!(upstream.post_requests().await, 2);
    let a1 = metrics(&a).await;
    assert_eq!(delta(&a0, &a1, "store_error"), 2, "{a1:?}");
    assert!(
        a.wait_for_log("key store answered 503", Duration::from_secs(5))
            .await,
        "the key store itself should have answered 503; Envoy log:\n{}",
        a.log_tail(30)
    );

    // Redis back (append-only file: what was stored survives).
    redis.restart();
    keystore.wait_ready(Duration::from_secs(20)).await;
    let k2_again = send_payment(&http, &a, "alice", Some(&k2), body).await;
    assert_eq!(k2_again.status, 201, "{}", k2_again.describe());
    // K1 was stored before the crash: B (empty L1) replays it from Redis.
    assert_replay(
        &first,
        &send_payment(&http, &b, "alice", Some(&k1), body).await,
    );
    // K3's record did not reach Redis when its response went out; A keeps it in L1 and its root
    // context retries the store until the claim's lease ends. Once Redis is back the record lands,
    // and B, which has never seen K3, replays it from the key store: no second execution.
    assert_replay(
        &in_flight,
        &send_payment(&http, &a, "alice", Some(&k3), body).await,
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
async fn a_key_store_without_the_batch_endpoint_gets_each_call_alone() {
    // The stand-in predates group commit (`/v1/batch` is 404): the filter tries one batch per
    // worker, then sends every call alone; no request fails for it.
    let fake = FakeKeystore::start().await;
    let upstream = Upstream::start().await;
    let plugin = Plugin::payments("faults-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .set("failure_mode", "fail_closed")
        .merge(&serde_json::json!({"keystore": {
            "cluster": "keystore", "timeout_ms": 2000, "batch_max_entries": 8, "batches_in_flight": 1,
        }}))
        .json();
    let options = EnvoyOptions::with_filter(upstream.port, plugin)
        .keystore(fake.port)
        .keystore_over_http1();
    let mut envoy = Envoy::start(&options).await;
    let http = client();
    let url = envoy.url("/payments");
    let burst = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", "alice")
                    .header("idempotency-key", new_key())
                    .body(format!(r#"{{"amount":{i}}}"#));
                tokio::spawn(send(req))
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    for resp in burst(40).await {
        assert_eq!(resp.status, 201, "{}", resp.describe());
    }
    let batches = |fake: &FakeKeystore| {
        fake.recorded()
            .iter()
            .filter(|r| r.path.ends_with("/batch"))
            .count()
    };
    let tried = batches(&fake);
    assert!(tried >= 1, "the burst never gathered calls into a batch");
    for resp in burst(40).await {
        assert_eq!(resp.status, 201, "{}", resp.describe());
    }
    assert_eq!(
        batches(&fake),
        tried,
        "batching stays off once the key store said 404"
    );
    assert_eq!(upstream.post_requests().await, 80);
    assert_eq!(metric(&envoy, "store_error").await, 0);
    assert_envoy_healthy(&mut envoy, "a key store without /v1/batch").await;
}
