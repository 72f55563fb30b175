//! The covered routes: how a rule matches a request (path and method) and its effective settings,
//! each rule's own values over the top-level defaults.

use super::checks::{check_range, is_token};
use super::policy::{FailureMode, Mode, Replay, UnknownOutcome, WhileInFlight};
use super::raw::{RawConfig, RawExecution, RawRule};
use super::{err, ConfigError};

/// Statuses that are never stored: the request did not really run.
pub const NEVER_STORED: [u16; 6] = [401, 403, 408, 409, 425, 429];

/// Who sends the first request of a key upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    /// Envoy's router, as for any request (retries, rewrites and later filters apply).
    Inline,
    /// The plugin itself, from its root context, so the answer is captured and stored even when
    /// the client is gone.
    Detached { cluster: String, timeout_ms: u64 },
}

/// How a rule matches the request path (query excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

impl PathMatch {
    pub(super) fn matches(&self, path: &str) -> bool {
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
    pub in_flight: WhileInFlight,
    pub max_wait_ms: u64,
    pub mode: Mode,
    /// The key is this top-level string field of a gRPC request message (by field number), not
    /// the key header (`core/src/grpc/wire.rs`).
    pub key_field: Option<u32>,
    /// How a retry gets the stored answer; a gRPC call is always routed when the Envoy has a
    /// replay listener (`routed_replay`), whatever this says.
    pub replay: Replay,
}

impl RouteRule {
    /// Whether an answer with this status is kept for replays: not one that says the request never
    /// really ran (`NEVER_STORED`), and not a 5xx unless the rule stores them.
    pub fn keeps_status(&self, status: u16) -> bool {
        (status < 500 || self.store_5xx) && status >= 100 && !NEVER_STORED.contains(&status)
    }
}

/// Long enough for the usual upstream work that outlives its caller to finish.
pub(super) const DEFAULT_UNKNOWN_HOLD_MS: u64 = 30_000;
pub(super) const MAX_HOLD_MS: u64 = 3_600_000;
pub(super) const DEFAULT_MAX_WAIT_MS: u64 = 10_000;
/// The key store holds a waiting claim for at most a minute.
pub(super) const MAX_WAIT_MS: u64 = 60_000;
pub(super) const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
pub(super) const MAX_UPSTREAM_TIMEOUT_MS: u64 = 600_000;
/// Protobuf's largest field number.
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// The routes with their effective settings: the top-level defaults (`methods`, `retention_s`,
/// ... taken from `raw`) under each rule's own values; without `routes`, one rule for every path.
pub(super) fn validate_routes(raw: &mut RawConfig) -> Result<Vec<RouteRule>, ConfigError> {
    let methods = validate_methods("methods", raw.methods.take())?
        .unwrap_or_else(|| vec!["POST".to_string(), "PATCH".to_string()]);
    let retention_s = raw.retention_s.unwrap_or(86_400);
    check_range("retention_s", retention_s, 1, 365 * 86_400)?;
    let store_5xx = raw.store_5xx.unwrap_or(false);
    let failure_mode = raw.failure_mode.unwrap_or(FailureMode::FailClosed);
    let unknown_outcome = raw.unknown_outcome.unwrap_or(UnknownOutcome::Lock);
    let unknown_hold_ms = raw.unknown_hold_ms.unwrap_or(DEFAULT_UNKNOWN_HOLD_MS);
    check_range("unknown_hold_ms", unknown_hold_ms, 0, MAX_HOLD_MS)?;
    let in_flight = raw.in_flight.unwrap_or(WhileInFlight::Conflict);
    let mode = raw.mode.unwrap_or(Mode::Enforce);
    let max_wait_ms = raw.max_wait_ms.unwrap_or(DEFAULT_MAX_WAIT_MS);
    check_range("max_wait_ms", max_wait_ms, 1, MAX_WAIT_MS)?;
    // The replay listener's filter may carry the outer filter's rules unchanged (it ignores them).
    let routed_replay = raw.routed_replay.unwrap_or(false) || raw.replay_listener.unwrap_or(false);
    let replay = check_replay("replay", raw.replay, Replay::Local, routed_replay)?;

    let raw_rules = raw.routes.take().unwrap_or_else(|| {
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
            key_field: None,
            replay: None,
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
        let key_field = match r.key_field {
            None => None,
            Some(n) => {
                check_range(&at("key_field"), n, 1, MAX_FIELD_NUMBER)?;
                u32::try_from(n).ok()
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
            key_field,
            replay: check_replay(&at("replay"), r.replay, replay, routed_replay)?,
        });
    }
    Ok(routes)
}

/// A rule's replay choice (`default` when it makes none); `"routed"` needs the replay listener.
fn check_replay(
    field: &str,
    replay: Option<Replay>,
    default: Replay,
    routed_replay: bool,
) -> Result<Replay, ConfigError> {
    match replay {
        Some(Replay::Routed) if !routed_replay => Err(err(
            field,
            "`\"routed\"` needs `routed_replay: true` (a replay listener and a route to it in the Envoy configuration)",
        )),
        Some(replay) => Ok(replay),
        None => Ok(default),
    }
}

pub(super) fn check_path(field: &str, p: String) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(err(field, "must start with `/`"));
    }
    Ok(p)
}

pub(super) fn validate_methods(
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
