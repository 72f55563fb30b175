//! The behaviour suite every backend must pass. `backend_suite!(factory)` instantiates it as
//! `#[tokio::test]`s for an `async fn factory() -> Arc<dyn Backend>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{b64, eventually, hex64, settings, unb64, Keystore};

macro_rules! backend_suite {
    ($factory:path) => {
        $crate::suite::backend_suite!(@tests $factory;
            claim_then_in_flight, completed_record_is_byte_exact, mismatch_in_both_states,
            token_fencing, release_frees_the_key, lease_takeover_after_expiry,
            retention_expiry, concurrent_claims_have_one_winner, malformed_fields_are_named,
            bearer_token_required, body_limit_gives_413, health_ready_and_metrics,
            complete_after_expiry_is_stale, complete_twice_is_stale, renew_extends_the_lease,
            proposed_token_is_the_claims_token,
            renew_is_fenced, renew_after_expiry_is_stale, waiter_gets_the_record,
            waiter_claims_after_release, waiter_takes_over_an_expired_lease,
            waiter_times_out_in_flight, twenty_waiters_get_the_record,
            waiter_answers_at_once_when_nothing_to_wait_for, wait_outlasts_the_backend_timeout,
            lookup_reports_without_claiming, complete_refuses_a_record_over_the_limit,
            admin_reports_each_state, admin_purge_says_what_it_removed,
            admin_purge_frees_a_waiting_claim, admin_token_is_its_own,
            compact_bodies_on_every_endpoint, formats_follow_content_type_and_accept);
    };
    (@tests $factory:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::suite::$name($factory().await).await
            }
        )*
    };
}
pub(crate) use backend_suite;

async fn open(backend: Arc<dyn Backend>) -> Keystore {
    Keystore::start(backend, settings()).await
}

pub async fn claim_then_in_flight(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let (status, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "in_flight", "{body}");
    let left = body["retry_after_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 30_000, "{body}");
}

pub async fn completed_record_is_byte_exact(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let records: [&[u8]; 3] = [
        b"HTTP/1.1 200\r\n\r\n{\"ok\":true}",
        &[0x00, 0xff, 0xfe, 0xc3, 0x28, 0x80, 0x00, b'\n', 0x7f],
        b"",
    ];
    for record in records {
        let (key, fp) = (hex64(), hex64());
        let token = ks.claim_ok(&key, &fp, 30_000).await;
        let (status, body) = ks.complete(&key, &token, record, 60_000).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"outcome": "stored"}))
        );
        for _ in 0..2 {
            let (status, body) = ks.claim(&key, &fp, 30_000).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["outcome"], "completed", "{body}");
            assert_eq!(unb64(&body["record"]), record);
        }
    }
}

pub async fn mismatch_in_both_states(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let (status, body) = ks.claim(&key, &hex64(), 30_000).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"outcome": "mismatch"}))
    );
    ks.complete(&key, &token, b"r", 60_000).await;
    let (status, body) = ks.claim(&key, &hex64(), 30_000).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"outcome": "mismatch"}))
    );
}

pub async fn token_fencing(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let stale = (StatusCode::CONFLICT, json!({"outcome": "stale"}));
    let (key, fp) = (hex64(), hex64());
    // No claim at all.
    assert_eq!(ks.complete(&key, "nobody", b"r", 60_000).await, stale);
    assert_eq!(ks.release(&key, "nobody").await, stale);
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    assert_eq!(ks.complete(&key, "wrong", b"r", 60_000).await, stale);
    assert_eq!(ks.release(&key, "wrong").await, stale);
    // The claim survived the wrong attempts.
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["outcome"], "in_flight");
    assert_eq!(
        ks.complete(&key, &token, b"first", 60_000).await.0,
        StatusCode::OK
    );
    // Once completed, the token fences nothing any more: no overwrite, no release.
    assert_eq!(ks.complete(&key, &token, b"second", 60_000).await, stale);
    assert_eq!(ks.release(&key, &token).await, stale);
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(unb64(&body["record"]), b"first");
}

