//! Plugin configuration: the JSON in the Wasm filter's `configuration`, parsed and validated once at
//! load so that a bad value is refused by Envoy with the field named, never discovered per request.

use idempotency_protocol::Format;
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

/// The former `anonymous` field: only `reject` (now the default) is still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Anonymous {
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

/// One place the caller identity may come from. The sources are tried in order; the first that
/// gives a non-empty value names the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerSource {
    /// A request header's value (e.g. `authorization`, `cookie`, `x-api-key`).
    Header(String),
    /// An Envoy property path (e.g. the JWT filter's subject in dynamic metadata, or the mTLS
    /// peer's identity `["connection","uri_san_peer_certificate"]`).
    Property(Vec<String>),
}

impl CallerSource {
    /// A label that goes into the record key with the value, so the same bytes from two sources
    /// (a header and a certificate SAN) are two callers.
    pub fn label(&self) -> String {
        match self {
            CallerSource::Header(h) => format!("header:{h}"),
            // Segments as a JSON array: no two different paths give one label.
            CallerSource::Property(p) => {
                format!("property:{}", serde_json::to_string(p).unwrap_or_default())
            }
        }
    }
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

/// Secrets shorter than this are refused: 32 bytes is the HMAC-SHA-256 output size.
pub const MIN_SECRET_BYTES: usize = 32;

/// Values that shipped in this repository's examples as placeholders; refused as secrets.
pub const PLACEHOLDER_SECRETS: [&str; 5] = [
    "change-me",
    "demo-secret-change-me",
    "replace-with-a-long-random-secret",
    "replace-with-the-keystore-token",
    "replace-me-with-32-or-more-random-bytes",
];

/// The largest record the key store accepts by default (`--max-record-bytes`): a record is the
/// stored response (headers and body), at most `max_response_bytes`, plus [`RECORD_OVERHEAD`].
pub const DEFAULT_KEYSTORE_MAX_RECORD_BYTES: u64 = 3 << 20;

/// Bytes a record holds besides the response's headers and body: status, fingerprint, times,
/// field lengths and the signature.
pub const RECORD_OVERHEAD: u64 = 4096;

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

impl RouteRule {
    /// Whether an answer with this status is kept for replays: not one that says the request never
    /// really ran (`NEVER_STORED`), and not a 5xx unless the rule stores them.
    pub fn keeps_status(&self, status: u16) -> bool {
        (status < 500 || self.store_5xx) && status >= 100 && !NEVER_STORED.contains(&status)
    }
}

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
}

/// The HMAC secrets, newest first: the first derives record keys and fingerprints and signs
/// records; every one of them verifies records and finds those stored before a rotation.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets(Vec<Vec<u8>>);

impl Secrets {
    /// The secret that scopes and signs what is written now.
    pub fn current(&self) -> &[u8] {
        self.0.first().map_or(&[], Vec::as_slice)
    }

    /// Every secret, the current one first.
    pub fn all(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(Vec::as_slice)
    }

    /// The secrets of an earlier rotation, still accepted.
    pub fn previous(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().skip(1).map(Vec::as_slice)
    }

