//! Claims and what follows them: in flight, completed byte-exact, mismatch, fencing by token,
//! release, lease takeover, retention, renewals, a proposed token, lookups and the record limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{eventually, hex64, settings, unb64, Keystore};

use super::open;

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
    let (_, body) = ks
        .claim_with(&key, &fp, 200, json!({"abandoned": "take_over"}))
        .await;
    assert_eq!(
        body["outcome"], "in_flight",
        "a live lease is never taken over: {body}"
    );
    let new = ks.take_over(&key, &fp, 30_000).await;
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
    let new = ks.take_over(&key, &fp, 30_000).await;
    assert_eq!(ks.renew(&key, &old, 30_000).await, stale);
    assert_eq!(ks.renew(&key, &new, 30_000).await.0, StatusCode::OK);
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
