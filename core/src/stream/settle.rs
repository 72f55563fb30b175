//! What the end of an attempt means for its key:
//! - the upstream answered: the response is kept (L1, then the key store) before the client gets
//!   its end, or, for a 5xx or a status that says the request never ran, the key is released;
//! - Envoy answered and no upstream saw the request (connection refused, no healthy host): the
//!   key is released;
//! - a `503`/`504` that would release the key is read whole first: a proxy on the way (a sidecar)
//!   that writes Envoy's reset or timeout text saw the service reset or time out after the
//!   request was written, which is an unknown outcome (`read_proxy_text`);
//! - the outcome is unknown (client gone, route timeout, reset, body cut): by default the key is
//!   locked as "outcome unknown" and never executes again; the `release` policy frees it instead.

use super::{Capture, Claim, Flow, Phase, Stream};
use crate::background::deferred::{retry_until, Deferred};
use crate::expiry;
use crate::grpc;
use crate::host::{Headers, Host};
use crate::keystore_client::{self, StoreCall};
use crate::metrics::Metric;
use crate::outcome::{callout, classify, decode_flags, ResponseClass, UnknownCause};
use crate::record::{storable_headers, Record};
use crate::settlement::{self, Ending, Settlement, Verdict};
use log::{info, warn};

fn status_of(headers: &[(String, Vec<u8>)]) -> u16 {
    headers
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0)
}

impl Stream {
    pub(super) fn on_upstream_response(
        &mut self,
        host: &dyn Host,
        claim: Claim,
        end_of_stream: bool,
    ) -> Flow {
        let flags_path = ["response".to_string(), "flags".to_string()];
        let class = classify(decode_flags(host.property(&flags_path).as_deref()));
        let headers = host.response_headers();
        let status = status_of(&headers);
        let ending = match class {
            ResponseClass::Unknown(cause) => return self.unknown_outcome(host, claim, cause),
            ResponseClass::NotExecuted => {
                info!(
                    "key {}: Envoy answered {status} before any upstream saw the request",
                    claim.key.short()
                );
                Ending::NotExecuted
            }
            // A trailers-only gRPC answer says its outcome now (`crate::grpc::settling`).
            ResponseClass::FromUpstream if end_of_stream => Ending::Answered(
                grpc::settling::settling_status(status, &headers, &Vec::new()),
            ),
            ResponseClass::FromUpstream => Ending::Answered(status),
        };
        if ending == Ending::Answered(status)
            && !end_of_stream
            && callout::may_be_envoy_text(status)
            && !claim.rule.keeps_status(status)
        {
            // Freeing the key waits for the body: a proxy on the way may have written it.
            self.phase = Phase::Capturing {
                claim,
                status,
                capture: Capture::new(&headers),
                headers,
                created_ms: 0,
                read_text: true,
            };
            return Flow::Continue;
        }
        let Settlement { verdict, counts } =
            settlement::settle(&claim.rule, claim.fingerprint, ending, host.now_ms());
        for metric in counts {
            self.count(host, metric);
        }
        let (created_ms, expires_ms) = match verdict {
            Verdict::Keep {
                created_ms,
                expires_ms,
            } => (created_ms, expires_ms),
            Verdict::Lock(record) => return self.keep(host, claim, record),
            Verdict::Release => {
                info!(
                    "key {}: upstream answered {status}; releasing the claim",
                    claim.key.short()
                );
                return self.release(host, claim);
            }
        };
        let capture = Capture::new(&headers);
        let headers = storable_headers(headers, &self.worker.cfg.replay_headers);
        // The record is created as of now: the first answer's headers leave before its body is
        // kept, and they already carry its expiry.
        self.announce_expiry(host, expires_ms);
        if end_of_stream {
            // Headers alone (a gRPC trailers-only answer among them): nothing else to keep.
            let kept = Some((Vec::new(), Vec::new()));
            return self.finish_kept(host, claim, status, headers, created_ms, kept);
        }
        self.phase = Phase::Capturing {
            claim,
            status,
            headers,
            capture,
            created_ms,
            read_text: false,
        };
        Flow::Continue
    }

