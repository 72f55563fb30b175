//! The per-request state machine: every decision the filter makes about one HTTP stream, driven
//! by Envoy's callbacks through the [`Host`] trait and never touching proxy-wasm itself.
//!
//! ```text
//! headers ─▶ ReadingBody ─▶ L1 lookup-or-claim ─▶ Claiming (key store) ─▶ Forwarded
//!      ─▶ Capturing (body streamed on and copied) ─▶ Writing (record or release) ─▶ end to client
//! ```
//! Each file is one part of the README's behaviour table: [`admission`] (which requests are
//! covered, the key, the caller, the fingerprint), [`claim`] (the two tiers), [`settle`] (what the
//! attempt's end means for the key: keep, release, or lock as "outcome unknown"), [`answer`]
//! (every reply the filter makes itself) and [`routed`] (a replay sent through the replay listener,
//! and the replay listener's own answers).

mod admission;
mod answer;
mod call;
mod capture;
mod claim;
mod key_field;
mod rotation;
pub(crate) mod routed;
mod settle;
mod verify;

#[cfg(test)]
mod tests;

use crate::background::deferred::Deferred;
use crate::background::worker::Worker;
use crate::budget::Held;
use crate::claim::Claim;
use crate::config::{HeadersMode, RouteRule};
use crate::fingerprint::Fingerprinter;
use crate::host::{Headers, Host};
use crate::keystore_client::{self, AckReply};
use crate::metrics::Metric;
use crate::outcome::UnknownCause;
use crate::scope::RecordKey;
use capture::Capture;
use log::warn;
use std::rc::Rc;

pub use crate::config::REPLAYED_HEADER;
pub use crate::reply::LocalReply;

/// What the adapter returns to Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// A covered request whose body is still being read.
struct Admitted {
    rule: RouteRule,
    key: RecordKey,
    fingerprinter: Fingerprinter,
    /// The request headers, kept only when the plugin sends the request itself (detached).
    detached_headers: Option<Vec<(String, Vec<u8>)>>,
    /// The record keys under the previous secrets (rotation), in their order.
    previous: Vec<RecordKey>,
    /// The body bytes Envoy has buffered so far (the size the body callback last reported).
    body_seen: usize,
    /// The rule reads the key from the request message: the record keys above are set once the
    /// body is read.
    key_from_body: Option<key_field::KeyFromBody>,
    /// The request asks for `100 Continue` before sending its body.
    expects_continue: bool,
}

enum Phase {
    /// Not covered, or nothing left to decide: every callback lets the stream through.
    Passthrough,
    /// A covered request; its body is being read and fingerprinted.
    ReadingBody(Box<Admitted>),
    /// The key store is asked whether the key under previous secret `index` holds a record.
    LookingUp {
        admitted: Box<Admitted>,
        callout: u32,
        index: usize,
    },
    /// The key store is asked to claim the key; the request waits.
    Claiming { claim: Claim, callout: u32 },
    /// Envoy answered locally while the claim was on its way: the request never ran. A claim the
    /// key store grants after all is released when its reply lands.
    ClaimAbandoned { claim: Claim, callout: u32 },
    /// The request went upstream; the claim is renewed until the response arrives.
    Forwarded(Claim),
    /// The upstream's response streams on to the client while its body is copied to be kept.
    Capturing {
        claim: Claim,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        capture: Capture,
        /// When the record is created: its expiry already left with the response headers.
        created_ms: u64,
        /// The verdict waits for the body: a `503`/`504` that would free the key, whose text may
        /// be Envoy's own, written by a proxy on the way (`settle::read_proxy_text`).
        read_text: bool,
    },
    /// A record or a release is on its way to the key store; the response waits for it. The
    /// write is kept so that the root context can retry it if this stream cannot.
    Writing { callout: u32, write: Deferred },
    /// A duplicate waiting (no key store) for the record of its key; the root context answers it.
    WaitingLocally,
    /// The plugin sends the request upstream itself; the root context answers the client.
    Detached,
    /// The filter answered locally; the local reply passes back through the response callbacks.
    Answered,
    /// A replay sent to the replay listener (`routed.rs`); its answer comes back as a response.
    Routed,
}

