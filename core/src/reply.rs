//! A reply the filter makes itself, and the counter it counts under: replays of stored responses,
//! and problem details for conflicts, mismatches and keys whose outcome is unknown. Shared by the
//! streams ([`crate::stream`]) and the root context's waiters ([`crate::background::worker`]), below both.
//! A gRPC caller gets the filter's own answers as gRPC statuses ([`LocalReply::for_grpc`]).

use crate::config::{ReplayHeaders, REPLAYED_HEADER};
use crate::expiry;
use crate::found::Found;
use crate::grpc;
use crate::host::Headers;
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::record::{Outcome, Record};

/// A local reply and the counter it counts under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Trailers to send after the body (a replayed answer's own); Envoy lets a local reply carry
    /// them only over HTTP/2 or later, after a non-empty body (see [`crate::stream`]).
    pub trailers: Headers,
    pub metric: Metric,
    /// The filter's own answer this reply carries (none for a replay), kept to answer a gRPC
    /// caller in gRPC terms.
    refusal: Option<Refusal>,
}

/// A problem answer as the filter decided it, before it is worded for HTTP or gRPC.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    problem: Problem,
    detail: String,
    /// When the answer can change, in milliseconds (0: any moment).
    wait_ms: u64,
}

/// The least server pushback a gRPC caller is told to wait, as `Retry-After: 1` for HTTP.
const MIN_PUSHBACK_MS: u64 = 1000;

impl LocalReply {
    /// The filter's own answer `problem`; `wait_ms` says when it can change (0: any moment).
    pub fn problem(problem: Problem, detail: &str, wait_ms: u64, metric: Metric) -> Self {
        let (status, headers, body) = problem.response(detail, wait_ms.div_ceil(1000));
        LocalReply {
            status,
            headers,
            body,
            trailers: Headers::new(),
            metric,
            refusal: Some(Refusal {
                problem,
                detail: detail.to_string(),
                wait_ms,
            }),
        }
    }

    /// The same answer for a gRPC caller: Envoy sends a local reply to a gRPC request
    /// trailers-only, so a problem becomes status 200 with no body and headers carrying
    /// `grpc-status`, the percent-encoded `grpc-message` (title and detail) and, where a retry is
    /// safe, `grpc-retry-pushback-ms` ([`Problem::grpc`]). A replay is left as it is.
    pub fn for_grpc(self) -> Self {
        let Some(refusal) = &self.refusal else {
            return self;
        };
        let (status, headers, body) =
            grpc_refusal(refusal.problem, &refusal.detail, refusal.wait_ms);
        LocalReply {
            status,
            headers,
            body,
            ..self
        }
    }

    /// 409: the key is in flight. `wait_ms` says when the answer can change (0: any moment).
    pub fn conflict(wait_ms: u64) -> Self {
        LocalReply::problem(
            Problem::Conflict,
            "a request with this key is still being processed; retry later",
            wait_ms,
            Metric::Conflict,
        )
    }

    pub fn mismatch() -> Self {
        LocalReply::problem(
            Problem::Mismatch,
            "this key was used with a different request (method, path, query or body)",
            0,
            Metric::Mismatch,
        )
    }

    /// What a request gets from what its key holds, the one place that decides it for the
    /// streams and the root context's waiters alike: the record's answer, 409 while another
    /// request holds the key (`Retry-After: 1`: the answer can change any moment), 422 for
    /// another request's key. An abandoned claim answers as a stored unknown-outcome record whose
    /// hold (`unknown_hold_ms`, the route's) started when its lease ended. `None` when nothing
    /// answers it (the key is claimed or absent).
    pub fn for_found(
        found: Found,
        now_ms: u64,
        unknown_hold_ms: u64,
        policy: &ReplayHeaders,
        expires_header: Option<&str>,
    ) -> Option<Self> {
        match found {
            Found::Completed(record) => Some(LocalReply::from_record(
                record,
                now_ms,
                policy,
                expires_header,
            )),
            Found::InFlight { .. } => Some(LocalReply::conflict(0)),
            Found::Mismatch => Some(LocalReply::mismatch()),
            Found::Abandoned { lease_ended_ms_ago } => {
                let lease_ended_ms = now_ms.saturating_sub(lease_ended_ms_ago);
                let hold_until_ms = lease_ended_ms.saturating_add(unknown_hold_ms);
                Some(LocalReply::unknown_outcome(hold_until_ms, now_ms))
            }
            Found::Claimed { .. } | Found::Absent => None,
        }
    }

    /// What a retry gets from the record of its key's one attempt, at `now_ms`. Stored headers
    /// passed `policy` when kept; filtering again covers records kept before the policy changed.
    /// A replay says until when its key is honoured under `expires_header`, if set.
    pub fn from_record(
        record: Record,
        now_ms: u64,
        policy: &ReplayHeaders,
        expires_header: Option<&str>,
    ) -> Self {
        match record.outcome {
            Outcome::Replayable(response) => {
                let mut headers: Headers = response
                    .headers
                    .into_iter()
                    .filter(|(name, _)| policy.keeps(name))
                    .collect();
                if let Some(name) = expires_header {
                    expiry::set_header(&mut headers, name, record.expires_ms);
                }
                headers.push((REPLAYED_HEADER.to_string(), b"true".to_vec()));
                LocalReply {
                    status: response.status,
                    headers,
                    body: response.body,
                    trailers: response.trailers,
                    metric: Metric::Replayed,
                    refusal: None,
                }
            }
            Outcome::NotReplayable => LocalReply::problem(
                Problem::NotReplayable,
                "this request was executed, but its response was too large to keep; it will not be executed again",
                0,
                Metric::NotReplayable,
            ),
            Outcome::Unknown { hold_until_ms } => LocalReply::unknown_outcome(hold_until_ms, now_ms),
        }
    }

    /// What a key whose first attempt's outcome is unknown answers (a stored unknown-outcome
    /// record, or an abandoned claim): 409 until `hold_until_ms`, since the first attempt may
    /// still be running upstream, then the terminal "outcome unknown" problem.
    pub fn unknown_outcome(hold_until_ms: u64, now_ms: u64) -> Self {
        if now_ms < hold_until_ms {
            return LocalReply::conflict(hold_until_ms - now_ms);
        }
        LocalReply::problem(
            Problem::OutcomeUnknown,
            "the first request with this key was sent upstream and no complete answer came back; it may have executed, and it will not be executed again",
            0,
            Metric::UnknownOutcomeAnswered,
        )
    }
}

/// The filter's own answer `problem` to a gRPC caller ([`LocalReply::for_grpc`]): status, headers
/// and the (empty) body of a trailers-only reply. `wait_ms`: when the answer can change.
pub fn grpc_refusal(problem: Problem, detail: &str, wait_ms: u64) -> (u16, Headers, Vec<u8>) {
    let (code, pushback) = problem.grpc();
    let message = format!("{}: {}", problem.title(), detail);
    let pushback_ms = pushback.then(|| wait_ms.max(MIN_PUSHBACK_MS));
    (
        200,
        grpc::trailers_only(code, &message, pushback_ms),
        Vec::new(),
    )
}
