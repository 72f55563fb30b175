//! The admin API (inspect and purge one record key) behind its own token: each state reported,
//! what a purge removed, a waiting claim freed by a purge, and the admin token kept apart from /v1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{eventually, hex64, settings, unb64, Keystore};

const V1_TOKEN: &str = "v1-token";
const ADMIN_TOKEN: &str = "admin-token";
const ADMIN: Option<&str> = Some("Bearer admin-token");

/// A key store with a `/v1` token and an admin token.
async fn with_admin(backend: Arc<dyn Backend>) -> Keystore {
    let mut s = settings();
    s.token = Some(V1_TOKEN.into());
    s.admin_token = Some(ADMIN_TOKEN.into());
    Keystore::start(backend, s).await
}

async fn inspect(ks: &Keystore, key: &str) -> Value {
    let (status, body) = ks.admin(Method::GET, key, ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub async fn admin_reports_each_state(backend: Arc<dyn Backend>) {
    let ks = with_admin(backend).await;
    let (key, fp) = (hex64(), hex64());
    assert_eq!(inspect(&ks, &key).await, json!({"state": "absent"}));

    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let body = inspect(&ks, &key).await;
    assert_eq!(body["state"], "in_flight", "{body}");
    assert_eq!(body["fingerprint"], fp.as_str());
    let left = body["lease_left_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 30_000, "{body}");
    assert!(
        !body.to_string().contains(&token),
        "the fencing token is never shown: {body}"
    );

    let record = [0u8, 0xff, b'{', 0x80];
    let before = unix_ms();
    assert_eq!(
        ks.complete(&key, &token, &record, 60_000).await.0,
        StatusCode::OK
    );
    let body = inspect(&ks, &key).await;
    assert_eq!(body["state"], "completed", "{body}");
    assert_eq!(body["fingerprint"], fp.as_str());
    assert_eq!(unb64(&body["record"]), record);
    let left = body["expires_in_ms"].as_u64().unwrap();
    assert!(left > 50_000 && left <= 60_000, "{body}");
    let stored = body["stored_at_ms"].as_u64().unwrap();
    assert!(
        stored + 5_000 >= before && stored <= unix_ms() + 5_000,
        "{body}"
    );
    // Reading changed nothing: the record still replays.
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["outcome"], "completed", "{body}");

    // A lease that ended: the key is free, reported as expired until the backend drops it.
    let key = hex64();
    ks.claim_ok(&key, &fp, 50).await;
    let body = eventually(Duration::from_secs(5), "the lease to end", || {
        let (ks, key) = (ks.clone(), key.clone());
        async move {
            let body = inspect(&ks, &key).await;
            (body["state"] != "in_flight").then_some(body)
        }
    })
    .await;
    match body["state"].as_str() {
        Some("absent") => {}
        Some("expired") => {
            assert_eq!(body["was"], "in_flight", "{body}");
            assert_eq!(body["fingerprint"], fp.as_str());
        }
        _ => panic!("{body}"),
    }
}

pub async fn admin_purge_says_what_it_removed(backend: Arc<dyn Backend>) {
    let ks = with_admin(backend).await;
    let (key, fp) = (hex64(), hex64());
    let (status, body) = ks.admin(Method::DELETE, &key, ADMIN).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"removed": {"state": "absent"}}))
    );

    // A claim in flight: removed, and its holder's token is stale from then on.
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let (status, body) = ks.admin(Method::DELETE, &key, ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["removed"]["state"], "in_flight", "{body}");
    assert_eq!(body["removed"]["fingerprint"], fp.as_str());
    assert_eq!(inspect(&ks, &key).await, json!({"state": "absent"}));
    let (status, body) = ks.complete(&key, &token, b"late", 60_000).await;
    assert_eq!(
        (status, body),
        (StatusCode::CONFLICT, json!({"outcome": "stale"}))
    );

    // A completed record: removed with its bytes; the next request with the key runs again.
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    ks.complete(&key, &token, b"the record", 60_000).await;
    let (status, body) = ks.admin(Method::DELETE, &key, ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["removed"]["state"], "completed", "{body}");
    assert_eq!(unb64(&body["removed"]["record"]), b"the record");
    let (_, body) = ks.claim(&key, &hex64(), 30_000).await;
    assert_eq!(
        body["outcome"], "claimed",
        "another payload runs now: {body}"
    );
}

pub async fn admin_purge_frees_a_waiting_claim(backend: Arc<dyn Backend>) {
    let ks = with_admin(backend).await;
    let (key, fp) = (hex64(), hex64());
    ks.claim_ok(&key, &fp, 60_000).await;
    let waiter = {
        let (ks, key, fp) = (ks.clone(), key.clone(), fp.clone());
        tokio::spawn(async move { ks.claim_wait(&key, &fp, 30_000, 30_000).await })
    };
    // Whether the purge lands before the waiter's first read or while it is held, the waiter
    // claims the key at once instead of waiting out the 60 s lease (memory.rs checks the held case).
    let purged = Instant::now();
    let (status, body) = ks.admin(Method::DELETE, &key, ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "claimed", "{body}");
    assert!(
        purged.elapsed() < Duration::from_secs(2),
        "{:?}",
        purged.elapsed()
    );
}

pub async fn admin_token_is_its_own(backend: Arc<dyn Backend>) {
    let key = hex64();
    // Without an admin token the admin API does not exist, whatever the caller sends.
    let mut s = settings();
    s.token = Some(V1_TOKEN.into());
    let off = Keystore::start(backend.clone(), s).await;
    for auth in [None, Some("Bearer v1-token"), ADMIN] {
        for method in [Method::GET, Method::DELETE] {
            let (status, _) = off.admin(method.clone(), &key, auth).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {auth:?}");
        }
    }

    let ks = with_admin(backend).await;
    // The /v1 token, a wrong token, another scheme or none: 401, and nothing is removed.
    let fp = hex64();
    ks.claim_ok(&key, &fp, 30_000).await;
    for auth in [
        None,
        Some("Bearer v1-token"),
        Some("Bearer admin-token2"),
        Some("Basic admin-token"),
        Some("admin-token"),
    ] {
        for method in [Method::GET, Method::DELETE] {
            let (status, body) = ks.admin(method.clone(), &key, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {auth:?}");
            assert!(body["error"].is_string(), "{body}");
        }
    }
    assert_eq!(inspect(&ks, &key).await["state"], "in_flight");
    // The admin token does not open /v1.
    let claim = json!({"key": hex64(), "fingerprint": hex64(), "lease_ms": 1000}).to_string();
    let (status, _) = ks.post_auth("/v1/claim", claim, ADMIN).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A malformed key is named.
    let (status, body) = ks.admin(Method::GET, &key.to_uppercase(), ADMIN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("key"), "{body}");
    // Admin calls are counted.
    let (_, text) = ks.get("/metrics").await;
    for line in [
        r#"keystore_requests_total{op="admin_inspect",outcome="in_flight"} 1"#,
        r#"keystore_requests_total{op="admin_inspect",outcome="unauthorized"} 5"#,
        r#"keystore_requests_total{op="admin_purge",outcome="unauthorized"} 5"#,
        r#"keystore_requests_total{op="admin_inspect",outcome="bad_request"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}
