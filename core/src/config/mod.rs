//! Plugin configuration: the JSON in the Wasm filter's `configuration`, parsed and validated once at
//! load so that a bad value is refused by Envoy with the field named, never discovered per request.
//!
//! [`Config::parse`] reads the document ([`raw`]) and validates it part by part: the routes and
//! their settings ([`rules`]), the caller ([`caller`]), the secrets ([`secrets`]), the headers
//! ([`headers`]) and the key store ([`keystore`]).

use std::fmt;

mod caller;
mod checks;
mod headers;
mod keystore;
mod policy;
mod raw;
mod rules;
mod secrets;

pub use caller::CallerSource;
pub use headers::{
    HeadersMode, ReplayHeaders, DEFAULT_EXPIRES_HEADER, DEFAULT_REPLAY_DENY, REPLAYED_HEADER,
};
pub use keystore::{KeystoreConfig, DEFAULT_KEYSTORE_MAX_RECORD_BYTES, RECORD_OVERHEAD};
pub use policy::{FailureMode, Mode, Replay, UnknownOutcome, WhileInFlight};
pub use rules::{Execution, PathMatch, RouteRule, NEVER_STORED};
pub use secrets::{Secrets, MIN_SECRET_BYTES, PLACEHOLDER_SECRETS};

use checks::{check_range, is_token, to_usize};
use raw::RawConfig;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Lower-case, as Envoy presents header names.
    pub header_name: String,
    pub routes: Vec<RouteRule>,
    /// Where the caller comes from, tried in order.
    pub callers: Vec<CallerSource>,
    /// The scope of callers that none of the sources names; `None`: they get 401.
    pub anonymous_scope: Option<String>,
    pub secrets: Secrets,
    pub replay_headers: ReplayHeaders,
    pub fingerprint_headers: Vec<String>,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    /// The bytes one worker's VM may hold for clients ([`crate::budget`]).
    pub memory_budget_bytes: usize,
    pub lock_lease_ms: u64,
    pub l1_slots: u32,
    pub headers_mode: HeadersMode,
    pub keystore: Option<KeystoreConfig>,
    /// The response header (lower-case) that says until when a stored or replayed answer's key
    /// is honoured; `None`: not sent.
    pub expires_header: Option<String>,
    /// This Envoy has a replay listener, and a route on the filter state the filter sets sends a
    /// replay there (README, "Routed replays"): gRPC retries, and rules with `replay: "routed"`.
    pub routed_replay: bool,
    /// This filter is the replay listener's: it answers only replays that the outer filter of
    /// the same Envoy routed to it, from L1.
    pub replay_listener: bool,
}

/// A configuration error that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: field `{}`: {}",
            self.field, self.reason
        )
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

const MAX_SLOTS: u32 = 1 << 20;

impl Config {
    /// Parses and validates the plugin configuration; secrets named by `{"env": ...}` are read
    /// from the Wasm VM's environment (`vm_config.environment_variables`).
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with_env(bytes, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with the environment given as a lookup (tests).
    pub fn parse_with_env(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let trimmed = bytes.iter().all(|b| b.is_ascii_whitespace());
        let raw: RawConfig = if trimmed {
            serde_json::from_str("{}").map_err(|e| err("(document)", e.to_string()))?
        } else {
            raw::deserialize(bytes)?
        };
        Config::validate(raw, env)
    }

    /// Validates the parts in the order their fields are reported when several are wrong.
    fn validate(
        mut raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let header_name = raw
            .header_name
            .take()
            .unwrap_or_else(|| "idempotency-key".to_string())
            .to_ascii_lowercase();
        if !is_token(&header_name) {
            return Err(err("header_name", "must be a non-empty HTTP header name"));
        }
        let routes = rules::validate_routes(&mut raw)?;
        let routed_replay = raw.routed_replay.unwrap_or(false);
        let replay_listener = raw.replay_listener.unwrap_or(false);
        if routed_replay && replay_listener {
            return Err(err(
                "replay_listener",
                "cannot be set with `routed_replay`: the replay listener's filter answers replays, the outer filter routes them (two filter configurations)",
            ));
        }
        let callers = caller::validate_callers(raw.caller)?;
        let anonymous_scope = caller::validate_anonymous_scope(raw.anonymous, raw.anonymous_scope)?;
        let secrets = secrets::validate_secrets(raw.hmac_secret, raw.hmac_secrets, env)?;
        let replay_headers = headers::validate_replay_headers(raw.replay_headers)?;
        let fingerprint_headers = headers::validate_fingerprint_headers(raw.fingerprint_headers)?;

        let max_body_bytes = raw.max_body_bytes.unwrap_or(1 << 20);
        check_range("max_body_bytes", max_body_bytes, 1, 64 << 20)?;
        let max_response_bytes = raw.max_response_bytes.unwrap_or(64 << 10);
        check_range("max_response_bytes", max_response_bytes, 1, 16 << 20)?;
        let memory_budget_bytes = raw
            .memory_budget_bytes
            .unwrap_or(crate::budget::DEFAULT_BUDGET_BYTES);
        // Below the VM's 1 GiB with room for the filter's own state and allocator slack.
        check_range(
            "memory_budget_bytes",
            memory_budget_bytes,
            1 << 20,
            768 << 20,
        )?;
        if memory_budget_bytes < max_body_bytes {
            return Err(err(
                "memory_budget_bytes",
                "must be at least max_body_bytes (a smaller budget refuses every body that large)",
            ));
        }
        let lock_lease_ms = raw.lock_lease_ms.unwrap_or(30_000);
        check_range("lock_lease_ms", lock_lease_ms, 100, 3_600_000)?;
        let l1_slots = raw.l1_slots.unwrap_or(1024);
        check_range("l1_slots", u64::from(l1_slots), 1, u64::from(MAX_SLOTS))?;
        let keystore =
            keystore::validate_keystore(raw.keystore, max_response_bytes, &secrets, env)?;
        let headers_mode = raw.headers_mode.unwrap_or(HeadersMode::Hold);
        if routed_replay && headers_mode == HeadersMode::Stream {
            return Err(err(
                "routed_replay",
                "needs `headers_mode: \"hold\"`: a replay is routed by changing the request's headers, which `stream` mode has already sent upstream",
            ));
        }

        Ok(Config {
            header_name,
            routes,
            callers,
            anonymous_scope,
            secrets,
            replay_headers,
            fingerprint_headers,
            max_body_bytes: to_usize(max_body_bytes),
            max_response_bytes: to_usize(max_response_bytes),
            memory_budget_bytes: to_usize(memory_budget_bytes),
            lock_lease_ms,
            l1_slots,
            headers_mode,
            keystore,
            expires_header: headers::validate_expires_header(raw.expires_header)?,
            routed_replay,
            replay_listener,
        })
    }

    /// The first rule covering this method and path, if any.
    pub fn route_for(&self, method: &str, path: &str) -> Option<&RouteRule> {
        let path_only = path.split('?').next().unwrap_or(path);
        self.routes
            .iter()
            .find(|r| r.path.matches(path_only) && r.methods.iter().any(|m| m == method))
    }
}

#[cfg(test)]
mod tests;
