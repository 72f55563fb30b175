//! The plugin configuration as written: the JSON document's shape, unknown fields refused, and a
//! type error reported with the path of the field. The other modules validate these values.

use serde::Deserialize;

use super::policy::{FailureMode, Mode, Replay, UnknownOutcome, WhileInFlight};
use super::{err, ConfigError, HeadersMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawExecution {
    Inline,
    Detached,
}

/// The former `anonymous` field: only `reject` (now the default) is still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Anonymous {
    Allow,
    Reject,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) header_name: Option<String>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) routes: Option<Vec<RawRule>>,
    pub(super) caller: Option<RawCaller>,
    pub(super) anonymous: Option<Anonymous>,
    pub(super) anonymous_scope: Option<String>,
    pub(super) hmac_secret: Option<serde_json::Value>,
    pub(super) hmac_secrets: Option<Vec<serde_json::Value>>,
    pub(super) replay_headers: Option<RawReplayHeaders>,
    pub(super) fingerprint_headers: Option<Vec<String>>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_response_bytes: Option<u64>,
    pub(super) memory_budget_bytes: Option<u64>,
    pub(super) retention_s: Option<u64>,
    pub(super) lock_lease_ms: Option<u64>,
    pub(super) store_5xx: Option<bool>,
    pub(super) failure_mode: Option<FailureMode>,
    pub(super) unknown_outcome: Option<UnknownOutcome>,
    pub(super) unknown_hold_ms: Option<u64>,
    pub(super) in_flight: Option<WhileInFlight>,
    pub(super) max_wait_ms: Option<u64>,
    pub(super) mode: Option<Mode>,
    pub(super) l1_slots: Option<u32>,
    pub(super) headers_mode: Option<HeadersMode>,
    pub(super) keystore: Option<RawKeystore>,
    /// Absent: the default name; `null` or `false`: off. Kept apart so that `null` is not absent.
    #[serde(default, deserialize_with = "present")]
    pub(super) expires_header: Option<serde_json::Value>,
    pub(super) replay: Option<Replay>,
    pub(super) routed_replay: Option<bool>,
    pub(super) replay_listener: Option<bool>,
}

/// A field that is present, even as `null`.
pub(super) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) prefix: Option<String>,
    pub(super) exact: Option<String>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) required: Option<bool>,
    pub(super) retention_s: Option<u64>,
    pub(super) store_5xx: Option<bool>,
    pub(super) failure_mode: Option<FailureMode>,
    pub(super) unknown_outcome: Option<UnknownOutcome>,
    pub(super) unknown_hold_ms: Option<u64>,
    pub(super) execution: Option<RawExecution>,
    pub(super) upstream_cluster: Option<String>,
    pub(super) upstream_timeout_ms: Option<u64>,
    pub(super) in_flight: Option<WhileInFlight>,
    pub(super) max_wait_ms: Option<u64>,
    pub(super) mode: Option<Mode>,
    pub(super) key_field: Option<u64>,
    pub(super) replay: Option<Replay>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCaller {
    pub(super) header: Option<String>,
    pub(super) property: Option<Vec<String>>,
    pub(super) sources: Option<Vec<RawSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) header: Option<String>,
    pub(super) property: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplayHeaders {
    pub(super) deny: Option<Vec<String>>,
    pub(super) allow: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeystore {
    pub(super) cluster: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) token: Option<serde_json::Value>,
    pub(super) path_prefix: Option<String>,
    pub(super) max_record_bytes: Option<u64>,
    pub(super) body_format: Option<String>,
    pub(super) batch_max_entries: Option<u64>,
    pub(super) batches_in_flight: Option<u64>,
}

/// Deserializes with the path of the failing field kept, so a type error names it.
pub(super) fn deserialize(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde names an unknown field in its message, at the path of its parent.
        let field = match (inner.to_string().split('`').nth(1), path.as_str()) {
            (Some(name), ".") if inner.to_string().starts_with("unknown field") => name.to_string(),
            (Some(name), p) if inner.to_string().starts_with("unknown field") => {
                format!("{p}.{name}")
            }
            (_, "." | "?") => "(document)".to_string(),
            (_, p) => p.to_string(),
        };
        err(field, inner.to_string())
    })?;
    de.end().map_err(|e| err("(document)", e.to_string()))?;
    Ok(raw)
}
