//! The replies a stream makes itself ([`LocalReply`]): from the record of a key, and for refused
//! input; how each is sent (or, in observe mode, only counted).

use super::{Flow, Phase, Stream};
use crate::host::Host;
use crate::problem::Problem;
use crate::record::Record;
use crate::reply::LocalReply;
use crate::scope::RecordKey;
use log::debug;

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