    /// The first answer of a key that is kept says until when the key is honoured. Observe mode
    /// changes no answer, so it adds nothing.
    fn announce_expiry(&self, host: &dyn Host, expires_ms: u64) {
        if self.observe {
            return;
        }
        if let Some(name) = &self.worker.cfg.expires_header {
            host.set_response_header(name, expiry::http_date(expires_ms).as_bytes());
        }
    }

    /// The whole response has passed: its record (with the copied body and its `trailers`, or
    /// "not replayable" if the copy stopped) is stored before the client gets the end.
    pub(super) fn finish_capture(&mut self, host: &dyn Host, trailers: Headers) -> Flow {
        let Phase::Capturing {
            claim,
            status,
            headers,
            mut capture,
            created_ms,
            read_text,
        } = std::mem::replace(&mut self.phase, Phase::Passthrough)
        else {
            return Flow::Continue;
        };
        if read_text {
            // A body past `max_response_bytes` is no proxy's text: the service's own answer.
            let body = capture.take().unwrap_or_default();
            return self.read_proxy_text(host, claim, status, &headers, &body);
        }
        // A gRPC answer says its outcome in its trailers (`crate::grpc::settling`): one the rule
        // would not keep (`UNAVAILABLE` as a `503`) frees the key, as that HTTP status would.
        let settling = grpc::settling::settling_status(status, &headers, &trailers);
        if settling != status && !claim.rule.keeps_status(settling) {
            let ending = Ending::Answered(settling);
            let Settlement { counts, .. } =
                settlement::settle(&claim.rule, claim.fingerprint, ending, host.now_ms());
            for metric in counts {
                self.count(host, metric);
            }
            info!(
                "key {}: the gRPC answer's status settles as {settling}; releasing the claim",
                claim.key.short()
            );
            return self.release(host, claim);
        }
        let kept = capture.take().map(|body| (body, trailers));
        self.finish_kept(host, claim, status, headers, created_ms, kept)
    }

    /// A `503`/`504` the rule would not keep, read whole: Envoy's reset or timeout text says a
    /// proxy on the way (a sidecar in front of the service) answered, and what it saw, read by
    /// the one function that reads a detached callout's answer ([`callout::ending`]). Without
    /// it, a sidecar's "reset before headers" after the service read the request would free the
    /// key and let a retry execute a second time; so a reset or timeout past the sidecar is an
    /// unknown outcome, a connection it never opened is "never sent", anything else the
    /// service's own answer.
    fn read_proxy_text(
        &mut self,
        host: &dyn Host,
        claim: Claim,
        status: u16,
        headers: &Headers,
        body: &[u8],
    ) -> Flow {
        let ending = match callout::ending(Some(status), headers, body) {
            callout::Ending::Reset | callout::Ending::TimedOut => {
                let cause = UnknownCause::ProxyAnswered { status };
                return self.unknown_outcome(host, claim, cause);
            }
            callout::Ending::NotSent => Ending::NotExecuted,
            callout::Ending::Answered(_) => Ending::Answered(status),
        };
        let Settlement { verdict, counts } =
            settlement::settle(&claim.rule, claim.fingerprint, ending, host.now_ms());
        for metric in counts {
            self.count(host, metric);
        }
        match verdict {
            Verdict::Lock(record) => self.keep(host, claim, record),
            // Read only for a status the rule does not keep, and "never sent" is never kept.
            Verdict::Release | Verdict::Keep { .. } => {
                info!(
                    "key {}: upstream answered {status}; releasing the claim",
                    claim.key.short()
                );
                self.release(host, claim)
            }
        }
    }

    /// Stores what the settlement rule keeps of a whole answer.
    fn finish_kept(
        &mut self,
        host: &dyn Host,
        claim: Claim,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        created_ms: u64,
        kept: Option<(Vec<u8>, Headers)>,
    ) -> Flow {
        let (outcome, metric) = settlement::captured(status, headers, kept);
        if let Some(metric) = metric {
            self.count(host, metric);
            info!(
                "key {}: response too large to keep; stored as not replayable",
                claim.key.short()
            );
        }
        let record = settlement::record(&claim.rule, claim.fingerprint, outcome, created_ms);
        self.keep(host, claim, record)
    }