    /// For tests and tools: secrets given as bytes, unchecked.
    pub fn from_bytes(secrets: Vec<Vec<u8>>) -> Secrets {
        Secrets(secrets)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

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
    pub lock_lease_ms: u64,
    pub l1_slots: u32,
    pub headers_mode: HeadersMode,
    pub keystore: Option<KeystoreConfig>,
    /// The response header (lower-case) that says until when a stored or replayed answer's key
    /// is honoured; `None`: not sent.
    pub expires_header: Option<String>,
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
    anonymous_scope: Option<String>,
    hmac_secret: Option<serde_json::Value>,
    hmac_secrets: Option<Vec<serde_json::Value>>,
    replay_headers: Option<RawReplayHeaders>,
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
    /// Absent: the default name; `null` or `false`: off. Kept apart so that `null` is not absent.
    #[serde(default, deserialize_with = "present")]
    expires_header: Option<serde_json::Value>,
}

/// A field that is present, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
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
    sources: Option<Vec<RawSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    header: Option<String>,
    property: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplayHeaders {
    deny: Option<Vec<String>>,
    allow: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeystore {
    cluster: Option<String>,
    authority: Option<String>,
    timeout_ms: Option<u64>,
    token: Option<serde_json::Value>,
    path_prefix: Option<String>,
    max_record_bytes: Option<u64>,
    body_format: Option<String>,
}

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
            serde_json_path_error(bytes)?
        };
        Config::validate(raw, env)
    }

    fn validate(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
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

        let callers = validate_callers(raw.caller)?;
        let anonymous_scope = match (raw.anonymous, raw.anonymous_scope) {
            (Some(Anonymous::Allow), _) => {
                return Err(err(
                    "anonymous",
                    "`allow` is no longer accepted: callers without credentials no longer share a scope by default; name their scope with `anonymous_scope` (they then share it), or remove `anonymous` to refuse them with 401",
                ))
            }
            (Some(Anonymous::Reject), Some(_)) => {
                return Err(err(
                    "anonymous_scope",
                    "contradicts `anonymous: \"reject\"`; keep one of them",
                ))
            }
            (_, Some(name)) => {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(err("anonymous_scope", "must be non-empty printable ASCII"));
                }
                Some(name)
            }
            (_, None) => None,
        };
        let secrets = validate_secrets(raw.hmac_secret, raw.hmac_secrets, env)?;
        let replay_headers = validate_replay_headers(raw.replay_headers)?;
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
                let token = match k.token {
                    None => None,
                    Some(v) => {
                        let t = read_secret("keystore.token", v, env)?;
                        let t = String::from_utf8(t).map_err(|_| {
                            err("keystore.token", "must be non-empty printable ASCII")
                        })?;
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
                Some(KeystoreConfig {
                    authority: k.authority.unwrap_or_else(|| cluster.clone()),
                    cluster,
                    timeout_ms,
                    token,
                    path_prefix,
                    max_record_bytes,
                    body_format,
                    secrets: secrets.clone(),
                })
            }
        };

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
            lock_lease_ms,
            l1_slots,
            headers_mode: raw.headers_mode.unwrap_or(HeadersMode::Hold),
            keystore,
            expires_header: validate_expires_header(raw.expires_header)?,
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

fn validate_callers(raw: Option<RawCaller>) -> Result<Vec<CallerSource>, ConfigError> {
    let one = |field: &str, header: Option<String>, property: Option<Vec<String>>| match (
        header, property,
    ) {
        (Some(h), None) => {
            let h = h.to_ascii_lowercase();
            if !is_token(&h) {
                return Err(err(
                    format!("{field}.header"),
                    "must be a non-empty HTTP header name",
                ));
            }
            Ok(CallerSource::Header(h))
        }
        (None, Some(p)) => {
            if p.is_empty() || p.iter().any(|s| s.is_empty()) {
                return Err(err(
                    format!("{field}.property"),
                    "must be a non-empty list of non-empty path segments",
                ));
            }
            Ok(CallerSource::Property(p))
        }
        _ => Err(err(field, "needs exactly one of `header` or `property`")),
    };
    match raw {
        None => Ok(vec![CallerSource::Header("authorization".to_string())]),
        Some(RawCaller {
            header: None,
            property: None,
            sources: Some(sources),
        }) => {
            if sources.is_empty() {
                return Err(err("caller.sources", "must list at least one source"));
            }
            sources
                .into_iter()
                .enumerate()
                .map(|(i, s)| one(&format!("caller.sources[{i}]"), s.header, s.property))
                .collect()
        }
        Some(RawCaller {
            sources: None,
            header,
            property,
        }) => {
            // The single-source form: `caller.header` or `caller.property`.
            let source = one("caller", header, property)
                .map_err(|e| err(e.field, format!("{}; or give `sources`, a list", e.reason)))?;
            Ok(vec![source])
        }
        Some(_) => Err(err(
            "caller",
            "needs exactly one of `sources`, `header` or `property`",
        )),
    }
}

