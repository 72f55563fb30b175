//! Where the mesh-wide key store is reached, and the record size it accepts.

use super::checks::check_range;
use super::raw::RawKeystore;
use super::secrets::{read_secret, Secrets, PLACEHOLDER_SECRETS};
use super::{err, ConfigError};
use idempotency_protocol::Format;

/// The largest record the key store accepts by default (`--max-record-bytes`): a record is the
/// stored response (headers and body), at most `max_response_bytes`, plus [`RECORD_OVERHEAD`].
pub const DEFAULT_KEYSTORE_MAX_RECORD_BYTES: u64 = 3 << 20;

/// `keystore.batch_max_entries` when unset: on (bench/README.md, "Group commit": more first
/// executions per second, and a third less key-store CPU per request, than one callout per call).
pub const DEFAULT_BATCH_MAX_ENTRIES: u64 = 32;

/// `keystore.batches_in_flight` when unset: with one, calls wait for each batch in turn, which
/// lengthened the saturated tail most in the bench (bench/README.md, "Group commit").
pub const DEFAULT_BATCHES_IN_FLIGHT: u64 = 2;

/// Bytes a record holds besides the response's headers and body: status, fingerprint, times,
/// field lengths and the signature.
pub const RECORD_OVERHEAD: u64 = 4096;

/// Where the mesh-wide key store is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoreConfig {
    pub cluster: String,
    pub authority: String,
    pub timeout_ms: u64,
    pub token: Option<String>,
    pub path_prefix: String,
    /// The key store's `--max-record-bytes`: `max_response_bytes` must fit in it.
    pub max_record_bytes: u64,
    /// The body format of callouts: compact, unless the key store predates it (JSON).
    pub body_format: Format,
    /// The plugin's secrets (see [`Secrets`]): records sent to the key store are sealed with the
    /// current one, and a record read back must open under one of them.
    pub secrets: Secrets,
    /// Group commit (`background/batch.rs`): the most key-store calls of this worker's streams
    /// that leave as one batch callout; 0 sends every call on its own callout.
    pub batch_max_entries: usize,
    /// How many callouts (single or batch) the worker's streams keep in flight at most before
    /// their calls gather for the next batch.
    pub batches_in_flight: usize,
}

/// The key store's settings, if `keystore` is set; `max_response_bytes` must fit the records it
/// accepts. Records it holds are sealed and opened with `secrets`.
pub(super) fn validate_keystore(
    raw: Option<RawKeystore>,
    max_response_bytes: u64,
    secrets: &Secrets,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<KeystoreConfig>, ConfigError> {
    let Some(k) = raw else {
        return Ok(None);
    };
    let cluster = k.cluster.unwrap_or_default();
    if cluster.is_empty() {
        return Err(err(
            "keystore.cluster",
            "is required when `keystore` is set",
        ));
    }
    let timeout_ms = k.timeout_ms.unwrap_or(500);
    check_range("keystore.timeout_ms", timeout_ms, 1, 60_000)?;
    let path_prefix = k.path_prefix.unwrap_or_else(|| "/v1".to_string());
    if !path_prefix.starts_with('/') || path_prefix.ends_with('/') {
        return Err(err(
            "keystore.path_prefix",
            "must start with `/` and not end with `/`",
        ));
    }
    let token = match k.token {
        None => None,
        Some(v) => {
            let t = read_secret("keystore.token", v, env)?;
            let t = String::from_utf8(t)
                .map_err(|_| err("keystore.token", "must be non-empty printable ASCII"))?;
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err("keystore.token", "must be non-empty printable ASCII"));
            }
            if PLACEHOLDER_SECRETS.contains(&t.as_str()) {
                return Err(err(
                    "keystore.token",
                    "is a placeholder shipped in the examples; set the key store's real token",
                ));
            }
            Some(t)
        }
    };
    let max_record_bytes = k
        .max_record_bytes
        .unwrap_or(DEFAULT_KEYSTORE_MAX_RECORD_BYTES);
    check_range(
        "keystore.max_record_bytes",
        max_record_bytes,
        RECORD_OVERHEAD + 1,
        1 << 30,
    )?;
    if max_response_bytes.saturating_add(RECORD_OVERHEAD) > max_record_bytes {
        return Err(err(
            "max_response_bytes",
            format!(
                "{max_response_bytes} does not fit the key store's record limit (`keystore.max_record_bytes` {max_record_bytes}, minus {RECORD_OVERHEAD} bytes of record overhead); lower it, or raise the key store's --max-record-bytes and `keystore.max_record_bytes` together"
            ),
        ));
    }
    let body_format = match k.body_format.as_deref() {
        None | Some("compact") => Format::Compact,
        Some("json") => Format::Json,
        Some(_) => {
            return Err(err(
                "keystore.body_format",
                "must be \"compact\" or \"json\"",
            ))
        }
    };
    let batch_max_entries = k.batch_max_entries.unwrap_or(DEFAULT_BATCH_MAX_ENTRIES);
    check_range(
        "keystore.batch_max_entries",
        batch_max_entries,
        0,
        idempotency_protocol::MAX_BATCH_ENTRIES as u64,
    )?;
    let batches_in_flight = k.batches_in_flight.unwrap_or(DEFAULT_BATCHES_IN_FLIGHT);
    check_range("keystore.batches_in_flight", batches_in_flight, 1, 64)?;
    Ok(Some(KeystoreConfig {
        authority: k.authority.unwrap_or_else(|| cluster.clone()),
        cluster,
        timeout_ms,
        token,
        path_prefix,
        max_record_bytes,
        body_format,
        secrets: secrets.clone(),
        batch_max_entries: usize::try_from(batch_max_entries).unwrap_or(0),
        batches_in_flight: usize::try_from(batches_in_flight).unwrap_or(1),
    }))
}
