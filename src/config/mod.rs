//! Plugin configuration: the JSON in the Wasm filter's `configuration`, parsed and validated once at
//! load so that a bad value is refused by Envoy with the field named, never discovered per request.

use serde::Deserialize;
use std::fmt;

/// Statuses that are never stored: the request did not really run.
pub const NEVER_STORED: [u16; 6] = [401, 403, 408, 409, 425, 429];

/// What to do when the key store is unreachable, slow or answers garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Forward the request, protected by the local cache only.
    FailOpen,
    /// Answer 503 problem+json.
    FailClosed,
}

/// What a key becomes when its attempt may have executed but no complete answer came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownOutcome {
    /// Exactly once: the key answers 409 while the upstream may still be working, then a terminal
    /// "outcome unknown" problem for the retention; it never executes again.
    Lock,
    /// At least once: the key is freed and a retry executes again.
    Release,
}

/// Whether the filter acts on what it decides, or only counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Answers locally (replays, 409, 422, 400, ...) as the behaviour table says.
    Enforce,
    /// Forwards every request untouched and counts what enforce would have answered (under
    /// `idempotency.observe.*`); records are still stored, so switching to enforce starts warm.
    Observe,
}

/// Who sends the first request of a key upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    /// Envoy's router, as for any request (retries, rewrites and later filters apply).
    Inline,
    /// The plugin itself, from its root context, so the answer is captured and stored even when
    /// the client is gone.
    Detached { cluster: String, timeout_ms: u64 },
}

/// What a duplicate gets while the first request of its key is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InFlight {
    /// 409 with `Retry-After` at once.
    Conflict,
    /// Wait (up to `max_wait_ms`) for the first request's record and replay it; 409 past that.
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawExecution {
    Inline,
    Detached,
}

/// Whether requests without a caller value share one anonymous scope or are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anonymous {
    Allow,
    Reject,
}

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

/// Where the caller identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerSource {
    Header(String),
    Property(Vec<String>),
}

/// How a rule matches the request path (query excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        }
    }

    /// A stable label that scopes keys to the rule, so one key on two routes never shares a record.
    pub fn scope(&self) -> String {
        match self {
            PathMatch::Prefix(p) => format!("prefix:{p}"),
            PathMatch::Exact(p) => format!("exact:{p}"),
        }
    }
}

/// One covered route with its effective settings (top-level defaults already applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub path: PathMatch,
    pub methods: Vec<String>,
    pub required: bool,
    pub retention_ms: u64,
    pub store_5xx: bool,
    pub failure_mode: FailureMode,
    pub unknown_outcome: UnknownOutcome,
    /// How long after an attempt with an unknown outcome ended retries still get 409.
    pub unknown_hold_ms: u64,
    pub execution: Execution,
    pub in_flight: InFlight,
    pub max_wait_ms: u64,
    pub mode: Mode,
}

/// Where the mesh-wide key store is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoreConfig {
    pub cluster: String,
    pub authority: String,
    pub timeout_ms: u64,
    pub token: Option<String>,
    pub path_prefix: String,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Lower-case, as Envoy presents header names.
    pub header_name: String,
    pub routes: Vec<RouteRule>,
    pub caller: CallerSource,
    pub anonymous: Anonymous,
    pub hmac_secret: Vec<u8>,
    /// True when the operator kept the built-in secret: worth a warning at load.
    pub default_secret: bool,
    pub fingerprint_headers: Vec<String>,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    pub lock_lease_ms: u64,
    pub l1_slots: u32,
    pub headers_mode: HeadersMode,
    pub keystore: Option<KeystoreConfig>,
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

const DEFAULT_SECRET: &str = "change-me";
/// Long enough for the usual upstream work that outlives its caller to finish.
const DEFAULT_UNKNOWN_HOLD_MS: u64 = 30_000;
const MAX_HOLD_MS: u64 = 3_600_000;
const DEFAULT_MAX_WAIT_MS: u64 = 10_000;
/// The key store holds a waiting claim for at most a minute.
const MAX_WAIT_MS: u64 = 60_000;
const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
const MAX_UPSTREAM_TIMEOUT_MS: u64 = 600_000;
const MAX_SLOTS: u32 = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    header_name: Option<String>,
    methods: Option<Vec<String>>,
    routes: Option<Vec<RawRule>>,
    caller: Option<RawCaller>,
    anonymous: Option<Anonymous>,
    hmac_secret: Option<String>,
    fingerprint_headers: Option<Vec<String>>,
    max_body_bytes: Option<u64>,
    max_response_bytes: Option<u64>,
    retention_s: Option<u64>,
    lock_lease_ms: Option<u64>,
    store_5xx: Option<bool>,
    failure_mode: Option<FailureMode>,
    unknown_outcome: Option<UnknownOutcome>,
    unknown_hold_ms: Option<u64>,
    in_flight: Option<InFlight>,
    max_wait_ms: Option<u64>,
    mode: Option<Mode>,
    l1_slots: Option<u32>,
    headers_mode: Option<HeadersMode>,
    keystore: Option<RawKeystore>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    prefix: Option<String>,
    exact: Option<String>,
    methods: Option<Vec<String>>,
    required: Option<bool>,
    retention_s: Option<u64>,
    store_5xx: Option<bool>,
    failure_mode: Option<FailureMode>,
    unknown_outcome: Option<UnknownOutcome>,
    unknown_hold_ms: Option<u64>,
    execution: Option<RawExecution>,
    upstream_cluster: Option<String>,
    upstream_timeout_ms: Option<u64>,
    in_flight: Option<InFlight>,
    max_wait_ms: Option<u64>,
    mode: Option<Mode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    header: Option<String>,
    property: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeystore {
    cluster: Option<String>,
    authority: Option<String>,
    timeout_ms: Option<u64>,
    token: Option<String>,
    path_prefix: Option<String>,
}