/// Reads one secret: an inline string, `{"value": "..."}`, or `{"env": "NAME"}` (the Wasm VM's
/// environment). Envoy gives a Wasm VM no file system, so there is no file source.
fn read_secret(
    field: &str,
    v: serde_json::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<u8>, ConfigError> {
    use serde_json::Value;
    match v {
        Value::String(s) => Ok(s.into_bytes()),
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            match (keys.as_slice(), map.get("env"), map.get("value")) {
                (["env"], Some(Value::String(name)), _) => {
                    if name.is_empty() {
                        return Err(err(format!("{field}.env"), "must name a variable"));
                    }
                    env(name).map(String::into_bytes).ok_or_else(|| {
                        err(
                            format!("{field}.env"),
                            format!("the environment variable `{name}` is not set in the Wasm VM (Envoy: `vm_config.environment_variables`; Istio: `vmConfig.env`)"),
                        )
                    })
                }
                (["value"], _, Some(Value::String(s))) => Ok(s.clone().into_bytes()),
                (["file"], _, _) => Err(err(
                    format!("{field}.file"),
                    "Envoy gives a Wasm VM no file system; pass the secret through the VM's environment and use `env`",
                )),
                _ => Err(err(
                    field,
                    "must be a string, {\"env\": \"NAME\"} or {\"value\": \"...\"}",
                )),
            }
        }
        _ => Err(err(
            field,
            "must be a string, {\"env\": \"NAME\"} or {\"value\": \"...\"}",
        )),
    }
}

fn check_secret(field: &str, secret: &[u8]) -> Result<(), ConfigError> {
    if PLACEHOLDER_SECRETS.iter().any(|p| p.as_bytes() == secret) {
        return Err(err(
            field,
            "is a placeholder shipped in the examples; generate a secret (e.g. `openssl rand -hex 32`)",
        ));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(err(
            field,
            format!(
                "is {} bytes; a secret needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
        ));
    }
    Ok(())
}

fn validate_secrets(
    one: Option<serde_json::Value>,
    list: Option<Vec<serde_json::Value>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secrets, ConfigError> {
    let secrets = match (one, list) {
        (Some(v), None) => {
            let s = read_secret("hmac_secret", v, env)?;
            check_secret("hmac_secret", &s)?;
            vec![s]
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(err(
                    "hmac_secrets",
                    "must list at least one secret (the first signs)",
                ));
            }
            let mut out: Vec<Vec<u8>> = Vec::with_capacity(list.len());
            for (i, v) in list.into_iter().enumerate() {
                let field = format!("hmac_secrets[{i}]");
                let s = read_secret(&field, v, env)?;
                check_secret(&field, &s)?;
                if out.contains(&s) {
                    return Err(err(field, "repeats an earlier secret"));
                }
                out.push(s);
            }
            out
        }
        (None, None) => {
            return Err(err(
                "hmac_secret",
                "is required: the secret that scopes record keys and signs records (at least 32 bytes; `{\"env\": \"NAME\"}` reads it from the VM's environment)",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(err(
                "hmac_secrets",
                "give either `hmac_secret` or `hmac_secrets`, not both",
            ))
        }
    };
    Ok(Secrets(secrets))
}

fn validate_replay_headers(raw: Option<RawReplayHeaders>) -> Result<ReplayHeaders, ConfigError> {
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

/// The default name of the in-band expiry header.
pub const DEFAULT_EXPIRES_HEADER: &str = "idempotency-expires";

fn validate_expires_header(raw: Option<serde_json::Value>) -> Result<Option<String>, ConfigError> {
    match raw {
        None => Ok(Some(DEFAULT_EXPIRES_HEADER.to_string())),
        Some(serde_json::Value::Null | serde_json::Value::Bool(false)) => Ok(None),
        Some(serde_json::Value::String(name)) => {
            let name = name.to_ascii_lowercase();
            if !is_token(&name) {
                return Err(err("expires_header", "must be an HTTP header name"));
            }
            if name == crate::stream::REPLAYED_HEADER {
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
