//! Abandoned claims (README, "Key-store API"): a claim whose lease ran out without an answer is
//! reported, never taken by default; a late complete, release or renewal of its holder still
//! lands; the at-least-once policy takes it over and fences the old token; it lives for its
//! retention. Leases are short and each test polls (bounded) until the state shows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;
use serde_json::json;

use super::open;
use crate::common::{eventually, hex64, unb64};

pub async fn abandoned_claim_is_reported_not_taken(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    ks.claim_ok(&key, &fp, 200).await;
    let report = json!({"abandoned": "report"});
    let (_, body) = ks.claim_with(&key, &fp, 30_000, report.clone()).await;
    assert_eq!(body["outcome"], "in_flight", "{body}");
    let first = ks.until_abandoned(&key, &fp).await;
    let (status, body) = ks.claim_with(&key, &fp, 30_000, report.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "abandoned", "{body}");
    let ago = body["lease_ended_ms_ago"].as_u64().unwrap();
    assert!(ago >= first && ago < 5_000, "{first} then {body}");
    // The key stays as it was: asked again, the same answer, later.
    let (_, again) = ks.claim_with(&key, &fp, 30_000, report.clone()).await;
    assert_eq!(again["outcome"], "abandoned", "{again}");
    assert!(
        again["lease_ended_ms_ago"].as_u64().unwrap() >= ago,
        "{again}"
    );
    // A claim that may wait is answered at once: nothing will announce the outcome.
    let started = Instant::now();
    let (_, waited) = ks
        .claim_with(
            &key,
            &fp,
            30_000,
            json!({"abandoned": "report", "wait_ms": 5_000}),
        )
        .await;
    assert_eq!(waited["outcome"], "abandoned", "{waited}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // An older caller, which does not name a policy, is told `in_flight`: it fails closed.
    let (_, old) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(old, json!({"outcome": "in_flight", "retry_after_ms": 1000}));
    let (_, old) = ks.lookup(&key, &fp, None).await;
    assert_eq!(old, json!({"outcome": "in_flight", "retry_after_ms": 1000}));
    // Another fingerprint is a mismatch, as for a live claim.
    let (_, other) = ks.claim_with(&key, &hex64(), 30_000, report).await;
    assert_eq!(other, json!({"outcome": "mismatch"}));
    let (_, metrics) = ks.get("/metrics").await;
    let line = r#"keystore_requests_total{op="claim",outcome="abandoned"} 4"#;
    assert!(metrics.contains(line), "{line} in\n{metrics}");
}

pub async fn late_complete_wins(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 200).await;
    ks.until_abandoned(&key, &fp).await;
    assert_eq!(
        ks.complete(&key, &token, b"late", 60_000).await,
        (StatusCode::OK, json!({"outcome": "stored"}))
    );
    // Every later claim and lookup replays the record.
    for policy in [
        json!({"abandoned": "report"}),
        json!({"abandoned": "take_over"}),
        json!({}),
    ] {
        let (_, body) = ks.claim_with(&key, &fp, 30_000, policy).await;
        assert_eq!(body["outcome"], "completed", "{body}");
        assert_eq!(unb64(&body["record"]), b"late");
    }
    let (_, body) = ks.lookup(&key, &fp, Some("report")).await;
    assert_eq!(unb64(&body["record"]), b"late");
    // Completed, the token no longer names a claim.
    let stale = (StatusCode::CONFLICT, json!({"outcome": "stale"}));
    assert_eq!(ks.complete(&key, &token, b"again", 60_000).await, stale);
    assert_eq!(ks.release(&key, &token).await, stale);
    assert_eq!(ks.renew(&key, &token, 30_000).await, stale);
}

pub async fn late_release_frees_the_key(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 200).await;
    ks.until_abandoned(&key, &fp).await;
    assert_eq!(
        ks.release(&key, &token).await,
        (StatusCode::OK, json!({"outcome": "released"}))
    );
    let (_, body) = ks
        .claim_with(&key, &fp, 30_000, json!({"abandoned": "report"}))
        .await;
    assert_eq!(body["outcome"], "claimed", "{body}");
}

pub async fn renew_revives_an_abandoned_claim(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let token = ks.claim_ok(&key, &fp, 200).await;
    ks.until_abandoned(&key, &fp).await;
    assert_eq!(
        ks.renew(&key, &token, 30_000).await,
        (StatusCode::OK, json!({"outcome": "renewed"}))
    );
    // Live again: in flight, even to a claim that would take an abandoned key over.
    let (_, body) = ks
        .claim_with(&key, &fp, 30_000, json!({"abandoned": "take_over"}))
        .await;
    assert_eq!(body["outcome"], "in_flight", "{body}");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 20_000, "{body}");
    assert_eq!(
        ks.complete(&key, &token, b"r", 60_000).await.0,
        StatusCode::OK
    );
}

pub async fn takeover_under_release_policy_fences_the_old_token(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let old = ks.claim_ok(&key, &fp, 200).await;
    let new = ks.take_over(&key, &fp, 30_000).await;
    assert_ne!(old, new);
    let stale = (StatusCode::CONFLICT, json!({"outcome": "stale"}));
    assert_eq!(ks.complete(&key, &old, b"old", 60_000).await, stale);
    assert_eq!(ks.release(&key, &old).await, stale);
    assert_eq!(ks.renew(&key, &old, 30_000).await, stale);
    // The new claim is live and whole.
    let (_, body) = ks
        .claim_with(&key, &fp, 30_000, json!({"abandoned": "report"}))
        .await;
    assert_eq!(body["outcome"], "in_flight", "{body}");
    assert_eq!(
        ks.complete(&key, &new, b"new", 60_000).await.0,
        StatusCode::OK
    );
    assert_eq!(ks.complete(&key, &old, b"old", 60_000).await, stale);
    let (_, body) = ks.claim(&key, &fp, 30_000).await;
    assert_eq!(unb64(&body["record"]), b"new");
}

pub async fn abandoned_claim_lives_for_its_retention(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    let report = json!({"abandoned": "report", "retention_ms": 400});
    let (_, body) = ks.claim_with(&key, &fp, 100, report.clone()).await;
    assert_eq!(body["outcome"], "claimed", "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    ks.until_abandoned(&key, &fp).await;
    // Its retention over, the key is free, and the old token names nothing.
    eventually(Duration::from_secs(5), "the retention to end", || async {
        let (_, body) = ks.lookup(&key, &fp, Some("report")).await;
        (body["outcome"] == "absent").then_some(())
    })
    .await;
    assert_eq!(
        ks.complete(&key, &token, b"too late", 60_000).await.0,
        StatusCode::CONFLICT
    );
    let (_, body) = ks.claim_with(&key, &fp, 30_000, report).await;
    assert_eq!(body["outcome"], "claimed", "{body}");
}

pub async fn waiter_is_told_abandoned_when_the_lease_ends(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (key, fp) = (hex64(), hex64());
    ks.claim_ok(&key, &fp, 300).await;
    let started = Instant::now();
    let (_, body) = ks
        .claim_with(
            &key,
            &fp,
            30_000,
            json!({"abandoned": "report", "wait_ms": 5_000}),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(body["outcome"], "abandoned", "{body}");
    assert_eq!(body["waited"], true, "{body}");
    assert!(waited < Duration::from_millis(2_500), "{waited:?}");
}