pub async fn release_frees_the_key(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let released = (StatusCode::OK, json!({"outcome": "released"}));
    assert_eq!(ks.release(&key, &token).await, released);
    assert_eq!(
        ks.release(&key, &token).await,
        (StatusCode::CONFLICT, json!({"outcome": "stale"}))
    );
    // Free again, even for another fingerprint.
    let second = ks.claim_ok(&key, &hex64(), 30_000).await;
    assert_ne!(second, token);
    assert_eq!(
        ks.complete(&key, &token, b"late", 60_000).await.0,
        StatusCode::CONFLICT
    );
}

pub async fn lease_takeover_after_expiry(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let old = ks.claim_ok(&key, &fp, 200).await;
    let (_, body) = ks.claim(&key, &fp, 200).await;
    assert_eq!(body["outcome"], "in_flight");
    let new = eventually(Duration::from_secs(3), "lease expiry", || async {
        let (_, body) = ks.claim(&key, &fp, 30_000).await;
        (body["outcome"] == "claimed").then(|| body["token"].as_str().unwrap().to_owned())
    })
    .await;
    assert_ne!(old, new);
    // The slow former holder is fenced off; the new one completes.
    assert_eq!(
        ks.complete(&key, &old, b"old", 60_000).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(ks.release(&key, &old).await.0, StatusCode::CONFLICT);
    assert_eq!(
        ks.complete(&key, &new, b"new", 60_000).await.0,
        StatusCode::OK
    );
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(unb64(&body["record"]), b"new");
}

pub async fn retention_expiry(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    assert_eq!(ks.complete(&key, &token, b"r", 200).await.0, StatusCode::OK);
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["outcome"], "completed");
    eventually(Duration::from_secs(3), "retention expiry", || async {
        let (_, body) = ks.claim(&key, &hex64(), 30_000).await;
        (body["outcome"] == "claimed").then_some(())
    })
    .await;
}

pub async fn concurrent_claims_have_one_winner(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (ks, key, fp) = (ks.clone(), key.clone(), fp.clone());
            tokio::spawn(async move { ks.claim(&key, &fp, 30_000).await })
        })
        .collect();
    let mut claimed = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        match body["outcome"].as_str().unwrap() {
            "claimed" => claimed += 1,
            "in_flight" => {}
            other => panic!("unexpected outcome {other}"),
        }
    }
    assert_eq!(claimed, 1);
}

