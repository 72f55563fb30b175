//! The suite on a single Redis node, plus restart and outage behaviour.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use idempotency_keystore::backend::redis::RedisBackend;
use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;

use crate::common::{eventually, hex64, settings, unb64, Keystore, RedisServer};

/// One Redis for the whole suite: tests use random keys, so they never collide.
fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start(&[]))
}

fn backend_for(url: String) -> Arc<dyn Backend> {
    Arc::new(RedisBackend::single(&[url], Duration::from_millis(500)).unwrap())
}

async fn backend() -> Arc<dyn Backend> {
    backend_for(shared().url())
}

crate::suite::backend_suite!(backend);

/// Completed records survive a crash and restart of a Redis with an fsync'd append-only file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_completed_records() {
    let mut redis = RedisServer::durable();
    let ks = Keystore::start(backend_for(redis.url()), settings()).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let record = [0u8, 0xff, 0x80, b'x'];
    assert_eq!(
        ks.complete(&key, &token, &record, 60_000).await.0,
        StatusCode::OK
    );
    redis.kill();
    redis.restart();
    let body = eventually(Duration::from_secs(5), "redis back", || async {
        let (status, body) = ks.claim(&key, &fp, 30_000).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(body["outcome"], "completed", "{body}");
    assert_eq!(unb64(&body["record"]), record);
}

/// With Redis down, requests fail fast with 503 and the service is not ready; once Redis is back
/// on the same address, everything works again without restarting the key store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_503_then_recovers() {
    let mut redis = RedisServer::start(&[]);
    let ks = Keystore::start(backend_for(redis.url()), settings()).await;
    ks.claim_ok(&hex64(), &hex64(), 30_000).await;
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = ks.claim(&hex64(), &hex64(), 30_000).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("backend unavailable"),
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    let (status, _) = ks.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ks.get("/healthz").await.0, StatusCode::OK);
    redis.restart();
    eventually(Duration::from_secs(10), "recovery", || async {
        let (status, _) = ks.claim(&hex64(), &hex64(), 30_000).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(ks.get("/readyz").await.0, StatusCode::OK);
}

/// The service starts while Redis is still down (lazy connect) and becomes ready when it comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_redis() {
    let mut redis = RedisServer::start(&[]);
    redis.kill();
    let ks = Keystore::start(backend_for(redis.url()), settings()).await;
    assert_eq!(ks.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    redis.restart();
    eventually(Duration::from_secs(10), "ready", || async {
        (ks.get("/readyz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    ks.claim_ok(&hex64(), &hex64(), 30_000).await;
}

/// Calls per command since the server started, from `INFO commandstats`.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Waiting claims poll with backoff (20 ms doubling to 200 ms): a waiter makes at most
/// 6 + wait_ms / 200 reads, each one EVALSHA of the claim script, which runs TIME and HMGET on a
/// held key. 20 waiters for 1 s stay within 20 × 11 script calls, 3 × that in `commandstats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_poll_within_the_documented_rate() {
    // A Redis of our own: the shared one counts the other tests' commands too.
    let redis = RedisServer::start(&[]);
    let ks = Keystore::start(backend_for(redis.url()), settings()).await;
    let (key, fp) = (hex64(), hex64());
    // Connects and loads the claim script before counting.
    ks.claim_ok(&key, &fp, 30_000).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // (script calls, all commands but our INFO)
    let count = |calls: &[(String, u64)]| -> (u64, u64) {
        let sum = |keep: &dyn Fn(&str) -> bool| -> u64 {
            calls
                .iter()
                .filter(|(name, _)| keep(name))
                .map(|(_, n)| n)
                .sum()
        };
        (
            sum(&|name| name.starts_with("eval") || name.starts_with("script")),
            sum(&|name| name != "info"),
        )
    };
    let before = count(&command_calls(&mut conn).await);
    let started = Instant::now();
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (ks, key, fp) = (ks.clone(), key.clone(), fp.clone());
            tokio::spawn(async move { ks.claim_wait(&key, &fp, 30_000, 1_000).await })
        })
        .collect();
    for w in waiters {
        let (status, body) = w.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["outcome"], "in_flight", "{body}");
    }
    let waited = started.elapsed();
    let after = command_calls(&mut conn).await;
    let (scripts, all) = count(&after);
    let (scripts, all) = (scripts - before.0, all - before.1);
    eprintln!("20 waiters, {waited:?}: {scripts} script calls, {all} commands ({after:?})");
    assert!(scripts >= 20, "every waiter reads at least once: {scripts}");
    assert!(
        scripts <= 20 * 11,
        "{scripts} script calls for 20 waiters over 1 s"
    );
    assert!(all <= 3 * 20 * 11, "{all} commands for 20 waiters over 1 s");
}
