//! Restarts and crashes: the key store and Redis restarted (completed records still replay on both
//! gateways), and a gateway SIGKILLed while it holds a claim (under `unknown_outcome: "release"`).

use super::*;

/// Records one fresh key through each gateway: `[(key, answer via A), (key, answer via B)]`.
async fn record_on_both(mesh: &Mesh, http: &reqwest::Client) -> [(String, Resp); 2] {
    let mut out = Vec::new();
    for envoy in [&mesh.a, &mesh.b] {
        let key = new_key();
        let resp = send(post_to(http, &envoy.url("/payments"), &key)).await;
        assert_created(&resp, "recording");
        out.push((key, resp));
    }
    out.try_into().ok().unwrap()
}

/// Each record replays through the gateway that did NOT record it (its near cache never saw the
/// key, so the replay comes from the key store).
async fn replay_crosswise(mesh: &Mesh, http: &reqwest::Client, records: &[(String, Resp); 2]) {
    let [(key_a, on_a), (key_b, on_b)] = records;
    let via_b = send(post_to(http, &mesh.b.url("/payments"), key_a)).await;
    assert_replay(on_a, &via_b);
    let via_a = send(post_to(http, &mesh.a.url("/payments"), key_b)).await;
    assert_replay(on_b, &via_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_records_survive_key_store_and_redis_restarts() {
    let mut mesh = mesh(Backend::Redis, plugin("fail_closed", 30_000)).await;
    let http = client();

    // The key store process restarted (SIGKILL, new process, same port, same Redis).
    let first = record_on_both(&mesh, &http).await;
    mesh.keystore.kill().await;
    mesh.keystore.restart().await;
    replay_crosswise(&mesh, &http, &first).await;
    assert_eq!(mesh.upstream.post_requests().await, 2, "upstream POSTs");

    // Redis itself crashed and restarted (append-only file, fsync always).
    let second = record_on_both(&mesh, &http).await;
    let redis = mesh.redis.as_mut().unwrap();
    redis.kill();
    redis.restart();
    mesh.keystore.wait_ready(Duration::from_secs(20)).await;
    replay_crosswise(&mesh, &http, &second).await;
    assert_eq!(mesh.upstream.post_requests().await, 4, "upstream POSTs");

    // Both at once: records made before either restart still replay, on both gateways.
    let third = record_on_both(&mesh, &http).await;
    mesh.keystore.kill().await;
    let redis = mesh.redis.as_mut().unwrap();
    redis.kill();
    redis.restart();
    mesh.keystore.restart().await;
    replay_crosswise(&mesh, &http, &third).await;
    assert_eq!(mesh.upstream.post_requests().await, 6, "upstream POSTs");

    assert_mesh_dedupe_works(&mesh, "after the restarts").await;
    assert_eq!(mesh.upstream.payment_count().await, 8, "payments created");
    assert_gateways_alive(&mut mesh).await;
}

// ---------------------------------------------------------------------------------------------
// 5. A gateway killed while it holds a claim
// ---------------------------------------------------------------------------------------------

/// Under `unknown_outcome: "release"` (at least once) the claim of a dead gateway is taken over
/// once its lease ends. Under the default `"lock"` it is held and then answers "outcome unknown"
/// instead: `e2e_gateway_dies`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_holding_a_claim_frees_the_key_after_the_lease_under_release() {
    const LEASE: Duration = Duration::from_millis(2500);
    let plugin = plugin("fail_closed", u64::try_from(LEASE.as_millis()).unwrap());
    let plugin = merged(
        serde_json::from_str(&plugin).unwrap(),
        &serde_json::json!({"unknown_outcome": "release"}),
    );
    let mut mesh = mesh(Backend::Memory, plugin.to_string()).await;
    let http = client();
    let key = new_key();

    // A claims the key, forwards the request, and the upstream holds it for 10 s.
    let sent = Instant::now();
    let doomed = tokio::spawn(
        post_to(&http, &mesh.a.url("/payments"), &key)
            .header("x-demo-delay-ms", "10000")
            .send(),
    );
    mesh.upstream.wait_post_requests(1).await;
    mesh.a.sigkill();
    let lost = doomed.await.unwrap();
    assert!(
        lost.is_err(),
        "the client of the killed gateway gets no answer: {lost:?}"
    );

    // The claim lives on in the key store: B answers 409 at once.
    let conflict = send(post_to(&http, &mesh.b.url("/payments"), &key)).await;
    let elapsed = sent.elapsed();
    assert!(
        elapsed < LEASE,
        "too slow to observe the live claim ({elapsed:?} >= lease {LEASE:?}): machine overloaded?"
    );
    let problem = assert_problem(&conflict, 409);
    assert_eq!(
        problem["type"], "urn:envoy-idempotency:problem:request-in-progress",
        "{problem}"
    );
    assert!(
        conflict.header("retry-after").is_some(),
        "{}",
        conflict.describe()
    );

    // Poll B until the lease expires and the key executes again (bounded).
    let (executed, _) = until_201(LEASE + Duration::from_secs(20), || {
        send(post_to(&http, &mesh.b.url("/payments"), &key))
    })
    .await;
    // The claim was taken after `sent`, so its lease cannot have expired before `sent + LEASE`.
    assert!(
        sent.elapsed() >= LEASE,
        "the key executed again after {:?}, before the lease ({LEASE:?}) expired",
        sent.elapsed()
    );
    assert_created(&executed, "the takeover after the lease");
    assert_eq!(
        mesh.upstream.post_requests().await,
        2,
        "the killed attempt and the takeover"
    );

    // The takeover's answer is the record now.
    let retry = send(post_to(&http, &mesh.b.url("/payments"), &key)).await;
    assert_replay(&executed, &retry);
    assert_eq!(mesh.upstream.post_requests().await, 2, "upstream POSTs");

    assert!(!mesh.a.process_alive(), "gateway A was killed");
    assert!(mesh.b.process_alive(), "gateway B is alive");
    assert_eq!(
        mesh.b.admin_ready().await,
        Ok((200, "LIVE".to_owned())),
        "gateway B ready"
    );
}