/// One HTTP stream.
pub struct Stream {
    worker: Rc<Worker>,
    phase: Phase,
    /// The request (headers, body) a detached execution sends upstream.
    detached_request: Option<(Headers, Vec<u8>)>,
    /// The detached request's bytes in the worker's memory budget; they go with it to the root
    /// context.
    held: Option<Held>,
    /// Envoy reported the end of the stream: no response is left to hold.
    ended: bool,
    /// The request's rule is in observe mode: count what enforce would do, forward everything.
    observe: bool,
    /// A local reply without a body: Envoy drops its `content-type`, which the reply's own
    /// headers callback sets again in place (an empty `201` replays as it was sent).
    restore_content_type: Option<answer::Bodiless>,
    /// A replay's stored trailers, added in its reply's last body callback (HTTP/2 and later:
    /// Envoy takes trailers on a local reply with a body there, and sends them after the DATA).
    replay_trailers: Headers,
    /// The request is gRPC (`content-type`): the filter's own answers are gRPC statuses.
    grpc: bool,
    /// The request headers went on before the decision (`stream` mode, `Expect: 100-continue`):
    /// the request can no longer be routed elsewhere.
    headers_forwarded: bool,
    /// The filter's own reply must leave without the `content-length` Envoy adds to local
    /// replies (a gRPC answer, or one with trailers, from the replay listener).
    strip_content_length: bool,
}

impl Stream {
    pub fn new(worker: Rc<Worker>) -> Stream {
        Stream {
            worker,
            phase: Phase::Passthrough,
            detached_request: None,
            held: None,
            ended: false,
            observe: false,
            restore_content_type: None,
            replay_trailers: Vec::new(),
            grpc: false,
            headers_forwarded: false,
            strip_content_length: false,
        }
    }

