//! Every reply the filter makes itself: replays of stored responses, and problem details for
//! conflicts, mismatches, refused input and keys whose outcome is unknown.

use super::{Flow, Phase, Stream};
use crate::host::Host;
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::record::{Outcome, Record};
use crate::scope::RecordKey;
use log::debug;

/// The response header that marks a replay.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

impl Stream {
    /// Answers a retry from the record of the key's one attempt.
    pub(super) fn answer_from_record(
        &mut self,
        host: &dyn Host,
        key: &RecordKey,
        record: Record,
    ) -> Flow {
        match record.outcome {
            Outcome::Replayable(response) => {
                host.count(Metric::Replayed);
                debug!("key {}: replaying the stored response", key.short());
                // Stored headers passed the policy when kept; filtering again covers records
                // kept before the policy changed.
                let policy = &self.worker.cfg.replay_headers;
                let mut headers: Vec<(String, Vec<u8>)> = response
                    .headers
                    .into_iter()
                    .filter(|(name, _)| policy.keeps(name))
                    .collect();
                headers.push((REPLAYED_HEADER.to_string(), b"true".to_vec()));
                host.send_response(response.status, &headers, &response.body);
                self.phase = Phase::Answered;
                Flow::Pause
            }
            Outcome::NotReplayable => {
                host.count(Metric::NotReplayable);
                self.answer(
                    host,
                    Problem::NotReplayable,
                    "this request was executed, but its response was too large to keep; it will not be executed again",
                )
            }
            Outcome::Unknown { hold_until_ms } => {
                let now = host.now_ms();
                if now < hold_until_ms {
                    // The first attempt may still be running upstream: come back after the hold.
                    return self.conflict(host, key, hold_until_ms - now);
                }
                host.count(Metric::UnknownOutcomeAnswered);
                self.answer(
                    host,
                    Problem::OutcomeUnknown,
                    "the first request with this key was sent upstream and no complete answer came back; it may have executed, and it will not be executed again",
                )
            }
        }
    }

    /// 409: the key is in flight. `wait_ms` says when the answer can change (0: any moment).
    pub(super) fn conflict(&mut self, host: &dyn Host, key: &RecordKey, wait_ms: u64) -> Flow {
        host.count(Metric::Conflict);
        debug!("key {}: in flight: 409", key.short());
        let (status, headers, body) = Problem::Conflict.response(
            "a request with this key is still being processed; retry later",
            wait_ms.div_ceil(1000),
        );
        host.send_response(status, &headers, &body);
        self.phase = Phase::Answered;
        Flow::Pause
    }

    pub(super) fn mismatch(&mut self, host: &dyn Host, key: &RecordKey) -> Flow {
        host.count(Metric::Mismatch);
        debug!("key {}: fingerprint mismatch: 422", key.short());
        self.answer(
            host,
            Problem::Mismatch,
            "this key was used with a different request (method, path, query or body)",
        )
    }

    pub(super) fn answer(&mut self, host: &dyn Host, problem: Problem, detail: &str) -> Flow {
        let (status, headers, body) = problem.response(detail, 0);
        host.send_response(status, &headers, &body);
        self.phase = Phase::Answered;
        Flow::Pause
    }
}
