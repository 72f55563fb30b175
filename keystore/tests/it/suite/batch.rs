//! Renewals in a batch (`/v1/renew-batch`): each key's answer in order, the same fencing as a
//! single renew, the batch's limits and the entry at fault named with its index.

use std::sync::Arc;
use std::time::Duration;

use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::open;
use crate::common::{hex64, Keystore};

async fn renew_batch(ks: &Keystore, renewals: &[(&str, &str, u64)]) -> (StatusCode, Value) {
    let renewals: Vec<Value> = renewals
        .iter()
        .map(|(key, token, lease_ms)| json!({"key": key, "token": token, "lease_ms": lease_ms}))
        .collect();
    ks.post("/v1/renew-batch", json!({ "renewals": renewals }))
        .await
}

pub async fn renew_batch_answers_each_key_in_order(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let fp = hex64();
    let (a, b, lapsed, unknown) = (hex64(), hex64(), hex64(), hex64());
    let ta = ks.claim_ok(&a, &fp, 400).await;
    let tb = ks.claim_ok(&b, &fp, 30_000).await;
    // A claim taken over once its lease ended: its token is fenced off.
    let tl = ks.claim_ok(&lapsed, &fp, 100).await;
    let taker = ks.take_over(&lapsed, &fp, 30_000).await;
    let (status, body) = renew_batch(
        &ks,
        &[
            (&a, &ta, 5_000),
            (&b, "wrong", 5_000),
            (&lapsed, &tl, 5_000),
            (&unknown, "nobody", 5_000),
            (&b, &tb, 5_000),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"outcomes": ["renewed", "stale", "stale", "stale", "renewed"]})
    );
    // Past the first lease of `a`, well before the renewed one: still held, not taken over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, held) = ks.claim(&a, &fp, 30_000).await;
    assert_eq!(held["outcome"], "in_flight", "{held}");
    assert!(held["retry_after_ms"].as_u64().unwrap() > 3_000, "{held}");
    // The stale renewal did not touch the claim that took the key over.
    assert_eq!(ks.release(&lapsed, &taker).await.0, StatusCode::OK);
    let (_, metrics) = ks.get("/metrics").await;
    for line in [
        r#"keystore_requests_total{op="renew_batch",outcome="renewed"} 2"#,
        r#"keystore_requests_total{op="renew_batch",outcome="stale"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

pub async fn renew_batch_limits_and_named_errors(backend: Arc<dyn Backend>) {
    use idempotency_protocol::compact::CONTENT_TYPE;
    use idempotency_protocol::{
        Compact, Hex64, RenewBatchRequest, RenewBatchResponse, RenewOutcome, RenewRequest,
        MAX_RENEW_BATCH,
    };
    let ks = open(backend).await;
    let fp = hex64();
    let key = hex64();
    let token = ks.claim_ok(&key, &fp, 30_000).await;
    let full: Vec<(&str, &str, u64)> = vec![(&key, &token, 30_000); MAX_RENEW_BATCH];
    let (status, body) = renew_batch(&ks, &full).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes = body["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), MAX_RENEW_BATCH);
    assert!(outcomes.iter().all(|o| o == "renewed"), "{body}");
    let over: Vec<(&str, &str, u64)> = vec![(&key, &token, 30_000); MAX_RENEW_BATCH + 1];
    for (body, error) in [
        (
            renew_batch(&ks, &over).await,
            "renewals: must hold 1 to 256 renewals",
        ),
        (
            renew_batch(&ks, &[]).await,
            "renewals: must hold 1 to 256 renewals",
        ),
        (
            renew_batch(&ks, &[(&key, &token, 30_000), (&key, "", 30_000)]).await,
            "renewals[1].token: must be 1 to 256 characters",
        ),
        (
            renew_batch(&ks, &[(&key, &token, 0)]).await,
            "renewals[0].lease_ms: must be an integer from 1 to 86400000",
        ),
        (
            ks.post("/v1/renew-batch", json!({"key": key})).await,
            "renewals: missing",
        ),
    ] {
        assert_eq!(body, (StatusCode::BAD_REQUEST, json!({ "error": error })));
    }
    // The compact format, answered in kind.
    let batch = RenewBatchRequest {
        renewals: vec![
            RenewRequest {
                key: Hex64::parse(&key).unwrap(),
                token: token.clone(),
                lease_ms: 30_000,
            },
            RenewRequest {
                key: Hex64::parse(&hex64()).unwrap(),
                token,
                lease_ms: 30_000,
            },
        ],
    };
    let (status, content_type, bytes) = ks
        .post_raw("/v1/renew-batch", CONTENT_TYPE, None, batch.to_compact())
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, CONTENT_TYPE)
    );
    assert_eq!(
        RenewBatchResponse::from_compact(&bytes).unwrap().outcomes,
        [RenewOutcome::Renewed, RenewOutcome::Stale]
    );
}
