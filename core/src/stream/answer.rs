//! The replies a stream makes itself ([`LocalReply`]): from the record of a key, and for refused
//! input; how each is sent (or, in observe mode, only counted).

use super::{Flow, Phase, Stream};
use crate::config::RouteRule;
use crate::found::Found;
use crate::host::{Headers, Host};
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::reply::{self, LocalReply};
use crate::scope::RecordKey;
use log::{debug, warn};

impl Stream {
    /// Answers a request from what its key holds ([`LocalReply::for_found`]); a key that is
    /// claimed or absent answers nothing and the request goes on. `rule`: the request's route
    /// (an abandoned claim is held for its `unknown_hold_ms`).
    pub(super) fn answer_found(
        &mut self,
        host: &dyn Host,
        key: &RecordKey,
        found: Found,
        rule: &RouteRule,
    ) -> Flow {
        if let Found::Completed(record) = &found {
            if self.routes_replay(rule, record) {
                if let Found::Completed(record) = found {
                    return self.route_replay(host, key, record);
                }
            }
        }
        let cfg = &self.worker.cfg;
        let reply = LocalReply::for_found(
            found,
            host.now_ms(),
            rule.unknown_hold_ms,
            &cfg.replay_headers,
            cfg.expires_header.as_deref(),
        );
        let Some(reply) = reply else {
            return Flow::Continue;
        };
        debug!(
            "key {}: answered {} ({:?})",
            key.short(),
            reply.status,
            reply.metric
        );
        self.reply(host, reply)
    }

    /// A problem answer; the caller counts it. In observe mode, the request goes on instead.
    pub(super) fn answer(&mut self, host: &dyn Host, problem: Problem, detail: &str) -> Flow {
        if self.observe {
            debug!("observe mode: would answer {}", problem.status());
            return self.forward_untouched();
        }
        let (status, headers, body) = if self.grpc {
            reply::grpc_refusal(problem, detail, 0)
        } else {
            problem.response(detail, 0)
        };
        self.restore_content_type = grpc_content_type(self.grpc, &headers).map(Bodiless::alone);
        host.send_response(status, &headers, &body);
        self.phase = Phase::Answered;
        Flow::Pause
    }

    /// The worker's memory budget has no room for `bytes` more: the request is refused before
    /// anything runs (nothing is claimed yet, or the claim is released by the caller).
    pub(super) fn over_budget(&mut self, host: &dyn Host, what: &str, bytes: usize) -> Flow {
        self.count(host, Metric::OverBudget);
        let budget = &self.worker.budget;
        warn!(
            "memory budget: {what} needs {bytes} bytes, {} of {} held; refusing the request",
            budget.used(),
            budget.limit()
        );
        self.answer(
            host,
            Problem::MemoryBudget,
            "the gateway holds too many request bytes right now; the request did not run, retry later",
        )
    }

    pub(super) fn reply(&mut self, host: &dyn Host, reply: LocalReply) -> Flow {
        self.count(host, reply.metric);
        if self.observe {
            debug!("observe mode: would answer {}", reply.status);
            return self.forward_untouched();
        }
        self.send_reply(host, reply)
    }

    /// Sends `reply` (counted by the caller, if at all).
    pub(super) fn send_reply(&mut self, host: &dyn Host, reply: LocalReply) -> Flow {
        let reply = if self.grpc { reply.for_grpc() } else { reply };
        self.restore_content_type = if reply.body.is_empty() {
            Bodiless::of(&reply.headers, !self.grpc)
        } else {
            None
        };
        // Without a body the reply ends with its headers: nothing can follow them.
        if !reply.body.is_empty() {
            self.replay_trailers = reply.trailers;
        }
        host.send_response(reply.status, &reply.headers, &reply.body);
        self.phase = Phase::Answered;
        Flow::Pause
    }

