//! The per-request state machine: every decision the filter makes about one HTTP stream, driven
//! by Envoy's callbacks through the [`Host`] trait and never touching proxy-wasm itself.
//!
//! ```text
//! headers ─▶ Reading (body buffered, fingerprinted) ─▶ L1 lookup-or-claim ─▶ L2 claim (callout)
//!      ─▶ Executing (forwarded) ─▶ Capturing (response buffered) ─▶ Storing (L1, then callout) ─▶ client
//! ```
//! Replays, conflicts and errors leave as local replies; a 5xx or a reset releases the claims.

use crate::config::{
    Anonymous, CallerSource, Config, FailureMode, HeadersMode, RouteRule, NEVER_STORED,
};
use crate::deferred::Deferred;
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::host::Host;
use crate::key::parse_key_header;
use crate::keystore_client::{self, AckReply, ClaimReply};
use crate::l1::{L1Outcome, NearCache};
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::record::{storable_headers, Record, StoredResponse};
use crate::scope::RecordKey;
use log::{debug, info, warn};
use std::rc::Rc;

/// What the adapter returns to Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// The response header that marks a replay.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A covered request whose body is still being read.
struct Pending {
    rule: RouteRule,
    key: RecordKey,
    fingerprinter: Fingerprinter,
}

/// The claims this request holds while it executes.
#[derive(Debug, Clone)]
struct Claim {
    rule: RouteRule,
    key: RecordKey,
    fingerprint: Fingerprint,
    owner: u64,
    /// This request holds the L1 (shared data) claim.
    l1: bool,
    /// The key store's fencing token, when it granted the claim.
    token: Option<String>,
}

enum Phase {
    /// Not covered, or nothing left to decide: every callback continues.
    Idle,
    Reading(Box<Pending>),
    Claiming(Claim, u32),
    Executing(Claim),
    Capturing {
        claim: Claim,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
    },
    /// The record is on its way to the key store; the response waits for it. The callout is
    /// kept so that a failed store can be handed to the root context to retry.
    Storing(u32, Deferred),
    /// A release is on its way to the key store; the (unstored) response waits for it.
    Releasing(u32),
    /// The filter answered locally; the local reply passes back through the response callbacks.
    Answered,
}

/// One HTTP stream.
pub struct Stream {
    cfg: Rc<Config>,
    cache: Rc<NearCache>,
    phase: Phase,
    deferred: Vec<Deferred>,
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

impl Stream {
    pub fn new(cfg: Rc<Config>, cache: Rc<NearCache>) -> Stream {
        Stream {
            cfg,
            cache,
            phase: Phase::Idle,
            deferred: Vec::new(),
        }
    }

