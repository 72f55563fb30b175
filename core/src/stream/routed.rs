//! Routed replays (README, "Routed replays"; the names and the ticket: `core/src/replay.rs`).
//!
//! The outer filter ([`Stream::route_replay`]): a retry whose record is replayable, on a gRPC call
//! or a rule with `replay: "routed"`, is not answered locally. The record is put into L1 (a record
//! from the key store is not there yet), the request's `content-type` becomes a non-gRPC one
//! (the original kept in a header), a ticket naming the record key is added, and filter state
//! set for the route to the replay listener; Envoy then chooses the route again. Its `:path`
//! becomes [`replay::PATH`], which no service serves: should a configuration lack the route to the
//! replay listener, the service gets a request for a path it does not have, never the call again.
//! (Envoy 1.40 gives a filter no way to read the route it will choose after `clear_route_cache`:
//! `xds.route_name` reads empty until the router asks for the route.)
//!
//! The replay listener's filter ([`Stream::serve_replay`], `replay_listener: true`): checks the
//! ticket, reads the record from L1 and answers with it. Its request is not gRPC, so Envoy keeps
//! the body of that local reply, and the stored trailers are added in its last body callback; a
//! trailers-only record is one header block. A record no longer in L1 is a retryable
//! `UNAVAILABLE` (503), never another answer.
//!
//! The outer filter sees that answer as an upstream response; it counts a replay only when the
//! answer carries `idempotent-replayed`, which only the listener's replay of a record sets (Envoy's
//! own 503, when the listener is down, runs the same callbacks).

use super::{Flow, Phase, Stream};
use crate::config::{Replay, RouteRule, REPLAYED_HEADER};
use crate::grpc;
use crate::host::Host;
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::record::{Outcome, Record};
use crate::replay;
use crate::reply::LocalReply;
use crate::reroute::to_listener;
use crate::scope::RecordKey;
use log::{debug, warn};

impl Stream {
    /// Whether a replay of `record` on `rule` goes through the replay listener.
    pub(super) fn routes_replay(&self, rule: &RouteRule, record: &Record) -> bool {
        matches!(record.outcome, Outcome::Replayable(_)) && self.replay_routed(rule)
    }

    /// Sends the request to the replay listener (the module's doc says how).
    pub(super) fn route_replay(
        &mut self,
        host: &dyn Host,
        key: &RecordKey,
        record: Record,
    ) -> Flow {
        if self.observe {
            self.count(host, Metric::Replayed);
            return self.forward_untouched();
        }
        if self.headers_forwarded {
            // The headers went upstream already (`Expect: 100-continue`): nothing can re-route.
            return self.replay_unrouted(
                host,
                key,
                record,
                "the request headers were sent already",
            );
        }
        if let Err(why) = to_listener(
            host,
            &self.worker.cache,
            self.worker.cfg.secrets.current(),
            key,
            &record,
        ) {
            return self.replay_unrouted(host, key, record, why);
        }
        debug!("key {}: replay routed to the replay listener", key.short());
        self.phase = Phase::Routed;
        Flow::Continue
    }

    /// Whether a replay on `rule` goes through the replay listener, whatever its record (a
    /// waiting duplicate's, a detached execution's answer, decided before the record is known).
    pub(super) fn replay_routed(&self, rule: &RouteRule) -> bool {
        self.worker.cfg.routed_replay && (self.grpc || rule.replay == Replay::Routed)
    }

    /// A replay that cannot be routed: a plain HTTP request gets the local reply, a gRPC call
    /// (which a local reply would give `UNKNOWN`) a retryable `UNAVAILABLE`.
    fn replay_unrouted(
        &mut self,
        host: &dyn Host,
        key: &RecordKey,
        record: Record,
        why: &str,
    ) -> Flow {
        warn!("key {}: replay not routed: {why}", key.short());
        if self.grpc {
            return self.answer(
                host,
                Problem::ReplayUnavailable,
                "the stored answer could not be sent to the replay listener; retry",
            );
        }
        let cfg = &self.worker.cfg;
        let reply = LocalReply::from_record(
            record,
            host.now_ms(),
            &cfg.replay_headers,
            cfg.expires_header.as_deref(),
        );
        self.reply(host, reply)
    }

    /// The outer filter's view of the routed replay's answer.
    pub(super) fn on_routed_answer(&mut self, host: &dyn Host) -> Flow {
        self.phase = super::Phase::Passthrough;
        let replayed = host
            .response_headers()
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(REPLAYED_HEADER));
        if replayed {
            self.count(host, Metric::Replayed);
        } else {
            warn!("a routed replay was answered by Envoy, not by the replay listener (is it up?)");
        }
        Flow::Continue
    }

    /// The answer to a request the root context routed (`crate::background::routed`): a detached
    /// execution's first answer (`first`), which loses the listener's `idempotent-replayed`, or a
    /// waiting duplicate's replay. The root context counted both when it sent them.
    pub(super) fn on_root_routed_answer(&mut self, host: &dyn Host, first: bool) -> Flow {
        self.phase = Phase::Passthrough;
        let headers = host.response_headers();
        let replayed = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(REPLAYED_HEADER));
        if !replayed {
            warn!("a routed answer was answered by Envoy, not by the replay listener (is it up?)");
        } else if first {
            host.remove_response_header(REPLAYED_HEADER);
        }
        Flow::Continue
    }

    /// The replay listener's filter: every request is a replay routed by the outer filter.
    pub(super) fn serve_replay(&mut self, host: &dyn Host) -> Flow {
        let worker = std::rc::Rc::clone(&self.worker);
        let cfg = &worker.cfg;
        let original = host
            .request_header(replay::CONTENT_TYPE_HEADER)
            .or_else(|| host.request_header("content-type"));
        self.grpc = original.as_deref().is_some_and(grpc::is_grpc);
        // A gRPC answer never has a length; Envoy adds one to its local replies.
        self.strip_content_length = self.grpc;
        let now = host.now_ms();
        let ticket = host.request_header(replay::TICKET_HEADER);
        let key = match replay::check(cfg.secrets.current(), ticket.as_deref(), now) {
            Ok(key) => key,
            Err(e) => {
                warn!("replay listener: request refused: {}", e.reason());
                return self.answer(host, Problem::ReplayRefused, e.reason());
            }
        };
        let Some(record) = worker.cache.completed(host, &key, now) else {
            warn!(
                "key {}: replay listener: no record in L1 (evicted); answered 503",
                key.short()
            );
            return self.answer(
                host,
                Problem::ReplayUnavailable,
                "the stored answer left this gateway's near cache before it could be replayed; retry",
            );
        };
        let reply = LocalReply::from_record(
            record,
            now,
            &cfg.replay_headers,
            cfg.expires_header.as_deref(),
        );
        // A record keeps `content-length` where the first answer had one; an answer without one
        // was framed by chunks (HTTP/1.1) or by its stream's end, and the replay is framed so too.
        let framed_by_length = reply
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
        self.strip_content_length |=
            !reply.trailers.is_empty() || (!framed_by_length && !reply.body.is_empty());
        debug!(
            "key {}: replay listener: answering {}",
            key.short(),
            reply.status
        );
        self.send_reply(host, reply)
    }
}