impl Config {
    /// Parses and validates the plugin configuration. An empty document means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let trimmed = bytes.iter().all(|b| b.is_ascii_whitespace());
        let raw: RawConfig = if trimmed {
            serde_json::from_str("{}").map_err(|e| err("(document)", e.to_string()))?
        } else {
            serde_json_path_error(bytes)?
        };
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let header_name = raw
            .header_name
            .unwrap_or_else(|| "idempotency-key".to_string())
            .to_ascii_lowercase();
        if !is_token(&header_name) {
            return Err(err("header_name", "must be a non-empty HTTP header name"));
        }
        let methods = validate_methods("methods", raw.methods)?
            .unwrap_or_else(|| vec!["POST".to_string(), "PATCH".to_string()]);
        let retention_s = raw.retention_s.unwrap_or(86_400);
        check_range("retention_s", retention_s, 1, 365 * 86_400)?;
        let store_5xx = raw.store_5xx.unwrap_or(false);
        let failure_mode = raw.failure_mode.unwrap_or(FailureMode::FailClosed);
        let unknown_outcome = raw.unknown_outcome.unwrap_or(UnknownOutcome::Lock);
        let unknown_hold_ms = raw.unknown_hold_ms.unwrap_or(DEFAULT_UNKNOWN_HOLD_MS);
        check_range("unknown_hold_ms", unknown_hold_ms, 0, MAX_HOLD_MS)?;
        let in_flight = raw.in_flight.unwrap_or(InFlight::Conflict);
        let mode = raw.mode.unwrap_or(Mode::Enforce);
        let max_wait_ms = raw.max_wait_ms.unwrap_or(DEFAULT_MAX_WAIT_MS);
        check_range("max_wait_ms", max_wait_ms, 1, MAX_WAIT_MS)?;

