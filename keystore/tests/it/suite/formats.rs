//! The compact body format: a compact request on every endpoint answered in kind, and the format
//! of an answer following the request's content type and `accept`.

use std::sync::Arc;

use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::open;
use crate::common::{hex64, unb64};

/// A compact request on each endpoint, answered in kind (README, "Key-store API", compact format).
pub async fn compact_bodies_on_every_endpoint(backend: Arc<dyn Backend>) {
    use idempotency_protocol::compact::CONTENT_TYPE;
    use idempotency_protocol::{
        AbandonedPolicy, ClaimAnswer, ClaimRequest, ClaimResponse, Compact, CompleteRequest,
        FencedResponse, Hex64, LookupRequest, LookupResponse, ReleaseRequest, RenewRequest,
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
        abandoned: Some(AbandonedPolicy::Report),
        retention_ms: Some(60_000),
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
        abandoned: Some(AbandonedPolicy::Report),
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
        abandoned: None,
        retention_ms: None,
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