pub async fn malformed_fields_are_named(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (k, f) = (hex64(), hex64());
    let upper = k.to_uppercase();
    let cases = [
        ("/v1/claim", json!({"fingerprint": f, "lease_ms": 1}), "key"),
        (
            "/v1/claim",
            json!({"key": upper, "fingerprint": f, "lease_ms": 1}),
            "key",
        ),
        (
            "/v1/claim",
            json!({"key": &k[1..], "fingerprint": f, "lease_ms": 1}),
            "key",
        ),
        (
            "/v1/claim",
            json!({"key": 5, "fingerprint": f, "lease_ms": 1}),
            "key",
        ),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": "xyz", "lease_ms": 1}),
            "fingerprint",
        ),
        ("/v1/claim", json!({"key": k, "lease_ms": 1}), "fingerprint"),
        ("/v1/claim", json!({"key": k, "fingerprint": f}), "lease_ms"),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": f, "lease_ms": 0}),
            "lease_ms",
        ),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": f, "lease_ms": -5}),
            "lease_ms",
        ),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": f, "lease_ms": 86_400_001}),
            "lease_ms",
        ),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": f, "lease_ms": "10"}),
            "lease_ms",
        ),
        (
            "/v1/complete",
            json!({"key": k, "token": "t", "record": "!!", "retention_ms": 1}),
            "record",
        ),
        (
            "/v1/complete",
            json!({"key": k, "token": "t", "record": "YQ", "retention_ms": 1}),
            "record",
        ),
        (
            "/v1/complete",
            json!({"key": k, "token": "t", "retention_ms": 1}),
            "record",
        ),
        (
            "/v1/complete",
            json!({"key": k, "record": "YQ==", "retention_ms": 1}),
            "token",
        ),
        (
            "/v1/complete",
            json!({"key": k, "token": "t", "record": "YQ=="}),
            "retention_ms",
        ),
        (
            "/v1/complete",
            json!({"key": k, "token": "t", "record": "YQ==", "retention_ms": 0}),
            "retention_ms",
        ),
        (
            "/v1/complete",
            json!({"token": "t", "record": "YQ==", "retention_ms": 1}),
            "key",
        ),
        ("/v1/release", json!({"key": k, "token": ""}), "token"),
        ("/v1/release", json!({"key": k, "token": 7}), "token"),
        ("/v1/release", json!({"token": "t"}), "key"),
        ("/v1/release", json!([k, "t"]), "body"),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": f, "lease_ms": 1, "wait_ms": 60_001}),
            "wait_ms",
        ),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": f, "lease_ms": 1, "wait_ms": -1}),
            "wait_ms",
        ),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": f, "lease_ms": 1, "wait_ms": 2.5}),
            "wait_ms",
        ),
        (
            "/v1/claim",
            json!({"key": k, "fingerprint": f, "lease_ms": 1, "wait_ms": "100"}),
            "wait_ms",
        ),
        ("/v1/renew", json!({"token": "t", "lease_ms": 1}), "key"),
        (
            "/v1/renew",
            json!({"key": upper, "token": "t", "lease_ms": 1}),
            "key",
        ),
        ("/v1/renew", json!({"key": k, "lease_ms": 1}), "token"),
        (
            "/v1/renew",
            json!({"key": k, "token": "", "lease_ms": 1}),
            "token",
        ),
        (
            "/v1/renew",
            json!({"key": k, "token": "t".repeat(257), "lease_ms": 1}),
            "token",
        ),
        ("/v1/renew", json!({"key": k, "token": "t"}), "lease_ms"),
        (
            "/v1/renew",
            json!({"key": k, "token": "t", "lease_ms": 0}),
            "lease_ms",
        ),
        (
            "/v1/renew",
            json!({"key": k, "token": "t", "lease_ms": 86_400_001}),
            "lease_ms",
        ),
        (
            "/v1/renew",
            json!({"key": k, "token": "t", "lease_ms": "5"}),
            "lease_ms",
        ),
        ("/v1/renew", json!("x"), "body"),
    ];
    for (path, body, field) in cases {
        let (status, answer) = ks.post(path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.starts_with(field),
            "{path} {body}: {error} should name {field}"
        );
    }
    let (status, answer) = ks.post_auth("/v1/claim", "{not json".into(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().starts_with("body"));
    // Unknown fields are ignored (forward compatibility).
    let (status, _) = ks
        .post(
            "/v1/claim",
            json!({"key": hex64(), "fingerprint": f, "lease_ms": 5, "x": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

pub async fn bearer_token_required(backend: Arc<dyn Backend>) {
    let mut s = settings();
    s.token = Some("s3cret".into());
    let ks = Keystore::start(backend, s).await;
    let body = json!({"key": hex64(), "fingerprint": hex64(), "lease_ms": 1000}).to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
        Some("Bearer s3cret2"),
    ] {
        let (status, answer) = ks.post_auth("/v1/claim", body.clone(), auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(answer["error"].is_string());
    }
    let (status, answer) = ks.post_auth("/v1/claim", body, Some("Bearer s3cret")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let body = json!({"key": hex64(), "fingerprint": hex64(), "lease_ms": 1000}).to_string();
    let (status, answer) = ks.post_auth("/v1/claim", body, Some("bearer s3cret")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Health endpoints stay open to probes.
    assert_eq!(ks.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(ks.get("/readyz").await.0, StatusCode::OK);
}

pub async fn body_limit_gives_413(backend: Arc<dyn Backend>) {
    let mut s = settings();
    s.max_body_bytes = 1024;
    let ks = Keystore::start(backend, s).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let (status, _) = ks.complete(&key, &token, &[7u8; 2048], 60_000).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = ks.complete(&key, &token, &[7u8; 512], 60_000).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["record"], b64(&[7u8; 512]));
}

pub async fn health_ready_and_metrics(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    assert_eq!(ks.get("/healthz").await.0, StatusCode::OK);
    let (status, body) = ks.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ks.claim_ok(&hex64(), &hex64(), 1000).await;
    ks.release(&hex64(), "t").await;
    ks.renew(&hex64(), "t", 1000).await;
    let (status, text) = ks.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(r#"keystore_requests_total{op="claim",outcome="claimed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"keystore_requests_total{op="release",outcome="stale"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"keystore_requests_total{op="renew",outcome="stale"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("keystore_backend_duration_seconds_bucket"),
        "{text}"
    );
}

pub async fn complete_after_expiry_is_stale(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 200).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Nobody took the key over, yet the lease is over: the holder may no longer store.
    assert_eq!(
        ks.complete(&key, &token, b"late", 60_000).await,
        (StatusCode::CONFLICT, json!({"outcome": "stale"}))
    );
    assert_eq!(ks.release(&key, &token).await.0, StatusCode::CONFLICT);
    // Nothing was stored: the next request runs.
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["outcome"], "claimed", "{body}");
}

pub async fn complete_twice_is_stale(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let stored = (StatusCode::OK, json!({"outcome": "stored"}));
    assert_eq!(ks.complete(&key, &token, b"once", 60_000).await, stored);
    // A retried complete (its answer was lost) is stale, even with the same record: the token
    // ended with the first one, and the record stays.
    for _ in 0..2 {
        assert_eq!(
            ks.complete(&key, &token, b"once", 60_000).await,
            (StatusCode::CONFLICT, json!({"outcome": "stale"}))
        );
    }
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["outcome"], "completed", "{body}");
    assert_eq!(unb64(&body["record"]), b"once");
}

pub async fn renew_extends_the_lease(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let claimed = Instant::now();
    let token = ks.claim_ok(&key, &fp, 300).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        ks.renew(&key, &token, 3_000).await,
        (StatusCode::OK, json!({"outcome": "renewed"}))
    );
    // Past the first lease, well before the renewed one: no takeover.
    tokio::time::sleep(Duration::from_millis(600).saturating_sub(claimed.elapsed())).await;
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["outcome"], "in_flight", "{body}");
    let left = body["retry_after_ms"].as_u64().unwrap();
    assert!(left > 1_000 && left <= 3_000, "{body}");
    // Renewing again is fine, and the holder still completes.
    assert_eq!(ks.renew(&key, &token, 3_000).await.0, StatusCode::OK);
    assert_eq!(
        ks.complete(&key, &token, b"slow", 60_000).await.0,
        StatusCode::OK
    );
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(unb64(&body["record"]), b"slow");
}

pub async fn renew_is_fenced(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let stale = (StatusCode::CONFLICT, json!({"outcome": "stale"}));
    let (key, fp) = (hex64(), hex64());
    // Unknown key.
    assert_eq!(ks.renew(&key, "nobody", 1_000).await, stale);
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    assert_eq!(ks.renew(&key, "wrong", 1_000).await, stale);
    // The wrong renew did not shorten the claim.
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert!(body["retry_after_ms"].as_u64().unwrap() > 20_000, "{body}");
    // After completion.
    assert_eq!(
        ks.complete(&key, &token, b"r", 60_000).await.0,
        StatusCode::OK
    );
    assert_eq!(ks.renew(&key, &token, 1_000).await, stale);
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["outcome"], "completed", "{body}");
    // After release.
    let key = hex64();
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    assert_eq!(ks.release(&key, &token).await.0, StatusCode::OK);
    assert_eq!(ks.renew(&key, &token, 1_000).await, stale);
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(
        body["outcome"], "claimed",
        "a stale renew revived the claim: {body}"
    );
    // After a takeover, the old holder cannot renew and the new one can.
    let key = hex64();
    let old = ks.claim_ok(&key, &fp, 200).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = ks.claim_ok(&key, &fp, 30_000).await;
    assert_eq!(ks.renew(&key, &old, 30_000).await, stale);
    assert_eq!(ks.renew(&key, &new, 30_000).await.0, StatusCode::OK);
}

