//! The key store's admin API (`/admin/v1`), over plain HTTP (the key store serves nothing else;
//! reach a cluster's through a port-forward).

use std::time::Duration;

use anyhow::Context as _;
use idempotency_filter::scope::RecordKey;
use idempotency_protocol::{json, ErrorBody, PurgeResponse, RecordState};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::StatusCode;

use crate::target::BadInput;

/// A client of one key store's admin API.
pub struct AdminClient {
    base: String,
    token: String,
    http: Client,
}

impl AdminClient {
    pub fn new(base: &str, token: &str) -> anyhow::Result<AdminClient> {
        if !base.starts_with("http://") {
            return Err(BadInput(format!(
                "--keystore {base}: give http://HOST:PORT (the key store serves plain HTTP; reach a cluster's through kubectl port-forward)"
            ))
            .into());
        }
        let http = Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("HTTP client")?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        })
    }

    /// What `key` holds.
    pub fn inspect(&self, key: &RecordKey) -> anyhow::Result<RecordState> {
        let body = self.send(self.http.get(self.url(key)))?;
        json::decode(&body).map_err(|e| anyhow::anyhow!("unexpected key store answer: {e}"))
    }

    /// Removes what `key` holds; what that was.
    pub fn purge(&self, key: &RecordKey) -> anyhow::Result<RecordState> {
        let body = self.send(self.http.delete(self.url(key)))?;
        json::decode::<PurgeResponse>(&body)
            .map(|p| p.removed)
            .map_err(|e| anyhow::anyhow!("unexpected key store answer: {e}"))
    }

    fn url(&self, key: &RecordKey) -> String {
        format!("{}/admin/v1/records/{}", self.base, key.hex())
    }

    /// Sends with the admin token; the body of a 200, or an error that says what to do.
    fn send(&self, req: RequestBuilder) -> anyhow::Result<Vec<u8>> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("--keystore {}: no answer", self.base))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .with_context(|| format!("--keystore {}: answer cut", self.base))?
            .to_vec();
        let detail = || {
            json::decode::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned())
        };
        match status {
            StatusCode::OK => Ok(body),
            StatusCode::UNAUTHORIZED => anyhow::bail!(
                "--keystore {}: 401, the admin token was refused (give the key store's --admin-token, not the filter's /v1 token)",
                self.base
            ),
            StatusCode::NOT_FOUND => anyhow::bail!(
                "--keystore {}: 404, the key store's admin API is off (start the key store with --admin-token / KEYSTORE_ADMIN_TOKEN)",
                self.base
            ),
            other => anyhow::bail!("--keystore {}: {other}: {}", self.base, detail()),
        }
    }
}