        let raw_rules = raw.routes.unwrap_or_else(|| {
            vec![RawRule {
                prefix: Some("/".to_string()),
                exact: None,
                methods: None,
                required: None,
                retention_s: None,
                store_5xx: None,
                failure_mode: None,
                unknown_outcome: None,
                unknown_hold_ms: None,
                execution: None,
                upstream_cluster: None,
                upstream_timeout_ms: None,
                in_flight: None,
                max_wait_ms: None,
                mode: None,
            }]
        });
        let mut routes = Vec::with_capacity(raw_rules.len());
        for (i, r) in raw_rules.into_iter().enumerate() {
            let at = |f: &str| format!("routes[{i}].{f}");
            let path = match (r.prefix, r.exact) {
                (Some(p), None) => PathMatch::Prefix(check_path(&at("prefix"), p)?),
                (None, Some(p)) => PathMatch::Exact(check_path(&at("exact"), p)?),
                _ => {
                    return Err(err(
                        format!("routes[{i}]"),
                        "needs exactly one of `prefix` or `exact`",
                    ))
                }
            };
            let rule_retention = r.retention_s.unwrap_or(retention_s);
            check_range(&at("retention_s"), rule_retention, 1, 365 * 86_400)?;
            let rule_hold = r.unknown_hold_ms.unwrap_or(unknown_hold_ms);
            check_range(&at("unknown_hold_ms"), rule_hold, 0, MAX_HOLD_MS)?;
            let rule_wait = r.max_wait_ms.unwrap_or(max_wait_ms);
            check_range(&at("max_wait_ms"), rule_wait, 1, MAX_WAIT_MS)?;
            let execution = match (r.execution, r.upstream_cluster) {
                (None | Some(RawExecution::Inline), None) => {
                    if r.upstream_timeout_ms.is_some() {
                        return Err(err(
                            at("upstream_timeout_ms"),
                            "only applies with `execution: \"detached\"`",
                        ));
                    }
                    Execution::Inline
                }
                (None | Some(RawExecution::Inline), Some(_)) => {
                    return Err(err(
                        at("upstream_cluster"),
                        "only applies with `execution: \"detached\"`",
                    ))
                }
                (Some(RawExecution::Detached), cluster) => {
                    let cluster = cluster.filter(|c| !c.is_empty()).ok_or_else(|| {
                        err(
                            at("upstream_cluster"),
                            "is required with `execution: \"detached\"`: the Envoy cluster the plugin sends the request to",
                        )
                    })?;
                    let timeout_ms = r.upstream_timeout_ms.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS);
                    check_range(
                        &at("upstream_timeout_ms"),
                        timeout_ms,
                        1,
                        MAX_UPSTREAM_TIMEOUT_MS,
                    )?;
                    Execution::Detached {
                        cluster,
                        timeout_ms,
                    }
                }
            };
            routes.push(RouteRule {
                path,
                methods: validate_methods(&at("methods"), r.methods)?
                    .unwrap_or_else(|| methods.clone()),
                required: r.required.unwrap_or(false),
                retention_ms: rule_retention * 1000,
                store_5xx: r.store_5xx.unwrap_or(store_5xx),
                failure_mode: r.failure_mode.unwrap_or(failure_mode),
                unknown_outcome: r.unknown_outcome.unwrap_or(unknown_outcome),
                unknown_hold_ms: rule_hold,
                execution,
                in_flight: r.in_flight.unwrap_or(in_flight),
                max_wait_ms: rule_wait,
                mode: r.mode.unwrap_or(mode),
            });
        }

        let caller = match raw.caller {
            None => CallerSource::Header("authorization".to_string()),
            Some(RawCaller {
                header: Some(h),
                property: None,
            }) => {
                let h = h.to_ascii_lowercase();
                if !is_token(&h) {
                    return Err(err("caller.header", "must be a non-empty HTTP header name"));
                }
                CallerSource::Header(h)
            }
            Some(RawCaller {
                header: None,
                property: Some(p),
            }) => {
                if p.is_empty() || p.iter().any(|s| s.is_empty()) {
                    return Err(err(
                        "caller.property",
                        "must be a non-empty list of non-empty path segments",
                    ));
                }
                CallerSource::Property(p)
            }
            Some(_) => return Err(err("caller", "needs exactly one of `header` or `property`")),
        };

        let secret = raw
            .hmac_secret
            .unwrap_or_else(|| DEFAULT_SECRET.to_string());
        if secret.is_empty() {
            return Err(err("hmac_secret", "must not be empty"));
        }
        let mut fingerprint_headers = Vec::new();
        for (i, h) in raw
            .fingerprint_headers
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let h = h.to_ascii_lowercase();
            if !is_token(&h) {
                return Err(err(
                    format!("fingerprint_headers[{i}]"),
                    "must be an HTTP header name",
                ));
            }
            fingerprint_headers.push(h);
        }

        let max_body_bytes = raw.max_body_bytes.unwrap_or(1 << 20);
        check_range("max_body_bytes", max_body_bytes, 1, 64 << 20)?;
        let max_response_bytes = raw.max_response_bytes.unwrap_or(64 << 10);
        check_range("max_response_bytes", max_response_bytes, 1, 16 << 20)?;
        let lock_lease_ms = raw.lock_lease_ms.unwrap_or(30_000);
        check_range("lock_lease_ms", lock_lease_ms, 100, 3_600_000)?;
        let l1_slots = raw.l1_slots.unwrap_or(1024);
        check_range("l1_slots", u64::from(l1_slots), 1, u64::from(MAX_SLOTS))?;

        let keystore = match raw.keystore {
            None => None,
            Some(k) => {
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
                if let Some(t) = &k.token {
                    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(err("keystore.token", "must be non-empty printable ASCII"));
                    }
                }
                Some(KeystoreConfig {
                    authority: k.authority.unwrap_or_else(|| cluster.clone()),
                    cluster,
                    timeout_ms,
                    token: k.token,
                    path_prefix,
                })
            }
        };

        Ok(Config {
            header_name,
            routes,
            caller,
            anonymous: raw.anonymous.unwrap_or(Anonymous::Allow),
            default_secret: secret == DEFAULT_SECRET,
            hmac_secret: secret.into_bytes(),
            fingerprint_headers,
            max_body_bytes: to_usize(max_body_bytes),
            max_response_bytes: to_usize(max_response_bytes),
            lock_lease_ms,
            l1_slots,
            headers_mode: raw.headers_mode.unwrap_or(HeadersMode::Hold),
            keystore,
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

/// Deserializes with the path of the failing field kept, so a type error names it.
fn serde_json_path_error(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
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

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn check_range(field: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(err(
            field,
            format!("must be between {min} and {max}, got {v}"),
        ));
    }
    Ok(())
}

fn check_path(field: &str, p: String) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(err(field, "must start with `/`"));
    }
    Ok(p)
}

fn validate_methods(
    field: &str,
    methods: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(methods) = methods else {
        return Ok(None);
    };
    if methods.is_empty() {
        return Err(err(field, "must list at least one method"));
    }
    let mut out = Vec::with_capacity(methods.len());
    for m in methods {
        let upper = m.to_ascii_uppercase();
        if !is_token(&upper) {
            return Err(err(field, format!("`{m}` is not an HTTP method")));
        }
        out.push(upper);
    }
    Ok(Some(out))
}

/// RFC 9110 token characters: what header names and methods are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