    /// The headers callback of the filter's own reply: Envoy dropped the `content-type` of a reply
    /// without a body and leaves its `content-length: 0` to the HTTP/1 codec, which appends it
    /// after every other field. The `content-type` is set again, then the fields the reply had
    /// after it are moved after it (removed and set again, which appends them; a missing
    /// `content-length: 0` is set), so the fields come in the reply's order. A field with repeats
    /// stays where Envoy put it (setting it would keep only one value). A reply that must leave
    /// without a length (a gRPC answer, one with trailers, from the replay listener) loses it here.
    pub(super) fn fix_reply_headers(&mut self, host: &dyn Host) {
        let strip = std::mem::take(&mut self.strip_content_length);
        if strip {
            host.remove_response_header("content-length");
        }
        let Some(bodiless) = self.restore_content_type.take() else {
            return;
        };
        let current = host.response_headers();
        host.set_response_header("content-type", &bodiless.content_type);
        for (name, value) in &bodiless.after {
            let present = current
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .count();
            let length = name == "content-length";
            if present > 1 || (length && strip) || (present == 0 && !length) {
                continue;
            }
            host.remove_response_header(name);
            host.set_response_header(name, value);
        }
    }

    /// The headers callback of a body-less reply the root context sent (a detached answer, a
    /// waiting duplicate's replay; `crate::background::trailers`): fixed as the stream's own. A
    /// gRPC caller's answer is left as Envoy sends it (trailers-only).
    pub(super) fn fix_root_reply_headers(&mut self, host: &dyn Host) {
        let Some(headers) = self.worker.trailers.take_bodiless(host.stream_id()) else {
            return;
        };
        if !self.grpc {
            self.restore_content_type = Bodiless::of(&headers, true);
            self.fix_reply_headers(host);
        }
    }

    /// The last body callback of the filter's own reply: a replay's trailers go after its body.
    /// Over HTTP/1 the reply is framed by its length, so trailers cannot follow it.
    pub(super) fn add_replay_trailers(&mut self, host: &dyn Host) {
        let trailers = std::mem::take(&mut self.replay_trailers);
        if downstream_is_http1(host) {
            return;
        }
        for (name, value) in trailers {
            if !host.add_response_trailer(&name, &value) {
                warn!("a replay's trailer {name} was refused; the replay ends without it");
            }
        }
    }
}

/// Whether the client speaks HTTP/1 (Envoy's `request.protocol`, e.g. `HTTP/1.1`, `HTTP/2`).
fn downstream_is_http1(host: &dyn Host) -> bool {
    let path = ["request".to_string(), "protocol".to_string()];
    host.property(&path)
        .map_or(true, |protocol| protocol.starts_with(b"HTTP/1"))
}

/// What the headers callback restores of a reply without a body ([`Stream::fix_reply_headers`]).
#[derive(Debug)]
pub(super) struct Bodiless {
    content_type: Vec<u8>,
    /// The fields the reply had after its `content-type`, in order, each name once (a name the
    /// reply repeats there is left out); a `content-length` only when it is `0`.
    after: Headers,
}

impl Bodiless {
    fn alone(content_type: Vec<u8>) -> Bodiless {
        Bodiless {
            content_type,
            after: Vec::new(),
        }
    }

    /// The reply's `content-type`, if it has one, and (`keep_order`) the fields after it.
    fn of(headers: &[(String, Vec<u8>)], keep_order: bool) -> Option<Bodiless> {
        let at = headers
            .iter()
            .position(|(name, _)| name.eq_ignore_ascii_case("content-type"))?;
        let mut bodiless = Bodiless::alone(headers.get(at)?.1.clone());
        if !keep_order {
            return Some(bodiless);
        }
        let tail = headers.get(at + 1..).unwrap_or_default();
        for (name, value) in tail {
            let name = name.to_ascii_lowercase();
            let repeated = tail
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
                .count()
                > 1;
            let odd_length = name == "content-length" && value.as_slice() != b"0";
            if name != "content-type" && !repeated && !odd_length {
                bodiless.after.push((name, value.clone()));
            }
        }
        Some(bodiless)
    }
}

fn content_type(headers: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.clone())
}

/// A gRPC answer has no body, and Envoy drops `content-type` from a body-less local reply: the
/// reply's headers callback sets it again. A problem body keeps its own.
fn grpc_content_type(grpc: bool, headers: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    if grpc {
        content_type(headers)
    } else {
        None
    }
}
