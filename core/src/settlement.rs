//! The settlement rule: what the end of one attempt means for its key (the README's behaviour
//! table, rows "the upstream answered", "Envoy answered, never sent", "outcome unknown").
//!
//! It is pure: from the route's rule, how the attempt ended and the clock it decides whether the
//! key keeps a record, is released, or is locked as "outcome unknown", what is stored, the hold,
//! the expiry the first answer announces and the counters. Inline streams
//! ([`crate::stream`]) and detached executions ([`crate::background::detached`]) only carry out its answer, so
//! a change to one row is made here once and one test table covers both.

use crate::config::{RouteRule, UnknownOutcome};
use crate::fingerprint::Fingerprint;
use crate::host::Headers;
use crate::metrics::Metric;
use crate::record::{Outcome, Record, StoredResponse};

/// How an attempt ended, as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The upstream answered with this status.
    Answered(u16),
    /// Envoy answered and no upstream saw the request (connection refused, no healthy host).
    NotExecuted,
    /// The request reached, or may have reached, the upstream and no complete answer came back
    /// (client gone, route timeout, reset, body cut).
    Unknown,
}

/// What happens to the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream's answer is kept as the record, created at `created_ms`; its first answer
    /// announces `expires_ms`. What is stored depends on its size ([`captured`]).
    Keep { created_ms: u64, expires_ms: u64 },
    /// The key is locked as "outcome unknown" with this record: it never executes again.
    Lock(Record),
    /// The request did not really run (or the `release` policy frees an unknown outcome): the key
    /// is free again so a retry executes.
    Release,
}

/// The rule's answer for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub verdict: Verdict,
    /// The counters it adds one to, in order.
    pub counts: Vec<Metric>,
}

/// What the end of an attempt means for its key.
pub fn settle(
    rule: &RouteRule,
    fingerprint: Fingerprint,
    ending: Ending,
    now_ms: u64,
) -> Settlement {
    let release = |mut counts: Vec<Metric>| {
        counts.push(Metric::Released);
        Settlement {
            verdict: Verdict::Release,
            counts,
        }
    };
    match ending {
        Ending::Answered(status) if rule.keeps_status(status) => Settlement {
            verdict: Verdict::Keep {
                created_ms: now_ms,
                expires_ms: expires_ms(rule, now_ms),
            },
            counts: Vec::new(),
        },
        Ending::Answered(_) | Ending::NotExecuted => release(Vec::new()),
        Ending::Unknown => match rule.unknown_outcome {
            UnknownOutcome::Lock => {
                let hold_until_ms = now_ms.saturating_add(rule.unknown_hold_ms);
                let outcome = Outcome::Unknown { hold_until_ms };
                Settlement {
                    verdict: Verdict::Lock(record(rule, fingerprint, outcome, now_ms)),
                    counts: vec![Metric::UnknownOutcome],
                }
            }
            UnknownOutcome::Release => release(vec![Metric::UnknownOutcome]),
        },
    }
}

/// Whether an answer of these (storable) headers and `body_len` bytes of body (and trailers) is
/// small enough to be kept whole.
pub fn fits(headers: &Headers, body_len: usize, max_response_bytes: usize) -> bool {
    body_len.saturating_add(header_bytes(headers)) <= max_response_bytes
}

/// What header fields (or trailers) take: names and values.
pub fn header_bytes(headers: &[(String, Vec<u8>)]) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.len().saturating_add(v.len()))
        .fold(0, usize::saturating_add)
}

/// What is stored of a kept answer: the response with its body and trailers, or, when they were
/// too large to keep (`None`), that it is not replayable (counted). An answer of headers only
/// that carries a `grpc-status` is gRPC's trailers-only form (an error), replayed as such.
pub fn captured(
    status: u16,
    headers: Headers,
    kept: Option<(Vec<u8>, Headers)>,
) -> (Outcome, Option<Metric>) {
    match kept {
        Some((body, trailers)) => {
            let trailers_only = body.is_empty()
                && trailers.is_empty()
                && headers
                    .iter()
                    .any(|(name, _)| name.eq_ignore_ascii_case("grpc-status"));
            (
                Outcome::Replayable(StoredResponse {
                    status,
                    headers,
                    body,
                    trailers,
                    trailers_only,
                }),
                None,
            )
        }
        None => (Outcome::NotReplayable, Some(Metric::NotReplayable)),
    }
}

/// The record of an attempt created at `created_ms` under `rule`.
pub fn record(
    rule: &RouteRule,
    fingerprint: Fingerprint,
    outcome: Outcome,
    created_ms: u64,
) -> Record {
    Record {
        fingerprint,
        created_ms,
        expires_ms: expires_ms(rule, created_ms),
        outcome,
    }
}

/// Until when a record created at `created_ms` under `rule` is honoured.
pub fn expires_ms(rule: &RouteRule, created_ms: u64) -> u64 {
    created_ms.saturating_add(rule.retention_ms)
}

#[cfg(test)]
mod tests;