pub async fn renew_after_expiry_is_stale(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 200).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Too late, even with nobody else on the key: the lease is not revived.
    assert_eq!(
        ks.renew(&key, &token, 30_000).await,
        (StatusCode::CONFLICT, json!({"outcome": "stale"}))
    );
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(body["outcome"], "claimed", "{body}");
}

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
    let (_, body) = ks.claim_wait(&key, &fp, 30_000, 5_000).await;
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

/// A caller that proposes its token can release a claim whose answer it never read.
pub async fn proposed_token_is_the_claims_token(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let mine = "f".repeat(32);
    let claim =
        |token: &str| json!({"key": key, "fingerprint": fp, "lease_ms": 30_000, "token": token});
    let (status, body) = ks.post("/v1/claim", claim(&mine)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"outcome": "claimed", "token": mine}));
    // Another caller's proposal does not take a held key.
    let (_, body) = ks.post("/v1/claim", claim(&"e".repeat(32))).await;
    assert_eq!(body["outcome"], "in_flight", "{body}");
    let (status, body) = ks.release(&key, &mine).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("released"))
    );
    let (status, body) = ks.post("/v1/claim", claim("")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.to_string().contains("token"), "{body}");
}

pub async fn lookup_reports_without_claiming(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let lookup = |fp: &str| json!({"key": key, "fingerprint": fp});
    let (status, body) = ks.post("/v1/lookup", lookup(&fp)).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("absent"))
    );
    // Looking did not claim: the key is still free.
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let (_, body) = ks.post("/v1/lookup", lookup(&fp)).await;
    assert_eq!(body["outcome"], "in_flight", "{body}");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    let (_, body) = ks.post("/v1/lookup", lookup(&hex64())).await;
    assert_eq!(body["outcome"], "mismatch", "{body}");
    assert_eq!(
        ks.complete(&key, &token, b"rec", 60_000).await.0,
        StatusCode::OK
    );
    let (_, body) = ks.post("/v1/lookup", lookup(&fp)).await;
    assert_eq!(body["outcome"], "completed", "{body}");
    assert_eq!(unb64(&body["record"]), b"rec");
    let (status, body) = ks.post("/v1/lookup", json!({"key": key})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().starts_with("fingerprint"),
        "{body}"
    );
}

