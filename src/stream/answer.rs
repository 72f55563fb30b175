//! Every reply the filter makes itself: replays of stored responses, and problem details for
//! conflicts, mismatches, refused input and keys whose outcome is unknown.

use super::{Flow, Phase, Stream};
use crate::config::ReplayHeaders;
use crate::expiry;
use crate::host::{Headers, Host};
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::record::{Outcome, Record};
use crate::scope::RecordKey;
use log::debug;

/// The response header that marks a replay.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A local reply and the counter it counts under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub metric: Metric,
}

impl LocalReply {
    pub fn problem(problem: Problem, detail: &str, retry_after_s: u64, metric: Metric) -> Self {
        let (status, headers, body) = problem.response(detail, retry_after_s);
        LocalReply {
            status,
            headers,
            body,
            metric,
        }
    }

    /// 409: the key is in flight. `wait_ms` says when the answer can change (0: any moment).
    pub fn conflict(wait_ms: u64) -> Self {
        LocalReply::problem(
            Problem::Conflict,
            "a request with this key is still being processed; retry later",
            wait_ms.div_ceil(1000),
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
                    metric: Metric::Replayed,
                }
            }
            Outcome::NotReplayable => LocalReply::problem(
                Problem::NotReplayable,
                "this request was executed, but its response was too large to keep; it will not be executed again",
                0,
                Metric::NotReplayable,
            ),
            // The first attempt may still be running upstream: come back after the hold.
            Outcome::Unknown { hold_until_ms } if now_ms < hold_until_ms => {
                LocalReply::conflict(hold_until_ms - now_ms)
            }
            Outcome::Unknown { .. } => LocalReply::problem(
                Problem::OutcomeUnknown,
                "the first request with this key was sent upstream and no complete answer came back; it may have executed, and it will not be executed again",
                0,
                Metric::UnknownOutcomeAnswered,
            ),
        }
    }
}

impl Stream {
    /// Answers a retry from the record of the key's one attempt.
    pub(super) fn answer_from_record(
        &mut self,
        host: &dyn Host,
        key: &RecordKey,
        record: Record,
    ) -> Flow {
        let cfg = &self.worker.cfg;
        let reply = LocalReply::from_record(
            record,
            host.now_ms(),
            &cfg.replay_headers,
            cfg.expires_header.as_deref(),
        );
        debug!(
            "key {}: answered from its record: {}",
            key.short(),
            reply.status
        );
        self.reply(host, reply)
    }

    /// 409: the key is in flight. `wait_ms` says when the answer can change (0: any moment).
    pub(super) fn conflict(&mut self, host: &dyn Host, key: &RecordKey, wait_ms: u64) -> Flow {
        debug!("key {}: in flight: 409", key.short());
        self.reply(host, LocalReply::conflict(wait_ms))
    }

    pub(super) fn mismatch(&mut self, host: &dyn Host, key: &RecordKey) -> Flow {
        debug!("key {}: fingerprint mismatch: 422", key.short());
        self.reply(host, LocalReply::mismatch())
    }

    /// A problem answer; the caller counts it. In observe mode, the request goes on instead.
    pub(super) fn answer(&mut self, host: &dyn Host, problem: Problem, detail: &str) -> Flow {
        if self.observe {
            debug!("observe mode: would answer {}", problem.status());
            return self.forward_untouched(host);
        }
        let (status, headers, body) = problem.response(detail, 0);
        host.send_response(status, &headers, &body);
        self.phase = Phase::Answered;
        Flow::Pause
    }

    fn reply(&mut self, host: &dyn Host, reply: LocalReply) -> Flow {
        self.count(host, reply.metric);
        if self.observe {
            debug!("observe mode: would answer {}", reply.status);
            return self.forward_untouched(host);
        }
        host.send_response(reply.status, &reply.headers, &reply.body);
        self.phase = Phase::Answered;
        Flow::Pause
    }
}
