//! More request bytes than one worker's VM may hold: 300 concurrent 900 KB POSTs, each its own
//! key, against a 1 MiB `memory_budget_bytes` (the smallest allowed, so that CI needs no more than
//! a few hundred MB; the default is 512 MiB). Before the budget, about 850 such detached requests
//! filled the VM's 1 GiB and the next allocation aborted it. Every client is answered (201, or
//! `503` memory-budget before anything ran), no key runs twice, and the VM lives on.

use super::*;

const CLIENTS: usize = 300;
const BODY_BYTES: usize = 900_000;

/// Runs the burst against a route whose rule is `rule`; returns (201s, 503 memory-budget).
async fn burst(rule: Value, what: &str) {
    let upstream = Upstream::start().await;
    let config = plugin(rule, json!({"memory_budget_bytes": 1 << 20}));
    let mut envoy =
        Envoy::start(&EnvoyOptions::with_filter(upstream.port, config).workers(1)).await;
    let body = format!(r#"{{"amount":9,"pad":"{}"}}"#, "x".repeat(BODY_BYTES));
    let http = client();
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let req = post_payment(&http, &envoy, "Bearer bulk", Some(&new_key()), &body)
                .header("x-demo-delay-ms", "1000");
            tokio::spawn(req.send())
        })
        .collect();
    let (mut created, mut refused, mut unreached) = (0u64, 0u64, 0u64);
    for task in tasks {
        let resp = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: a client got no answer: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        match status {
            201 => created += 1,
            // Envoy's own answer when its connection to the service could not be opened in
            // time (a loaded machine, 300 connections at once): nothing reached the service, so
            // it is a clear answer too, and the executions below still count only 201s.
            503 if bytes.starts_with(b"upstream connect error") => unreached += 1,
            503 => {
                let problem: Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{what}: 503 neither a problem nor Envoy's: {e}"));
                assert!(
                    problem["type"]
                        .as_str()
                        .unwrap_or("")
                        .ends_with("memory-budget"),
                    "{what}: {problem}"
                );
                refused += 1;
            }
            other => panic!("{what}: {other} {}", String::from_utf8_lossy(&bytes)),
        }
    }
    let took = started.elapsed();
    // Each key is its own: one upstream request per 201, none for a refusal.
    assert_eq!(
        upstream.post_requests().await,
        created,
        "{what}: executions"
    );
    assert_eq!(
        envoy.metric("over_budget").await.unwrap_or(0),
        refused,
        "{what}"
    );
    println!(
        "BURST|{what}: {CLIENTS} concurrent {} KB POSTs, memory_budget_bytes 1 MiB|{created}× 201, {refused}× 503 memory-budget, {unreached}× 503 service not reached in {:.1} s|{created} (≤ 1 per key)|",
        BODY_BYTES / 1000,
        took.as_secs_f64()
    );
    assert_alive_and_serving(&mut envoy, &upstream, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_detached_burst_of_large_bodies_stays_within_the_budget() {
    let _alone = alone().await;
    let rule = json!({
        "execution": "detached", "upstream_cluster": "payments", "upstream_timeout_ms": 20_000,
    });
    burst(rule, "detached").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inline_burst_of_large_bodies_stays_within_the_budget() {
    let _alone = alone().await;
    burst(json!({}), "inline").await;
}