    pub fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        // Two lookups decide coverage; the whole header map is copied into the VM only when covered.
        let pseudo = |name| {
            String::from_utf8_lossy(&host.request_header(name).unwrap_or_default()).into_owned()
        };
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        let Some(rule) = self.cfg.route_for(&method, &path).cloned() else {
            host.count(Metric::NotCovered);
            return Flow::Continue;
        };
        let headers = host.request_headers();
        let key_values = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&self.cfg.header_name))
            .map(|(_, v)| v.as_slice());
        let key = match parse_key_header(key_values) {
            Ok(Some(key)) => key,
            Ok(None) if rule.required => {
                host.count(Metric::MissingKey);
                let detail = format!(
                    "{method} {} requires the {} header",
                    rule.path.scope(),
                    self.cfg.header_name
                );
                return self.answer(host, Problem::MissingKey, &detail);
            }
            Ok(None) => {
                host.count(Metric::NotCovered);
                return Flow::Continue;
            }
            Err(e) => {
                host.count(Metric::InvalidKey);
                return self.answer(host, Problem::InvalidKey, &e.to_string());
            }
        };
        let caller = match &self.cfg.caller {
            CallerSource::Header(name) => header(&headers, name).map(<[u8]>::to_vec),
            CallerSource::Property(path) => host.property(path),
        }
        .filter(|v| !v.is_empty());
        if caller.is_none() && self.cfg.anonymous == Anonymous::Reject {
            host.count(Metric::Unauthenticated);
            return self.answer(
                host,
                Problem::Unauthenticated,
                "this route needs an authenticated caller",
            );
        }
        let record_key = RecordKey::derive(
            &self.cfg.hmac_secret,
            &rule.path.scope(),
            caller.as_deref(),
            key.as_str(),
        );
        let fp_headers: Vec<(&str, Vec<&[u8]>)> = self
            .cfg
            .fingerprint_headers
            .iter()
            .map(|name| {
                let values = headers
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_slice())
                    .collect();
                (name.as_str(), values)
            })
            .collect();
        let pending = Pending {
            rule,
            key: record_key,
            fingerprinter: Fingerprinter::new(&method, &path, &fp_headers),
        };
        if end_of_stream {
            return self.decide(host, pending);
        }
        self.phase = Phase::Reading(Box::new(pending));
        match self.cfg.headers_mode {
            HeadersMode::Hold => Flow::Pause,
            // The body callbacks hold the request instead; the upstream sees no end of stream yet.
            HeadersMode::Stream => Flow::Continue,
        }
    }

    pub fn on_request_body(
        &mut self,
        host: &dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        match &self.phase {
            Phase::Reading(_) if body_size > self.cfg.max_body_bytes => self.body_too_large(host),
            Phase::Reading(_) if end_of_stream => self.finish_body(host),
            Phase::Reading(_) | Phase::Claiming(..) | Phase::Answered => Flow::Pause,
            _ => Flow::Continue,
        }
    }

    /// HTTP/2 requests with trailers never report end of stream in the body callback.
    pub fn on_request_trailers(&mut self, host: &dyn Host) -> Flow {
        match &self.phase {
            Phase::Reading(_) => self.finish_body(host),
            Phase::Claiming(..) | Phase::Answered => Flow::Pause,
            _ => Flow::Continue,
        }
    }

    fn body_too_large(&mut self, host: &dyn Host) -> Flow {
        host.count(Metric::TooLarge);
        let detail = format!("the body is larger than {} bytes", self.cfg.max_body_bytes);
        self.answer(host, Problem::BodyTooLarge, &detail)
    }

    fn finish_body(&mut self, host: &dyn Host) -> Flow {
        let Phase::Reading(pending) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return Flow::Continue;
        };
        let mut pending = *pending;
        let body = host.request_body(self.cfg.max_body_bytes.saturating_add(1));
        if body.len() > self.cfg.max_body_bytes {
            return self.body_too_large(host);
        }
        pending.fingerprinter.update_body(&body);
        self.decide(host, pending)
    }

    /// Both tiers, nearest first: L1 answers or claims locally, then the key store claims mesh-wide.
    fn decide(&mut self, host: &dyn Host, pending: Pending) -> Flow {
        let fingerprint = pending.fingerprinter.finish();
        let now = host.now_ms();
        let owner = host.random_u64();
        let mut claim = Claim {
            rule: pending.rule,
            key: pending.key,
            fingerprint,
            owner,
            l1: false,
            token: None,
        };
        match self.cache.lookup_or_claim(
            host,
            &claim.key,
            &fingerprint,
            owner,
            now,
            self.cfg.lock_lease_ms,
        ) {
            L1Outcome::Claimed => claim.l1 = true,
            L1Outcome::Completed(record) => return self.replay(host, &claim.key, record),
            L1Outcome::InFlight { .. } => return self.conflict(host, &claim.key),
            L1Outcome::Mismatch => return self.mismatch(host, &claim.key),
            L1Outcome::Unavailable(e) => {
                warn!("key {}: near cache unavailable: {e}", claim.key.short());
                if self.cfg.keystore.is_none() {
                    return self.store_failed(host, claim, &e, false);
                }
            }
        }
        let Some(ks) = &self.cfg.keystore else {
            return self.execute(host, claim, false);
        };
        let callout = keystore_client::claim(ks, &claim.key, &fingerprint, self.cfg.lock_lease_ms);
        match host.dispatch(&callout) {
            Ok(token) => {
                self.phase = Phase::Claiming(claim, token);
                Flow::Pause
            }
            Err(e) => self.store_failed(
                host,
                claim,
                &format!("claim callout not dispatched: {e}"),
                false,
            ),
        }
    }

    fn execute(&mut self, host: &dyn Host, claim: Claim, resume: bool) -> Flow {
        host.count(Metric::Executed);
        debug!("key {}: executing", claim.key.short());
        self.phase = Phase::Executing(claim);
        if resume {
            host.resume_request();
        }
        Flow::Continue
    }

    /// The key store could not be used: the route's failure mode decides.
    /// `resume`: the request is paused waiting for a callout and must be resumed to go on.
    fn store_failed(&mut self, host: &dyn Host, claim: Claim, why: &str, resume: bool) -> Flow {
        host.count(Metric::StoreError);
        match claim.rule.failure_mode {
            FailureMode::FailOpen => {
                host.count(Metric::FailOpen);
                warn!(
                    "key {}: key store failed ({why}); fail_open: forwarding",
                    claim.key.short()
                );
                self.execute(host, claim, resume)
            }
            FailureMode::FailClosed => {
                warn!(
                    "key {}: key store failed ({why}); fail_closed: 503",
                    claim.key.short()
                );
                self.release_l1(host, &claim);
                self.answer(
                    host,
                    Problem::StoreUnavailable,
                    "the idempotency key store could not be reached",
                )
            }
        }
    }

    pub fn on_callout_response(
        &mut self,
        host: &dyn Host,
        token: u32,
        status: Option<u16>,
        body: &[u8],
    ) {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Claiming(claim, t) if t == token => {
                self.on_claim_reply(host, claim, status, body)
            }
            Phase::Storing(t, retry) if t == token => {
                match keystore_client::parse_ack(status, body) {
                    Ok(AckReply::Done) => {}
                    Ok(AckReply::Stale) => {
                        warn!("record not stored: the key store claim was taken over")
                    }
                    Err(e) => {
                        host.count(Metric::StoreError);
                        warn!("record not stored in the key store yet ({e}); retrying in the background");
                        self.deferred.push(retry);
                    }
                }
                host.resume_response();
            }
            Phase::Releasing(t) if t == token => {
                if let Err(e) = keystore_client::parse_ack(status, body) {
                    host.count(Metric::StoreError);
                    warn!("claim not released in the key store (its lease will expire): {e}");
                }
                host.resume_response();
            }
            other => self.phase = other,
        }
    }

    /// Key-store writes this stream could not finish (a record the key store did not take, a
    /// release left by a stream that ended), for the plugin's root context to send and retry.
    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.deferred)
    }

    fn on_claim_reply(
        &mut self,
        host: &dyn Host,
        mut claim: Claim,
        status: Option<u16>,
        body: &[u8],
    ) {
        match keystore_client::parse_claim(status, body) {
            Ok(ClaimReply::Claimed { token }) => {
                claim.token = Some(token);
                self.execute(host, claim, true);
            }
            Ok(ClaimReply::Completed(record)) if record.fingerprint == claim.fingerprint => {
                if claim.l1 {
                    // Keep the record near: the next retry on this Envoy needs no callout.
                    let _ =
                        self.cache
                            .complete(host, &claim.key, claim.owner, &record, host.now_ms());
                }
                self.replay(host, &claim.key, record);
            }
            Ok(ClaimReply::Completed(_)) | Ok(ClaimReply::Mismatch) => {
                self.release_l1(host, &claim);
                self.mismatch(host, &claim.key);
            }
            Ok(ClaimReply::InFlight { .. }) => {
                self.release_l1(host, &claim);
                self.conflict(host, &claim.key);
            }
            Err(e) => {
                self.store_failed(host, claim, &e, true);
            }
        }
    }

    pub fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        let Phase::Executing(claim) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return self.hold_response();
        };
        let headers = host.response_headers();
        let status = header(&headers, ":status")
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let storable = (status < 500 || claim.rule.store_5xx)
            && status >= 100
            && !NEVER_STORED.contains(&status);
        if !storable {
            info!(
                "key {}: upstream answered {status}; releasing the claim",
                claim.key.short()
            );
            return self.release(host, claim);
        }
        let headers = storable_headers(headers);
        if end_of_stream {
            let response = StoredResponse {
                status,
                headers,
                body: Vec::new(),
            };
            return self.store(host, claim, Some(response));
        }
        self.phase = Phase::Capturing {
            claim,
            status,
            headers,
        };
        Flow::Continue
    }

    pub fn on_response_body(
        &mut self,
        host: &dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        let Phase::Capturing { headers, .. } = &self.phase else {
            return self.hold_response();
        };
        let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if body_size.saturating_add(header_bytes) > self.cfg.max_response_bytes {
            return self.finish_capture(host, None);
        }
        if end_of_stream {
            let body = host.response_body(body_size);
            return self.finish_capture(host, Some(body));
        }
        Flow::Pause
    }

    pub fn on_response_trailers(&mut self, host: &dyn Host) -> Flow {
        if !matches!(self.phase, Phase::Capturing { .. }) {
            return self.hold_response();
        }
        let body = host.response_body(self.cfg.max_response_bytes.saturating_add(1));
        self.on_response_body(host, body.len(), true)
    }

    /// While a callout about this response is pending, everything waits for it.
    fn hold_response(&self) -> Flow {
        match self.phase {
            Phase::Storing(..) | Phase::Releasing(_) => Flow::Pause,
            _ => Flow::Continue,
        }
    }

    fn finish_capture(&mut self, host: &dyn Host, body: Option<Vec<u8>>) -> Flow {
        let Phase::Capturing {
            claim,
            status,
            headers,
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return Flow::Continue;
        };
        let response = body.map(|body| StoredResponse {
            status,
            headers,
            body,
        });
        self.store(host, claim, response)
    }

    /// Stores the record in L1, then in the key store, before the client gets the end of the response.
    fn store(&mut self, host: &dyn Host, claim: Claim, response: Option<StoredResponse>) -> Flow {
        let now = host.now_ms();
        if response.is_none() {
            host.count(Metric::NotReplayable);
            info!(
                "key {}: response too large to keep; stored as not replayable",
                claim.key.short()
            );
        }
        let record = Record {
            fingerprint: claim.fingerprint,
            created_ms: now,
            expires_ms: now + claim.rule.retention_ms,
            response,
        };
        if claim.l1 {
            match self
                .cache
                .complete(host, &claim.key, claim.owner, &record, now)
            {
                Ok(true) => {}
                Ok(false) => warn!(
                    "key {}: near-cache claim was taken over before completion",
                    claim.key.short()
                ),
                Err(e) => warn!(
                    "key {}: record not kept in the near cache: {e}",
                    claim.key.short()
                ),
            }
        }
        let (Some(ks), Some(token)) = (&self.cfg.keystore, &claim.token) else {
            return Flow::Continue;
        };
        let retry = Deferred {
            callout: keystore_client::complete(
                ks,
                &claim.key,
                token,
                &record,
                claim.rule.retention_ms,
            ),
            until_ms: now + self.cfg.lock_lease_ms,
        };
        match host.dispatch(&retry.callout) {
            Ok(t) => {
                self.phase = Phase::Storing(t, retry);
                Flow::Pause
            }
            Err(e) => {
                host.count(Metric::StoreError);
                warn!(
                    "key {}: complete callout not dispatched ({e}); retrying in the background",
                    claim.key.short()
                );
                self.deferred.push(retry);
                Flow::Continue
            }
        }
    }

    /// The request did not really run (5xx, 429, ...): free the key so a retry executes again.
    fn release(&mut self, host: &dyn Host, claim: Claim) -> Flow {
        host.count(Metric::Released);
        self.release_l1(host, &claim);
        let (Some(ks), Some(token)) = (&self.cfg.keystore, &claim.token) else {
            return Flow::Continue;
        };
        match host.dispatch(&keystore_client::release(ks, &claim.key, token)) {
            Ok(t) => {
                self.phase = Phase::Releasing(t);
                Flow::Pause
            }
            Err(e) => {
                host.count(Metric::StoreError);
                warn!(
                    "key {}: release callout not dispatched (the lease will expire): {e}",
                    claim.key.short()
                );
                Flow::Continue
            }
        }
    }

    fn release_l1(&self, host: &dyn Host, claim: &Claim) {
        if claim.l1 {
            if let Err(e) = self
                .cache
                .release(host, &claim.key, claim.owner, host.now_ms())
            {
                warn!(
                    "key {}: near-cache claim not released (its lease will expire): {e}",
                    claim.key.short()
                );
            }
        }
    }

    /// The stream ends (completed, reset, or the client went away). A claim still held is
    /// released in L1 at once. A key-store claim cannot be released from here (callouts die with
    /// the stream), so the release joins [`Stream::take_deferred`] for the plugin's root context to
    /// send; if that fails too, the claim's lease frees the key.
    pub fn on_done(&mut self, host: &dyn Host) {
        let claim = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Claiming(claim, _)
            | Phase::Executing(claim)
            | Phase::Capturing { claim, .. } => claim,
            _ => return,
        };
        host.count(Metric::Released);
        info!(
            "key {}: stream ended before completion; releasing the claim",
            claim.key.short()
        );
        self.release_l1(host, &claim);
        if let (Some(ks), Some(token)) = (&self.cfg.keystore, &claim.token) {
            self.deferred.push(Deferred {
                callout: keystore_client::release(ks, &claim.key, token),
                until_ms: host.now_ms().saturating_add(self.cfg.lock_lease_ms),
            });
        }
    }

    fn replay(&mut self, host: &dyn Host, key: &RecordKey, record: Record) -> Flow {
        let Some(response) = record.response else {
            host.count(Metric::NotReplayable);
            return self.answer(
                host,
                Problem::NotReplayable,
                "this request was executed, but its response was too large to keep; it will not be executed again",
            );
        };
        host.count(Metric::Replayed);
        debug!("key {}: replaying the stored response", key.short());
        let mut headers = response.headers;
        headers.push((REPLAYED_HEADER.to_string(), b"true".to_vec()));
        host.send_response(response.status, &headers, &response.body);
        self.phase = Phase::Answered;
        Flow::Pause
    }

    fn conflict(&mut self, host: &dyn Host, key: &RecordKey) -> Flow {
        host.count(Metric::Conflict);
        debug!("key {}: in flight: 409", key.short());
        self.answer(
            host,
            Problem::Conflict,
            "a request with this key is still being processed; retry later",
        )
    }

    fn mismatch(&mut self, host: &dyn Host, key: &RecordKey) -> Flow {
        host.count(Metric::Mismatch);
        debug!("key {}: fingerprint mismatch: 422", key.short());
        self.answer(
            host,
            Problem::Mismatch,
            "this key was used with a different request (method, path, query or body)",
        )
    }

    fn answer(&mut self, host: &dyn Host, problem: Problem, detail: &str) -> Flow {
        let (status, headers, body) = problem.response(detail);
        host.send_response(status, &headers, &body);
        self.phase = Phase::Answered;
        Flow::Pause
    }
}
