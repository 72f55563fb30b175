//! The HTTP surface: malformed fields named in 400s (a table of bodies), the bearer token, the
//! body limit, health, readiness and metrics.

use std::sync::Arc;

use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{b64, hex64, settings, Keystore};

use super::open;

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
