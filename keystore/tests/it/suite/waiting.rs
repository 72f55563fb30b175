//! Claims that wait for an in-flight key: the record, a release, an expired lease, a timeout,
//! twenty waiters at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{hex64, settings, unb64, Keystore};

use super::open;

/// Runs `f` on the key's holder after `after`, in the background.
fn later<F, Fut>(after: Duration, f: F) -> tokio::task::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        f().await;
    })
}

pub async fn waiter_gets_the_record(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let record: &[u8] = &[0x00, 0xff, b'\r', b'\n', 0x80, b'{', b'}'];
    let holder = {
        let (ks, key) = (ks.clone(), key.clone());
        later(Duration::from_millis(300), move || async move {
            let (status, _) = ks.complete(&key, &token, record, 60_000).await;
            assert_eq!(status, StatusCode::OK);
        })
    };
    let started = Instant::now();
    let (status, body) = ks.claim_wait(&key, &fp, 30_000, 5_000).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "completed", "{body}");
    assert_eq!(unb64(&body["record"]), record);
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1_500),
        "{waited:?}"
    );
    holder.await.unwrap();
}

pub async fn waiter_claims_after_release(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let holder = {
        let (ks, key, token) = (ks.clone(), key.clone(), token.clone());
        later(Duration::from_millis(300), move || async move {
            assert_eq!(ks.release(&key, &token).await.0, StatusCode::OK);
        })
    };
    let started = Instant::now();
    let (status, body) = ks.claim_wait(&key, &fp, 30_000, 5_000).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "claimed", "{body}");
    assert!(started.elapsed() < Duration::from_millis(1_500));
    let new = body["token"].as_str().unwrap();
    assert_ne!(new, token);
    // The waiter now holds the key.
    assert_eq!(ks.complete(&key, new, b"w", 60_000).await.0, StatusCode::OK);
    holder.await.unwrap();
}

pub async fn waiter_takes_over_an_expired_lease(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let old = ks.claim_ok(&key, &fp, 300).await;
    let started = Instant::now();
    let (_, body) = ks
        .claim_with(
            &key,
            &fp,
            30_000,
            json!({"wait_ms": 5_000, "abandoned": "take_over"}),
        )
        .await;
    assert_eq!(body["outcome"], "claimed", "{body}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(1_500),
        "{waited:?}"
    );
    assert_ne!(body["token"].as_str().unwrap(), old);
}

pub async fn waiter_times_out_in_flight(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    ks.claim_ok(&key, &fp, 30_000).await;
    let started = Instant::now();
    let (status, body) = ks.claim_wait(&key, &fp, 30_000, 300).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "in_flight", "{body}");
    let left = body["retry_after_ms"].as_u64().unwrap();
    assert!(left > 25_000 && left < 30_000, "{body}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1_300),
        "{waited:?}"
    );
}

pub async fn twenty_waiters_get_the_record(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (ks, key, fp) = (ks.clone(), key.clone(), fp.clone());
            tokio::spawn(async move { ks.claim_wait(&key, &fp, 30_000, 5_000).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_eq!(
        ks.complete(&key, &token, b"for all", 60_000).await.0,
        StatusCode::OK
    );
    for w in waiters {
        let (status, body) = w.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["outcome"], "completed", "{body}");
        assert_eq!(unb64(&body["record"]), b"for all");
    }
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

pub async fn waiter_answers_at_once_when_nothing_to_wait_for(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    // Another fingerprint: no wait.
    let started = Instant::now();
    let (_, body) = ks.claim_wait(&key, &hex64(), 30_000, 5_000).await;
    assert_eq!(body, json!({"outcome": "mismatch"}));
    assert!(started.elapsed() < Duration::from_millis(1_000));
    ks.complete(&key, &token, b"r", 60_000).await;
    // Completed, mismatched or free: no wait either.
    let started = Instant::now();
    let (_, body) = ks.claim_wait(&key, &fp, 30_000, 5_000).await;
    assert_eq!(body["outcome"], "completed", "{body}");
    let (_, body) = ks.claim_wait(&key, &hex64(), 30_000, 5_000).await;
    assert_eq!(body, json!({"outcome": "mismatch"}));
    let (_, body) = ks.claim_wait(&hex64(), &fp, 30_000, 5_000).await;
    assert_eq!(body["outcome"], "claimed", "{body}");
    assert!(started.elapsed() < Duration::from_millis(1_000));
}

pub async fn wait_outlasts_the_backend_timeout(backend: Arc<dyn Backend>) {
    let mut s = settings();
    s.backend_timeout = Duration::from_millis(250);
    let ks = Keystore::start(backend, s).await;
    let (key, fp) = (hex64(), hex64());
    ks.claim_ok(&key, &fp, 30_000).await;
    // The bound applies to each read, not to the wait between reads.
    let started = Instant::now();
    let (status, body) = ks.claim_wait(&key, &fp, 30_000, 1_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "in_flight", "{body}");
    assert!(started.elapsed() >= Duration::from_millis(1_000));
}
