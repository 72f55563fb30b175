//! Whether a request has the fingerprint a key holds, with the filter's own fingerprint: method,
//! path with query, the configured `fingerprint_headers` and the body, keyed under a secret.

use std::io::Read as _;

use idempotency_filter::config::Config;
use idempotency_filter::fingerprint::{keyed, Fingerprinter};

use crate::cli::Payload;
use crate::target::BadInput;

/// A request's unkeyed fingerprint digest.
pub struct RequestDigest([u8; 32]);

impl RequestDigest {
    /// The digest of the request `method path` with `payload`, or `None` without a body.
    pub fn of(
        config: &Config,
        method: &str,
        path: &str,
        payload: &Payload,
    ) -> anyhow::Result<Option<RequestDigest>> {
        let Some(file) = &payload.body else {
            return Ok(None);
        };
        let body = if file.as_os_str() == "-" {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| BadInput(format!("--body -: {e}")))?;
            body
        } else {
            std::fs::read(file).map_err(|e| BadInput(format!("--body {}: {e}", file.display())))?
        };
        let mut sent: Vec<(String, String)> = Vec::new();
        for h in &payload.headers {
            let Some((name, value)) = h.split_once(':') else {
                return Err(BadInput(format!("--header {h}: expected `name: value`")).into());
            };
            sent.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        // As the filter builds it: each configured header with its values in order.
        let headers: Vec<(&str, Vec<&[u8]>)> = config
            .fingerprint_headers
            .iter()
            .map(|name| {
                let values = sent
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_bytes())
                    .collect();
                (name.as_str(), values)
            })
            .collect();
        let mut f = Fingerprinter::new(&[], method, path, &headers);
        f.update_body(&body);
        Ok(Some(RequestDigest(f.digest())))
    }

    /// Whether the request's fingerprint keyed under `secret` is `fingerprint` (hex).
    pub fn matches(&self, secret: &[u8], fingerprint: &str) -> bool {
        hex::encode(keyed(secret, &self.0)) == fingerprint
    }
}
