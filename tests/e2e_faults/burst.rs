//! A burst of 1,000 duplicates over two gateways: one execution, every other answer a replay or
//! a 409.

use super::*;

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
        let resp = send_payment(&http, gateway, "alice", Some(&key), body).await;
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
