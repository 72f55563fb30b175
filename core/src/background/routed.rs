//! Answers the root context sends through the replay listener (README, "Routed replays"): a
//! detached request's first answer and a waiting duplicate's replay. A local reply to a gRPC call
//! reaches the client trailers-only (`UNKNOWN`, the message in `grpc-message`), so with
//! `routed_replay` on, such an answer whose record is replayable is sent the way a retry's replay
//! is: the record in L1, the waiting request re-routed to the replay listener and resumed
//! (`crate::reroute::to_listener`). Its answer then comes back through the stream's response
//! callbacks as an upstream's; `crate::reroute::RoutedStreams` tells the stream that it was
//! routed, and whether the answer is a first answer (which must not say `idempotent-replayed`).
//!
//! The decision (which answers go this way) is made where the answer is built
//! (`super::detached::settle`, `super::worker`); this file carries it out for the adapter.

use crate::background::actions::Answer;
use crate::background::worker::Worker;
use crate::host::Host;
use crate::problem::Problem;
use crate::reply::grpc_refusal;
use crate::reroute::{to_listener, RouteTo};
use log::{debug, warn};

impl Worker {
    /// Carries out `answer` on its stream (`host` is that stream, the root context having made it
    /// the effective context): routes it when it says so and the request can be re-routed, and
    /// returns what is left to send as a local reply (`None`: routed, the request resumed).
    pub fn route_or_answer(&self, host: &dyn Host, mut answer: Answer) -> Option<Answer> {
        let Some(route) = answer.route.take() else {
            return Some(answer);
        };
        let RouteTo {
            key,
            record,
            first,
            grpc,
        } = *route;
        match to_listener(host, &self.cache, self.cfg.secrets.current(), &key, &record) {
            Ok(()) => {
                debug!(
                    "key {}: the root context's answer routed to the replay listener",
                    key.short()
                );
                self.routed.mark(answer.stream_id, first);
                host.resume_request();
                None
            }
            Err(why) => {
                warn!("key {}: answer not routed: {why}", key.short());
                if grpc {
                    let (status, headers, body) = grpc_refusal(
                        Problem::ReplayUnavailable,
                        "the stored answer could not be sent to the replay listener; retry",
                        0,
                    );
                    answer.status = status;
                    answer.headers = headers;
                    answer.body = body;
                    answer.trailers = Vec::new();
                }
                Some(answer)
            }
        }
    }
}
