//! Thousands of duplicates of one key waiting on one worker (`in_flight: "wait"`, no key store):
//! when the first request's record lands, the root context answers all of them. Sent from one
//! callback, those answers nested one inside the other on Envoy's stack and about 300 killed the
//! VM ("Maximum call stack size exceeded"); a few per callback keep the stack flat. 10,000 waiters
//! were answered by hand on Envoy 1.40 this way; 2,000 keep the test short.

use super::*;

const DUPLICATES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_waiting_duplicates_all_get_the_replay() {
    let _alone = alone().await;
    let upstream = Upstream::start().await;
    let config = plugin(
        json!({"in_flight": "wait", "max_wait_ms": 30_000}),
        json!({}),
    );
    let mut envoy =
        Envoy::start(&EnvoyOptions::with_filter(upstream.port, config).workers(1)).await;
    let (key, body) = (new_key(), r#"{"amount":26}"#);

    // The first request holds the key at the upstream until every duplicate waits.
    let first = tokio::spawn(send(
        post_payment(&client(), &envoy, "Bearer alice", Some(&key), body)
            .header("x-demo-delay-ms", "8000"),
    ));
    upstream.wait_post_requests(1).await;

    // h2c: a handful of connections carry every duplicate.
    let clients: Vec<reqwest::Client> = (0..8).map(|_| h2c_client()).collect();
    let started = Instant::now();
    let duplicates: Vec<_> = (0..DUPLICATES)
        .map(|i| {
            let req = post_payment(
                &clients[i % clients.len()],
                &envoy,
                "Bearer alice",
                Some(&key),
                body,
            );
            tokio::spawn(send(req))
        })
        .collect();
    let all_waiting = eventually(Duration::from_secs(7), || async {
        envoy.metric("waited").await.unwrap_or(0) >= DUPLICATES as u64
    })
    .await;
    assert!(
        all_waiting,
        "only {:?} of {DUPLICATES} duplicates were waiting before the first request ended",
        envoy.metric("waited").await
    );

    let first = first.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.describe());
    assert!(!first.replayed());
    for task in duplicates {
        let answer = task.await.unwrap();
        assert_replay(&first, &answer);
    }
    let took = started.elapsed();
    assert_eq!(
        upstream.post_requests().await,
        1,
        "one execution for the key"
    );
    assert_eq!(envoy.counter("wait_replayed").await, DUPLICATES as u64);
    println!(
        "BURST|{DUPLICATES} waiting duplicates of one key, one worker|every one replayed in {:.1} s|1 execution|",
        took.as_secs_f64()
    );
    assert_alive_and_serving(&mut envoy, &upstream, "waiting duplicates").await;
}