    /// The attempt may have executed and no complete answer came back.
    pub(super) fn unknown_outcome(
        &mut self,
        host: &dyn Host,
        claim: Claim,
        cause: UnknownCause,
    ) -> Flow {
        let Settlement { verdict, counts } = settlement::settle(
            &claim.rule,
            claim.fingerprint,
            Ending::Unknown,
            host.now_ms(),
        );
        for metric in counts {
            self.count(host, metric);
        }
        match verdict {
            Verdict::Lock(record) => {
                warn!(
                    "key {}: outcome unknown ({cause:?}); locked, it will not execute again",
                    claim.key.short()
                );
                self.keep(host, claim, record)
            }
            Verdict::Release | Verdict::Keep { .. } => {
                warn!(
                    "key {}: outcome unknown ({cause:?}); released (policy `release`)",
                    claim.key.short()
                );
                self.release(host, claim)
            }
        }
    }

    /// Stores the record in L1, then in the key store, before the client gets the end of the
    /// response. A stream that is already over hands the key-store write to the root context.
    fn keep(&mut self, host: &dyn Host, claim: Claim, record: Record) -> Flow {
        self.drop_lease(&claim);
        let now = host.now_ms();
        if claim.l1 {
            self.worker
                .l1_keep(host, &claim.key, claim.owner, &record, now);
        }
        let (Some(ks), Some(token)) = (&self.worker.cfg.keystore, &claim.token) else {
            return Flow::Continue;
        };
        let call =
            keystore_client::complete_call(ks, &claim.key, token, &record, claim.rule.retention_ms);
        self.write(host, &claim, call)
    }

    /// The request did not really run (5xx, 429, never sent, ...): free the key so a retry
    /// executes again.
    /// The settlement rule counted it already.
    pub(super) fn release(&mut self, host: &dyn Host, claim: Claim) -> Flow {
        self.drop_lease(&claim);
        self.release_l1(host, &claim);
        let (Some(_), Some(token)) = (&self.worker.cfg.keystore, &claim.token) else {
            return Flow::Continue;
        };
        let call = keystore_client::release_call(&claim.key, token);
        self.write(host, &claim, call)
    }

    /// A release of the key-store claim (granted or maybe granted) for the root context to send:
    /// this stream has no response to hold for it. `after_ms`: wait that long first.
    pub(super) fn release_later(&self, host: &dyn Host, claim: &Claim, after_ms: u64) {
        if let Some(ks) = &self.worker.cfg.keystore {
            let now = host.now_ms();
            self.worker.defer(Deferred {
                callout: keystore_client::release(ks, &claim.key, &claim.proposed_token),
                not_before_ms: now.saturating_add(after_ms),
                until_ms: retry_until(now, self.worker.cfg.lock_lease_ms, claim.rule.retention_ms),
                failures: 0,
            });
        }
    }

    /// Sends a key-store write and holds the response until it lands. Inside a callback of a
    /// stream that is over (`on_done`), the write can only be handed over.
    fn write(&mut self, host: &dyn Host, claim: &Claim, call: StoreCall) -> Flow {
        let Some(ks) = &self.worker.cfg.keystore else {
            return Flow::Continue;
        };
        let write = Deferred {
            callout: keystore_client::single(ks, &call),
            not_before_ms: 0,
            // A late write still lands while the key store keeps the claim, abandoned.
            until_ms: retry_until(
                host.now_ms(),
                self.worker.cfg.lock_lease_ms,
                claim.rule.retention_ms,
            ),
            failures: 0,
        };
        if self.ended {
            self.worker.defer(write);
            return Flow::Continue;
        }
        match self.send_call(host, call, write.callout.clone()) {
            Ok(callout) => {
                self.phase = Phase::Writing { callout, write };
                Flow::Pause
            }
            Err(e) => {
                self.count(host, Metric::StoreError);
                warn!(
                    "key {}: key-store write not dispatched ({e}); retrying in the background",
                    claim.key.short()
                );
                self.worker.defer(write);
                Flow::Continue
            }
        }
    }
}
