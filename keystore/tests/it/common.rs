//! Test harness: the key store served on a free port and an HTTP client for it. Redis nodes and
//! clusters come from the workspace's test kit, shared with the filter's end-to-end tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use idempotency_keystore::backend::Backend;
use idempotency_keystore::http::{router, Drain, Settings};
use idempotency_keystore::metrics::Metrics;
pub use idempotency_testkit::redis::{RedisCluster, RedisServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Settings of a test server: open, 4 MiB bodies, 1 s backend bound.
pub fn settings() -> Settings {
    Settings {
        token: None,
        admin_token: None,
        max_body_bytes: 4 * 1024 * 1024 + 8192,
        max_record_bytes: 3 * 1024 * 1024,
        backend_timeout: Duration::from_secs(1),
        drain: Drain::default(),
    }
}

/// A random 64-hex key or fingerprint, so tests sharing a Redis never collide.
pub fn hex64() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

pub fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

pub fn unb64(s: &Value) -> Vec<u8> {
    BASE64.decode(s.as_str().unwrap()).unwrap()
}

/// A key store served by the test's runtime on 127.0.0.1:0.
#[derive(Clone)]
pub struct Keystore {
    pub base: String,
    pub http: reqwest::Client,
    /// Sent as the bearer token by the helpers.
    pub token: Option<String>,
}

impl Keystore {
    pub async fn start(backend: Arc<dyn Backend>, settings: Settings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = settings.token.clone();
        let app = router(backend, settings, Metrics::new().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            token,
        }
    }

    /// POSTs a raw body with an explicit Authorization value.
    pub async fn post_auth(
        &self,
        path: &str,
        body: String,
        auth: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        send_json(req).await
    }

    /// POSTs a raw body with this content type (and `accept`, if any); returns the status, the
    /// answer's content type and its bytes.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        accept: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, resp.bytes().await.unwrap().to_vec())
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        self.post_auth(path, body.to_string(), auth.as_deref())
            .await
    }

    pub async fn claim(&self, key: &str, fp: &str, lease_ms: u64) -> (StatusCode, Value) {
        self.post(
            "/v1/claim",
            json!({"key": key, "fingerprint": fp, "lease_ms": lease_ms}),
        )
        .await
    }

    /// A claim with further fields (`extra`, a JSON object: `abandoned`, `retention_ms`,
    /// `wait_ms`, ...).
    pub async fn claim_with(
        &self,
        key: &str,
        fp: &str,
        lease_ms: u64,
        extra: Value,
    ) -> (StatusCode, Value) {
        let mut body = json!({"key": key, "fingerprint": fp, "lease_ms": lease_ms});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.post("/v1/claim", body).await
    }

    /// A lookup, naming the `abandoned` policy when given.
    pub async fn lookup(
        &self,
        key: &str,
        fp: &str,
        abandoned: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut body = json!({"key": key, "fingerprint": fp});
        if let Some(policy) = abandoned {
            body["abandoned"] = json!(policy);
        }
        self.post("/v1/lookup", body).await
    }

    /// Polls (bounded) until the claim of `key` is reported abandoned to a lookup; returns how
    /// long ago its lease ended.
    pub async fn until_abandoned(&self, key: &str, fp: &str) -> u64 {
        eventually(Duration::from_secs(5), "the lease to end", || async {
            let (_, body) = self.lookup(key, fp, Some("report")).await;
            (body["outcome"] == "abandoned").then(|| body["lease_ended_ms_ago"].as_u64().unwrap())
        })
        .await
    }

    /// Polls (bounded) until a claim under the at-least-once policy takes `key` over; the new
    /// token.
    pub async fn take_over(&self, key: &str, fp: &str, lease_ms: u64) -> String {
        eventually(Duration::from_secs(5), "a takeover", || async {
            let (_, body) = self
                .claim_with(key, fp, lease_ms, json!({"abandoned": "take_over"}))
                .await;
            (body["outcome"] == "claimed").then(|| body["token"].as_str().unwrap().to_owned())
        })
        .await
    }

    /// Claims and asserts the key was free; returns the token.
    pub async fn claim_ok(&self, key: &str, fp: &str, lease_ms: u64) -> String {
        let (status, body) = self.claim(key, fp, lease_ms).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["outcome"], "claimed", "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn complete(
        &self,
        key: &str,
        token: &str,
        record: &[u8],
        retention_ms: u64,
    ) -> (StatusCode, Value) {
        self.post(
            "/v1/complete",
            json!({"key": key, "token": token, "record": b64(record), "retention_ms": retention_ms}),
        )
        .await
    }

    /// A claim that may wait `wait_ms` for an in-flight key.
    pub async fn claim_wait(
        &self,
        key: &str,
        fp: &str,
        lease_ms: u64,
        wait_ms: u64,
    ) -> (StatusCode, Value) {
        self.post(
            "/v1/claim",
            json!({"key": key, "fingerprint": fp, "lease_ms": lease_ms, "wait_ms": wait_ms}),
        )
        .await
    }

    pub async fn renew(&self, key: &str, token: &str, lease_ms: u64) -> (StatusCode, Value) {
        self.post(
            "/v1/renew",
            json!({"key": key, "token": token, "lease_ms": lease_ms}),
        )
        .await
    }

    pub async fn release(&self, key: &str, token: &str) -> (StatusCode, Value) {
        self.post("/v1/release", json!({"key": key, "token": token}))
            .await
    }

    /// An admin call (`GET` or `DELETE` of `/admin/v1/records/{key}`) with this Authorization.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        key: &str,
        auth: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/admin/v1/records/{key}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        send_json(req).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}

/// Polls `f` every 20 ms until it returns `Some`, failing after `timeout`.
/// Sends `req`; the answer's status and its body as JSON (a body that is not JSON as a string).
async fn send_json(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