pub async fn complete_refuses_a_record_over_the_limit(backend: Arc<dyn Backend>) {
    let ks = Keystore::start(
        backend,
        idempotency_keystore::http::Settings {
            max_record_bytes: 1000,
            ..settings()
        },
    )
    .await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let (status, body) = ks.complete(&key, &token, &[1u8; 1001], 60_000).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("record"),
        "{body}"
    );
    // The claim is untouched: a record that fits still completes it.
    let (status, _) = ks.complete(&key, &token, &[1u8; 1000], 60_000).await;
    assert_eq!(status, StatusCode::OK);
}

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

/// A compact request on each endpoint, answered in kind (README, "Key-store API", compact format).
pub async fn compact_bodies_on_every_endpoint(backend: Arc<dyn Backend>) {
    use idempotency_protocol::compact::CONTENT_TYPE;
    use idempotency_protocol::{
        ClaimAnswer, ClaimRequest, ClaimResponse, Compact, CompleteRequest, FencedResponse, Hex64,
        LookupRequest, LookupResponse, ReleaseRequest, RenewRequest,
    };
    let ks = open(backend).await;
    let send = |path: &'static str, body: Vec<u8>| {
        let ks = ks.clone();
        async move {
            let (status, content_type, bytes) = ks.post_raw(path, CONTENT_TYPE, None, body).await;
            if status.is_success() || status == StatusCode::CONFLICT {
                assert_eq!(content_type, CONTENT_TYPE, "{path}");
            }
            (status, bytes)
        }
    };
    let (key, fp) = (
        Hex64::parse(&hex64()).unwrap(),
        Hex64::parse(&hex64()).unwrap(),
    );
    let claim = ClaimRequest {
        key: key.clone(),
        fingerprint: fp.clone(),
        lease_ms: 30_000,
        wait_ms: 0,
        token: Some("compact-1".into()),
    };
    let (status, body) = send("/v1/claim", claim.to_compact()).await;
    assert_eq!(status, StatusCode::OK);
    let granted = ClaimAnswer::from_compact(&body).unwrap().response;
    assert_eq!(
        granted,
        ClaimResponse::Claimed {
            token: "compact-1".into()
        }
    );
    let (_, body) = send("/v1/claim", claim.to_compact()).await;
    assert!(matches!(
        ClaimAnswer::from_compact(&body).unwrap().response,
        ClaimResponse::InFlight { retry_after_ms } if retry_after_ms > 0
    ));
    let renew = RenewRequest {
        key: key.clone(),
        token: "compact-1".into(),
        lease_ms: 30_000,
    };
    let (status, body) = send("/v1/renew", renew.to_compact()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        FencedResponse::from_compact(&body).unwrap(),
        FencedResponse::Renewed
    );
    let record: Vec<u8> = (0..=255).rev().collect();
    let complete = CompleteRequest {
        key: key.clone(),
        token: "compact-1".into(),
        record: record.clone(),
        retention_ms: 60_000,
    };
    let (status, body) = send("/v1/complete", complete.to_compact()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        FencedResponse::from_compact(&body).unwrap(),
        FencedResponse::Stored
    );
    let (status, body) = send("/v1/complete", complete.to_compact()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        FencedResponse::from_compact(&body).unwrap(),
        FencedResponse::Stale
    );
    let (_, body) = send("/v1/claim", claim.to_compact()).await;
    assert_eq!(
        ClaimAnswer::from_compact(&body).unwrap().response,
        ClaimResponse::Completed {
            record: record.clone()
        }
    );
    // The JSON side sees the same record.
    let (_, body) = ks.claim(key.as_str(), fp.as_str(), 30_000).await;
    assert_eq!(unb64(&body["record"]), record);
    let lookup = LookupRequest {
        key: key.clone(),
        fingerprint: fp.clone(),
    };
    let (status, body) = send("/v1/lookup", lookup.to_compact()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        LookupResponse::from_compact(&body).unwrap(),
        LookupResponse::Completed { record }
    );
    let other = Hex64::parse(&hex64()).unwrap();
    let token = ks.claim_ok(other.as_str(), fp.as_str(), 30_000).await;
    let release = ReleaseRequest { key: other, token };
    let (status, body) = send("/v1/release", release.to_compact()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        FencedResponse::from_compact(&body).unwrap(),
        FencedResponse::Released
    );
    // Validation is the JSON one, and the error is a JSON body naming the field.
    let bad = RenewRequest {
        lease_ms: 0,
        ..renew
    }
    .to_compact();
    let (status, content_type, body) = ks.post_raw("/v1/renew", CONTENT_TYPE, None, bad).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::BAD_REQUEST, "application/json")
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("lease_ms: "),
        "{body}"
    );
    let (status, _, body) = ks
        .post_raw("/v1/claim", CONTENT_TYPE, None, b"{}".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("body: "),
        "{body}"
    );
}

