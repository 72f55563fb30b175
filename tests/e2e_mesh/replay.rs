//! Replay across gateways and 100 concurrent duplicates over both, on every backend; a request
//! in flight on one gateway, and a 5xx on one gateway, as the other sees them.

use super::*;

async fn response_recorded_on_a_replays_on_b(backend: Backend) {
    let mesh = mesh(backend, plugin("fail_closed", 30_000)).await;
    let http = client();
    let key = new_key();

    let first = send(post_to(&http, &mesh.a.url("/payments"), &key)).await;
    assert_created(&first, "the first request on A");
    let on_b = send(post_to(&http, &mesh.b.url("/payments"), &key)).await;
    assert_replay(&first, &on_b);
    assert_eq!(on_b.body, first.body, "byte-exact body");
    assert_eq!(on_b.header("idempotent-replayed"), Some("true"));
    // And back on A (its near cache), still one execution.
    let on_a = send(post_to(&http, &mesh.a.url("/payments"), &key)).await;
    assert_replay(&first, &on_a);

    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
    assert_eq!(mesh.upstream.payment_count().await, 1, "payments created");
    assert_eq!(mesh.a.counter("executed").await, 1);
    assert_eq!(mesh.b.counter("replayed").await, 1);
    assert_eq!(mesh.b.metric("executed").await.unwrap_or(0), 0);
    if let Some(redis) = &mesh.redis {
        // The record went through the key store into Redis (only keyed hashes, no raw key).
        let keys =
            idempotency_testkit::redis::redis_command(redis.port, "KEYS *").unwrap_or_default();
        assert!(
            keys.starts_with('*') && !keys.starts_with("*0"),
            "Redis holds no record: {keys:?}"
        );
        assert!(
            !keys.contains(&key),
            "the raw key is stored in Redis: {keys:?}"
        );
    }

    // The same key with another payload, on B: 422. Another caller's same key: its own execution.
    let url_b = mesh.b.url("/payments");
    let other = r#"{"amount":101}"#;
    let mismatch = send(post_as(&http, &url_b, "Bearer alice", &key, other)).await;
    assert_problem(&mismatch, 422);
    let bob = send(post_as(&http, &url_b, "Bearer bob", &key, BODY)).await;
    assert_created(&bob, "another caller's request with the same key");
    assert_eq!(mesh.upstream.post_requests().await, 2, "upstream POSTs");
}

async fn hundred_concurrent_duplicates_over_both_gateways_create_one_payment(backend: Backend) {
    let mesh = mesh(backend, plugin("fail_closed", 30_000)).await;
    let http = client();
    let key = new_key();
    let (url_a, url_b) = (mesh.a.url("/payments"), mesh.b.url("/payments"));

    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let url = if i % 2 == 0 { &url_a } else { &url_b };
            // The upstream holds the winner a little so that many duplicates overlap it.
            let req = post_to(&http, url, &key).header("x-demo-delay-ms", "300");
            tokio::spawn(send(req))
        })
        .collect();
    let (mut created, mut replayed, mut conflicts) = (0, 0, 0);
    let mut bodies = HashSet::new();
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            201 => {
                if answer.replayed() {
                    replayed += 1;
                } else {
                    created += 1;
                }
                bodies.insert(answer.body.clone());
            }
            409 => {
                assert_problem(&answer, 409);
                conflicts += 1;
            }
            _ => panic!("unexpected answer: {}", answer.describe()),
        }
    }
    assert_eq!(
        created, 1,
        "exactly one answer comes from the upstream (replayed {replayed}, 409 {conflicts})"
    );
    assert_eq!(bodies.len(), 1, "every 201 carries the same payment");
    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
    assert_eq!(mesh.upstream.payment_count().await, 1, "payments created");

    // Whatever the race looked like, a retry on either gateway now replays that payment.
    let body = bodies.into_iter().next().unwrap();
    for envoy in [&mesh.a, &mesh.b] {
        let retry = send(post_to(&http, &envoy.url("/payments"), &key)).await;
        assert_eq!(retry.status, 201, "{}", retry.describe());
        assert!(retry.replayed(), "{}", retry.describe());
        assert_eq!(retry.body, body);
    }
    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
}

macro_rules! on_every_backend {
    ($($backend:ident => $module:ident),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn response_recorded_on_a_replays_on_b() {
                super::response_recorded_on_a_replays_on_b(Backend::$backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn hundred_concurrent_duplicates_over_both_gateways_create_one_payment() {
                super::hundred_concurrent_duplicates_over_both_gateways_create_one_payment(
                    Backend::$backend,
                )
                .await;
            }
        }
    )*};
}

on_every_backend!(Memory => memory, Redis => redis_backend);

// ---------------------------------------------------------------------------------------------
// 2. In flight on one gateway, failed on one gateway
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn in_flight_on_one_gateway_conflicts_on_the_other() {
    let mesh = mesh(Backend::Memory, plugin("fail_closed", 30_000)).await;
    let http = client();
    let key = new_key();
    let (url_a, url_b) = (mesh.a.url("/payments"), mesh.b.url("/payments"));

    let slow = tokio::spawn(send(
        post_to(&http, &url_a, &key).header("x-demo-delay-ms", "1500"),
    ));
    mesh.upstream.wait_post_requests(1).await;

    let conflict = send(post_to(&http, &url_b, &key)).await;
    assert_problem(&conflict, 409);
    assert!(
        conflict.header("retry-after").is_some(),
        "{}",
        conflict.describe()
    );

    let first = slow.await.unwrap();
    assert_created(&first, "the first request on A");
    let retry = send(post_to(&http, &url_b, &key)).await;
    assert_replay(&first, &retry);
    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
}

#[tokio::test]
async fn a_5xx_releases_the_claim_for_the_whole_mesh() {
    let mesh = mesh(Backend::Memory, plugin("fail_closed", 30_000)).await;
    let http = client();
    let key = new_key();
    let (url_a, url_b) = (mesh.a.url("/payments"), mesh.b.url("/payments"));

    let failed = send(post_to(&http, &url_a, &key).header("x-demo-status", "502")).await;
    assert_eq!(failed.status, 502, "{}", failed.describe());

    let on_b = send(post_to(&http, &url_b, &key)).await;
    assert_created(&on_b, "the retry after a 5xx");
    let on_a = send(post_to(&http, &url_a, &key)).await;
    assert_replay(&on_b, &on_a);
    assert_eq!(mesh.upstream.post_requests().await, 2, "upstream POSTs");
    assert_eq!(mesh.upstream.payment_count().await, 1, "payments created");
}
