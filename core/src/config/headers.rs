//! Headers around the decision: whether request headers wait for it, which response headers a
//! replay carries, which request headers enter the fingerprint, and the in-band expiry header.

use serde::Deserialize;

use super::checks::is_token;
use super::raw::RawReplayHeaders;
use super::{err, ConfigError};

/// How the request headers wait while the body is read and the decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadersMode {
    /// Hold the headers too: nothing reaches the upstream before the decision. Needs the Wasm
    /// filter's `allow_on_headers_stop_iteration: true` (Envoy 1.35+); without it Envoy hides the
    /// body from the filter and the request stalls.
    Hold,
    /// Let the headers go upstream at once and hold only the body until the decision, so a refused
    /// request never completes upstream. For hosts that cannot set that flag (Istio WasmPlugin).
    Stream,
}

/// Which response headers a replay may carry (hop-by-hop and recomputed headers never are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayHeaders {
    /// Every header except these (lower case): the built-in list plus the configured names.
    Deny(Vec<String>),
    /// Only these (lower case).
    Allow(Vec<String>),
}

impl ReplayHeaders {
    /// Whether a response header `name` (any case) may be stored and replayed.
    pub fn keeps(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        match self {
            ReplayHeaders::Deny(names) => !names.contains(&lower),
            ReplayHeaders::Allow(names) => names.contains(&lower),
        }
    }
}

/// Response headers a replay never carries unless an allowlist names them: they set or ask for
/// credentials, which belong to the one client that got the first answer.
pub const DEFAULT_REPLAY_DENY: [&str; 8] = [
    "set-cookie",
    "set-cookie2",
    "authorization",
    "proxy-authorization",
    "www-authenticate",
    "proxy-authenticate",
    "authentication-info",
    "proxy-authentication-info",
];

pub(super) fn validate_replay_headers(
    raw: Option<RawReplayHeaders>,
) -> Result<ReplayHeaders, ConfigError> {
    let names = |field: &str, list: Vec<String>| {
        list.into_iter()
            .enumerate()
            .map(|(i, h)| {
                let h = h.to_ascii_lowercase();
                if is_token(&h) {
                    Ok(h)
                } else {
                    Err(err(format!("{field}[{i}]"), "must be an HTTP header name"))
                }
            })
            .collect::<Result<Vec<String>, ConfigError>>()
    };
    let default_deny = || DEFAULT_REPLAY_DENY.iter().map(|h| (*h).to_string());
    match raw {
        None => Ok(ReplayHeaders::Deny(default_deny().collect())),
        Some(RawReplayHeaders {
            deny: Some(extra),
            allow: None,
        }) => {
            let mut all: Vec<String> = default_deny().collect();
            for h in names("replay_headers.deny", extra)? {
                if !all.contains(&h) {
                    all.push(h);
                }
            }
            Ok(ReplayHeaders::Deny(all))
        }
        Some(RawReplayHeaders {
            deny: None,
            allow: Some(list),
        }) => Ok(ReplayHeaders::Allow(names("replay_headers.allow", list)?)),
        Some(_) => Err(err(
            "replay_headers",
            "needs exactly one of `deny` or `allow`",
        )),
    }
}

/// The request headers that enter the fingerprint, lower-cased.
pub(super) fn validate_fingerprint_headers(
    raw: Option<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    let mut fingerprint_headers = Vec::new();
    for (i, h) in raw.unwrap_or_default().into_iter().enumerate() {
        let h = h.to_ascii_lowercase();
        if !is_token(&h) {
            return Err(err(
                format!("fingerprint_headers[{i}]"),
                "must be an HTTP header name",
            ));
        }
        fingerprint_headers.push(h);
    }
    Ok(fingerprint_headers)
}

/// The default name of the in-band expiry header.
pub const DEFAULT_EXPIRES_HEADER: &str = "idempotency-expires";

/// The response header that marks a replay.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

pub(super) fn validate_expires_header(
    raw: Option<serde_json::Value>,
) -> Result<Option<String>, ConfigError> {
    match raw {
        None => Ok(Some(DEFAULT_EXPIRES_HEADER.to_string())),
        Some(serde_json::Value::Null | serde_json::Value::Bool(false)) => Ok(None),
        Some(serde_json::Value::String(name)) => {
            let name = name.to_ascii_lowercase();
            if !is_token(&name) {
                return Err(err("expires_header", "must be an HTTP header name"));
            }
            if name == REPLAYED_HEADER {
                return Err(err(
                    "expires_header",
                    "is the header that marks a replay; pick another name",
                ));
            }
            Ok(Some(name))
        }
        Some(_) => Err(err(
            "expires_header",
            "must be a header name, or `null`/`false` to send no expiry header",
        )),
    }
}
