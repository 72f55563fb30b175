//! The policies a route chooses among (the README's configuration table): plain enums, read by
//! the raw config and the rules, below both.

use serde::Deserialize;

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

/// What a duplicate gets while the first request of its key is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhileInFlight {
    /// 409 with `Retry-After` at once.
    Conflict,
    /// Wait (up to `max_wait_ms`) for the first request's record and replay it; 409 past that.
    Wait,
}

/// How a retry gets a stored answer (README, "Routed replays").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replay {
    /// A local reply from the filter: the fastest path, but Envoy sends a local reply to a gRPC
    /// call trailers-only, and the connection manager's `local_reply_config` rewrites it.
    Local,
    /// Routed through the replay listener of the same Envoy (`routed_replay`), which answers
    /// as an upstream does: body, trailers and all, untouched by `local_reply_config`.
    Routed,
}