/// A request is read in its content type's format and answered in `accept`'s, else its own.
pub async fn formats_follow_content_type_and_accept(backend: Arc<dyn Backend>) {
    use idempotency_protocol::compact::CONTENT_TYPE;
    use idempotency_protocol::{ClaimAnswer, ClaimRequest, ClaimResponse, Compact, Hex64};
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let json_claim = json!({"key": key, "fingerprint": fp, "lease_ms": 30_000, "token": "tok"});
    let (status, content_type, body) = ks
        .post_raw(
            "/v1/claim",
            "application/json",
            Some(CONTENT_TYPE),
            json_claim.to_string().into_bytes(),
        )
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, CONTENT_TYPE)
    );
    assert_eq!(
        ClaimAnswer::from_compact(&body).unwrap().response,
        ClaimResponse::Claimed {
            token: "tok".into()
        }
    );
    let compact_claim = ClaimRequest {
        key: Hex64::parse(&key).unwrap(),
        fingerprint: Hex64::parse(&fp).unwrap(),
        lease_ms: 30_000,
        wait_ms: 0,
        token: None,
    }
    .to_compact();
    let (status, content_type, body) = ks
        .post_raw(
            "/v1/claim",
            CONTENT_TYPE,
            Some("application/json"),
            compact_claim.clone(),
        )
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, "application/json")
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["outcome"], "in_flight", "{body}");
    // A compact body sent as JSON is refused as JSON.
    let (status, _, body) = ks
        .post_raw("/v1/claim", "application/json", None, compact_claim)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "body: must be a JSON object");
}
