//! Across gateways: a record stored after its client left replays elsewhere, an upstream slower
//! than three leases keeps its lock, and a thousand duplicates with client timeouts run once per key.

use super::*;

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
        let resp = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), body).await;
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
            let dup = send_payment(&http, gateway, "Bearer alice", Some(&key), body).await;
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
        let replay = send_payment(&http, gateway, "Bearer alice", Some(&key), body).await;
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
