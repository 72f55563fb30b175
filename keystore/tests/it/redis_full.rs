//! A Redis at its `maxmemory` with `noeviction`: every write that would grow it is refused before
//! it changes anything, the key store answers `503 store full` (counted), and what does not grow
//! memory (reads, replays, renewals, releases) goes on working.

use std::time::Duration;

use idempotency_keystore::backend::redis::RedisBackend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{hex64, settings, unb64, Keystore, RedisServer};

/// The limit the test's Redis runs with.
const MAX_MEMORY: u64 = 8 * 1024 * 1024;
/// The records written: Redis checks its limit before a write, not after, so one write may pass
/// it by its own size (see the Redis backend's docs); then every growing write is refused.
const RECORD: usize = 256 * 1024;

/// Memory as `INFO memory` reports it.
#[derive(Debug, Clone, Copy, Default)]
struct Used {
    /// `used_memory`: what Redis compares with `maxmemory`.
    total: u64,
    /// `mem_clients_normal`: the clients' query and output buffers, part of `total`. They hold
    /// requests and answers in transit (a 256 KiB record read or written), which Redis must read
    /// before it can refuse them, and free once sent.
    clients: u64,
}

impl Used {
    /// What the stored data and Redis itself hold: `total` without the clients' buffers.
    fn held(self) -> u64 {
        self.total - self.clients
    }
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> Used {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    Used {
        total: field("used_memory"),
        clients: field("mem_clients_normal"),
    }
}

/// Whether memory is within its limit: what Redis holds never passes `maxmemory`, and with the
/// buffers of the requests and answers in transit (a few records) it stays close.
fn within(used: Used) -> bool {
    used.held() <= MAX_MEMORY && used.total <= MAX_MEMORY + 4 * RECORD as u64
}

/// Reads memory until it is within its limit, for at most a second. Redis adds a client's buffers
/// to `mem_clients_normal` in its client cron (a tenth of a second at the default `hz`), while
/// `used_memory` counts them at once: an answer of a record just sent shows in `total` before it
/// shows in `clients`. Stored data does not shrink by itself, so a store past the limit fails.
async fn check(conn: &mut redis::aio::MultiplexedConnection) -> Used {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let used = used_memory(conn).await;
        if within(used) {
            return used;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{used:?} past {MAX_MEMORY} (or past {} with the clients' buffers)",
            MAX_MEMORY + 4 * RECORD as u64
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn peak_of(a: Used, b: Used) -> Used {
    if b.total > a.total {
        b
    } else {
        a
    }
}

fn is_full(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE
        && body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("store full: redis is at its maxmemory"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_redis_refuses_growth_and_keeps_answering() {
    let redis = RedisServer::start(&[
        "--maxmemory",
        &MAX_MEMORY.to_string(),
        "--maxmemory-policy",
        "noeviction",
    ]);
    let backend = RedisBackend::single(&[redis.url()], Duration::from_millis(500)).unwrap();
    let ks = Keystore::start(std::sync::Arc::new(backend), settings()).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Claims held across the fill, renewed and answered later.
    let fp = hex64();
    let held: Vec<(String, String)> = futures_util::future::join_all((0..3).map(|_| {
        let (ks, key, fp) = (ks.clone(), hex64(), fp.clone());
        async move {
            let token = ks.claim_ok(&key, &fp, 60_000).await;
            (key, token)
        }
    }))
    .await;
    // Fill with records until Redis refuses one, then with claims (smaller) until it refuses
    // one too; memory never passes the bound meanwhile, and every answer is a success or a clear
    // `store full`.
    let record = vec![b'r'; RECORD];
    let mut stored = Vec::new();
    let mut peak = Used::default();
    let refused_complete = loop {
        assert!(stored.len() < 200, "redis never refused a record");
        let key = hex64();
        let token = ks.claim_ok(&key, &fp, 60_000).await;
        let (status, body) = ks.complete(&key, &token, &record, 600_000).await;
        let used = check(&mut conn).await;
        peak = peak_of(peak, used);
        if is_full(status, &body) {
            break key;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        stored.push(key);
    };
    // Claims until 20 in a row are refused: the clients' buffers shrink now and then (Redis
    // trims them in the background), which makes room for a few more claims each time.
    let (mut claims, mut in_a_row, mut refused_claim) = (0, 0, None);
    while in_a_row < 20 {
        assert!(claims < 100_000, "redis never refused claims for good");
        let key = hex64();
        let (status, body) = ks.claim(&key, &fp, 60_000).await;
        if is_full(status, &body) {
            in_a_row += 1;
            refused_claim = Some(key);
            continue;
        }
        assert_eq!(body["outcome"], "claimed", "{status} {body}");
        (claims, in_a_row) = (claims + 1, 0);
        if claims % 50 == 0 {
            let used = check(&mut conn).await;
            peak = peak_of(peak, used);
        }
    }
    let used = check(&mut conn).await;
    peak = peak_of(peak, used);
    eprintln!(
        "full after {} records of {RECORD} bytes and {claims} claims: peak {peak:?} \
         (maxmemory {MAX_MEMORY})",
        stored.len()
    );
    assert!(stored.len() >= 10, "{} records only", stored.len());
    // A refused write changed nothing: the key of the refused complete is still in flight, that
    // of the refused claim absent.
    let (_, body) = ks.lookup(&refused_complete, &fp, Some("report")).await;
    assert_eq!(body["outcome"], "in_flight", "{body}");
    let (_, body) = ks
        .lookup(&refused_claim.unwrap(), &fp, Some("report"))
        .await;
    assert_eq!(body["outcome"], "absent", "{body}");
    // A record is refused too, clearly, and memory stays put.
    for (key, token) in &held {
        let (status, body) = ks.complete(key, token, &record, 600_000).await;
        assert!(is_full(status, &body), "{status} {body}");
    }
    check(&mut conn).await;
    // What does not grow memory works: replays, lookups, renewals (single and batched).
    for key in stored.iter().take(3) {
        let (status, body) = ks.claim(key, &fp, 60_000).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(unb64(&body["record"]), record);
        let (_, body) = ks.lookup(key, &fp, Some("report")).await;
        assert_eq!(body["outcome"], "completed");
    }
    for (key, token) in &held {
        assert_eq!(
            ks.renew(key, token, 60_000).await,
            (StatusCode::OK, json!({"outcome": "renewed"}))
        );
    }
    let renewals: Vec<Value> = held
        .iter()
        .map(|(key, token)| json!({"key": key, "token": token, "lease_ms": 60_000}))
        .collect();
    let (status, body) = ks
        .post("/v1/renew-batch", json!({ "renewals": renewals }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"outcomes": ["renewed", "renewed", "renewed"]}));
    assert_eq!(ks.get("/readyz").await.0, StatusCode::OK);
    check(&mut conn).await;
    let (_, metrics) = ks.get("/metrics").await;
    for (op, at_least) in [("claim", 20), ("complete", 3)] {
        let prefix = format!(r#"keystore_requests_total{{op="{op}",outcome="full"}} "#);
        let count: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(count >= at_least, "{prefix}{count} in\n{metrics}");
    }
    // A release frees room; then a claim is taken again.
    let (key, token) = &held[0];
    assert_eq!(ks.release(key, token).await.0, StatusCode::OK);
    for key in &stored[..4] {
        redis::cmd("DEL")
            .arg(format!("idem:{{{key}}}"))
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    ks.claim_ok(&hex64(), &fp, 60_000).await;
}