    pub fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        if self.worker.cfg.replay_listener {
            return self.serve_replay(host);
        }
        let Some(admitted) = self.admit(host) else {
            return self.flow_after_admission();
        };
        if end_of_stream {
            let mut admitted = admitted;
            if let Some(pending) = admitted.key_from_body.take() {
                // No body: no message to read the key from.
                if let Err(flow) = self.key_from_body(host, &mut admitted, &pending, &[]) {
                    return flow;
                }
            }
            if let Some(headers) = admitted.detached_headers.take() {
                let bytes = crate::settlement::header_bytes(&headers);
                match self.worker.budget.take(bytes) {
                    Ok(held) => self.held = Some(held),
                    Err(_) => return self.over_budget(host, "a detached request", bytes),
                }
                self.detached_request = Some((headers, Vec::new()));
            }
            return self.look_up_previous(host, admitted);
        }
        let inline = admitted.detached_headers.is_none();
        let expects_continue = admitted.expects_continue;
        self.phase = Phase::ReadingBody(Box::new(admitted));
        let flow = match self.worker.cfg.headers_mode {
            // `Expect: 100-continue` reaches a filter only when the connection manager proxies it
            // (`proxy_100_continue: true`; otherwise Envoy answers `100` and removes it). Such a
            // client sends its body after the upstream's `100`, so holding its headers would stall
            // it: on an inline rule they go ahead as in `stream` mode (docs/fidelity.md).
            HeadersMode::Hold if inline && expects_continue => Flow::Continue,
            HeadersMode::Hold => Flow::Pause,
            // The body callbacks hold the request instead; the upstream sees no end of stream yet.
            HeadersMode::Stream => Flow::Continue,
        };
        self.headers_forwarded = flow == Flow::Continue;
        flow
    }

    pub fn on_request_body(
        &mut self,
        host: &dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if let Phase::ReadingBody(admitted) = &mut self.phase {
            admitted.body_seen = body_size;
        }
        match &self.phase {
            Phase::ReadingBody(_) if body_size > self.worker.cfg.max_body_bytes => {
                self.body_too_large(host)
            }
            Phase::ReadingBody(_) if end_of_stream => self.finish_body(host),
            Phase::ReadingBody(_)
            | Phase::Claiming { .. }
            | Phase::WaitingLocally
            | Phase::Detached
            | Phase::Answered => Flow::Pause,
            _ => Flow::Continue,
        }
    }

    /// HTTP/2 requests with trailers never report end of stream in the body callback.
    pub fn on_request_trailers(&mut self, host: &dyn Host) -> Flow {
        match &mut self.phase {
            Phase::ReadingBody(admitted) => {
                // Envoy's async client, which carries a detached request, sends no request
                // trailers (measured on Envoy 1.40: none reach the upstream, with a body or
                // without): a detached rule runs such a request inline, through the router,
                // which forwards them (docs/fidelity.md).
                if admitted.detached_headers.take().is_some() {
                    log::info!("request trailers on a detached rule; executing inline");
                    admitted.rule.execution = crate::config::Execution::Inline;
                }
                self.finish_body(host)
            }
            Phase::Claiming { .. } | Phase::WaitingLocally | Phase::Detached | Phase::Answered => {
                Flow::Pause
            }
            _ => Flow::Continue,
        }
    }

    pub fn on_callout_response(
        &mut self,
        host: &dyn Host,
        token: u32,
        status: Option<u16>,
        body: &[u8],
    ) {
        self.call_landed(host, token);
        // The one place a paused request resumes: the reply of the callout it is paused on
        // decided that it goes on.
        let flow = match std::mem::replace(&mut self.phase, Phase::Passthrough) {
            Phase::Claiming { claim, callout } if callout == token => {
                self.on_claim_reply(host, claim, status, body)
            }
            Phase::ClaimAbandoned { claim, callout } if callout == token => {
                // The request is not paused: Envoy answered it already.
                self.release_abandoned_claim(host, claim, status, body);
                Flow::Pause
            }
            Phase::LookingUp {
                admitted,
                callout,
                index,
            } if callout == token => self.on_lookup_reply(host, *admitted, index, status, body),
            Phase::Writing { callout, write } if callout == token => {
                match keystore_client::parse_ack(status, body) {
                    Ok(AckReply::Done) => {}
                    Ok(AckReply::Stale) => {
                        warn!("key-store write refused: the claim was taken over")
                    }
                    Err(e) => {
                        self.count(host, Metric::StoreError);
                        warn!("key-store write failed ({e}); retrying in the background");
                        self.worker.defer(write);
                    }
                }
                // The response, not the request, waited for this write.
                host.resume_response();
                Flow::Pause
            }
            other => {
                self.phase = other;
                Flow::Pause
            }
        };
        if flow == Flow::Continue {
            host.resume_request();
        }
    }

    pub fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        if matches!(self.phase, Phase::Detached | Phase::WaitingLocally) {
            if let Some(first) = self.worker.routed.take(host.stream_id()) {
                return self.on_root_routed_answer(host, first);
            }
            self.fix_root_reply_headers(host);
        }
        match std::mem::replace(&mut self.phase, Phase::Passthrough) {
            Phase::Forwarded(claim) => self.on_upstream_response(host, claim, end_of_stream),
            Phase::Claiming { claim, callout } => {
                // A local reply (a request timeout, a filter's refusal) came first: the request
                // never reached the upstream.
                self.release_l1(host, &claim);
                self.phase = Phase::ClaimAbandoned { claim, callout };
                Flow::Continue
            }
            // A local reply came while looking under a previous secret: nothing was claimed.
            Phase::LookingUp { .. } => Flow::Continue,
            Phase::Routed => self.on_routed_answer(host),
            other => {
                if matches!(other, Phase::Answered) {
                    self.fix_reply_headers(host);
                }
                self.phase = other;
                self.hold_response()
            }
        }
    }

    /// While a write about this response is pending, everything waits for it.
    fn hold_response(&self) -> Flow {
        match self.phase {
            Phase::Writing { .. } => Flow::Pause,
            _ => Flow::Continue,
        }
    }

    /// The stream ends: completed, reset, or the client went away. Callouts this stream started
    /// are not cancelled (the adapter sends them from the root context), but their replies are
    /// lost with the stream, so whatever must still happen is handed to the root context.
    pub fn on_done(&mut self, host: &dyn Host) {
        self.ended = true;
        self.worker.trailers.take(host.stream_id());
        self.worker.trailers.take_bodiless(host.stream_id());
        self.worker.routed.take(host.stream_id());
        // What must still happen is handed over below, as without batches.
        self.forget_calls(host);
        match std::mem::replace(&mut self.phase, Phase::Passthrough) {
            Phase::Claiming { claim, .. } => {
                // Never forwarded. The claim may still land in the key store: release it once
                // the claim callout has surely landed or timed out.
                self.release_l1(host, &claim);
                let after_ms = self
                    .worker
                    .cfg
                    .keystore
                    .as_ref()
                    .map_or(0, |k| k.timeout_ms);
                self.release_later(host, &claim, after_ms);
            }
            Phase::Forwarded(claim) => {
                self.unknown_outcome(host, claim, UnknownCause::StreamEnded);
            }
            Phase::Capturing { claim, .. } => {
                self.unknown_outcome(host, claim, UnknownCause::BodyCut);
            }
            Phase::Writing { write, .. } => {
                // The write may have landed; sending it again is harmless (a repeat is refused as
                // stale, which settles it).
                self.worker.defer(write);
            }
            Phase::WaitingLocally => self.worker.waiters.borrow_mut().remove(host.stream_id()),
            // The root context owns a detached execution: it stores the answer whether or not
            // the client is still there.
            _ => {}
        }
    }

    /// Counts under the rule's mode: `idempotency.*`, or `idempotency.observe.*`.
    fn count(&self, host: &dyn Host, metric: Metric) {
        if self.observe {
            host.count_observed(metric);
        } else {
            host.count(metric);
        }
    }

    /// Observe mode: instead of answering locally, the request goes on as if the filter were not
    /// there (without a claim: its response passes through untouched).
    fn forward_untouched(&mut self) -> Flow {
        self.phase = Phase::Passthrough;
        Flow::Continue
    }
}
