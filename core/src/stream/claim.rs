//! The two tiers, nearest first: L1 (this Envoy's shared data) answers or claims locally, then
//! the key store claims the key mesh-wide. The claim's owner is the only one that may store or
//! release it.

use super::{Admitted, Claim, Flow, Phase, Stream};
use crate::background::detached::{upstream_request, DetachedJob};
use crate::background::leases::HeldClaim;
use crate::background::waiting::Waiter;
use crate::budget::WAITER_BYTES;
use crate::config::{Execution, FailureMode, Mode, WhileInFlight};
use crate::found::Found;
use crate::host::Host;
use crate::keystore_client::{self, ClaimError};
use crate::metrics::Metric;
use crate::problem::Problem;
use log::{debug, warn};

impl Stream {
    pub(super) fn decide(&mut self, host: &dyn Host, admitted: Admitted) -> Flow {
        let fingerprint = admitted.fingerprinter.finish();
        let now = host.now_ms();
        let (owner, nonce) = host.random_pair();
        let mut claim = Claim {
            rule: admitted.rule,
            key: admitted.key,
            fingerprint,
            owner,
            l1: false,
            proposed_token: format!("{owner:016x}{nonce:016x}"),
            token: None,
        };
        let lease_ms = self.worker.cfg.lock_lease_ms;
        match self.worker.cache.lookup_or_claim(
            host,
            &claim.key,
            &fingerprint,
            owner,
            now,
            lease_ms,
        ) {
            Ok(Found::Claimed { .. }) => claim.l1 = true,
            // Waiting: the key store holds the duplicate until the record lands, for this Envoy's
            // requests as for any other's. Without a key store, this Envoy's root context does.
            Ok(Found::InFlight { .. })
                if claim.rule.in_flight == WhileInFlight::Wait
                    && claim.rule.mode == Mode::Enforce =>
            {
                if self.worker.cfg.keystore.is_none() {
                    return self.wait_locally(host, claim);
                }
            }
            // L1 claims a key it finds free; it never answers absent.
            Ok(Found::Absent) => {}
            Ok(found) => return self.answer_found(host, &claim.key, found, &claim.rule),
            Err(e) => {
                warn!("key {}: near cache unavailable: {e}", claim.key.short());
                if self.worker.cfg.keystore.is_none() {
                    return self.store_failed(host, claim, &e);
                }
            }
        }
        let Some(ks) = &self.worker.cfg.keystore else {
            return self.execute(host, claim);
        };
        let call = keystore_client::claim_call(
            &claim.key,
            &fingerprint,
            &claim.proposed_token,
            &claim.terms(lease_ms),
        );
        let callout = keystore_client::single(ks, &call);
        match self.send_call(host, call, callout) {
            Ok(token) => {
                self.phase = Phase::Claiming {
                    claim,
                    callout: token,
                };
                Flow::Pause
            }
            Err(e) => self.store_failed(host, claim, &format!("claim callout not dispatched: {e}")),
        }
    }

    /// The claim now protects a request on its way upstream: renew it until the answer.
    pub(super) fn hold_lease(&self, host: &dyn Host, claim: &Claim) {
        self.worker
            .leases
            .borrow_mut()
            .hold(HeldClaim::of(claim, host.now_ms()));
    }

    /// The attempt is settled: the claim needs no more renewals.
    pub(super) fn drop_lease(&self, claim: &Claim) {
        self.worker.leases.borrow_mut().drop_claim(claim.owner);
    }

    /// Forwards the request upstream under its claim: through Envoy's router, or (detached)
    /// through the plugin's root context.
    pub(super) fn execute(&mut self, host: &dyn Host, claim: Claim) -> Flow {
        self.count(host, Metric::Executed);
        if let (
            Execution::Detached {
                cluster,
                timeout_ms,
            },
            Mode::Enforce,
        ) = (&claim.rule.execution, claim.rule.mode)
        {
            let (cluster, timeout_ms) = (cluster.clone(), *timeout_ms);
            return self.detach(host, claim, &cluster, timeout_ms);
        }
        debug!("key {}: executing", claim.key.short());
        self.hold_lease(host, &claim);
        self.phase = Phase::Forwarded(claim);
        Flow::Continue
    }

    /// Hands the request to the root context, which sends it upstream, stores the answer and
    /// answers this stream if it is still there. The request never goes through the router.
    fn detach(&mut self, host: &dyn Host, claim: Claim, cluster: &str, timeout_ms: u64) -> Flow {
        let (headers, body) = self.detached_request.take().unwrap_or_default();
        let upstream = upstream_request(cluster, timeout_ms, &headers, body);
        let Some(queue) = self.worker.doorbell() else {
            self.release_l1(host, &claim);
            self.release_later(host, &claim, 0);
            return self.answer(
                host,
                Problem::UpstreamUnavailable,
                "detached execution is not available on this worker",
            );
        };
        self.count(host, Metric::DetachedExecuted);
        debug!("key {}: executing detached", claim.key.short());
        let routed = self.replay_routed(&claim.rule) && !self.headers_forwarded;
        self.worker.queue_detached(DetachedJob {
            stream_id: host.stream_id(),
            upstream,
            claim,
            sent_ms: 0,
            held: self.held.take(),
            grpc: self.grpc,
            routed,
        });
        if let Err(e) = host.wake_root(queue) {
            // The next tick starts it anyway.
            warn!("cannot wake the root context ({e}); the detached request waits for a tick");
        }
        self.phase = Phase::Detached;
        Flow::Pause
    }

    /// A duplicate waits for the record of its key's first request (no key store: this Envoy's
    /// root context looks at L1 and answers it).
    pub(super) fn wait_locally(&mut self, host: &dyn Host, claim: Claim) -> Flow {
        // A duplicate never runs: a detached route's copy of its request is not needed.
        self.detached_request = None;
        self.held = None;
        let held = match self.worker.budget.take(WAITER_BYTES) {
            Ok(held) => held,
            Err(_) => return self.over_budget(host, "a waiting duplicate", WAITER_BYTES),
        };
        self.count(host, Metric::Waited);
        self.worker.waiters.borrow_mut().add(
            Waiter {
                stream_id: host.stream_id(),
                key: claim.key,
                fingerprint: claim.fingerprint,
                until_ms: host.now_ms().saturating_add(claim.rule.max_wait_ms),
                grpc: self.grpc,
                routed: self.replay_routed(&claim.rule) && !self.headers_forwarded,
            },
            held,
        );
        self.phase = Phase::WaitingLocally;
        Flow::Pause
    }

    /// The key store could not be used: the route's failure mode decides.
    pub(super) fn store_failed(&mut self, host: &dyn Host, claim: Claim, why: &str) -> Flow {
        self.count(host, Metric::StoreError);
        match claim.rule.failure_mode {
            FailureMode::FailOpen => {
                self.count(host, Metric::FailOpen);
                warn!(
                    "key {}: key store failed ({why}); fail_open: forwarding",
                    claim.key.short()
                );
                self.execute(host, claim)
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

    pub(super) fn on_claim_reply(
        &mut self,
        host: &dyn Host,
        mut claim: Claim,
        status: Option<u16>,
        body: &[u8],
    ) -> Flow {
        let reply = self.claim_reply(host, &claim, status, body);
        if keystore_client::claim_waited(body) {
            self.count(host, Metric::Waited);
            match reply {
                Ok(Found::Completed(_)) => self.count(host, Metric::WaitReplayed),
                Ok(Found::InFlight { .. }) => self.count(host, Metric::WaitTimedOut),
                _ => {}
            }
        }
        match reply {
            Ok(Found::Claimed { token }) => {
                claim.token = token;
                self.execute(host, claim)
            }
            Ok(Found::Completed(record)) if record.fingerprint == claim.fingerprint => {
                if claim.l1 {
                    // Keep the record near: the next retry on this Envoy needs no callout.
                    let now = host.now_ms();
                    let _ = self
                        .worker
                        .cache
                        .complete(host, &claim.key, claim.owner, &record, now);
                }
                self.answer_found(host, &claim.key, Found::Completed(record), &claim.rule)
            }
            Ok(Found::Completed(_)) => {
                self.release_l1(host, &claim);
                self.answer_found(host, &claim.key, Found::Mismatch, &claim.rule)
            }
            Ok(found @ (Found::Mismatch | Found::InFlight { .. } | Found::Abandoned { .. })) => {
                self.release_l1(host, &claim);
                self.answer_found(host, &claim.key, found, &claim.rule)
            }
            // A claim never finds the key absent; the parser cannot produce it.
            Ok(Found::Absent) => {
                let why = "claim reply without a claim";
                self.store_failed(host, claim, why)
            }
            Err(ClaimError::Unverified) => {
                self.release_l1(host, &claim);
                self.answer_unverifiable(host)
            }
            Err(ClaimError::Failed(e)) => self.store_failed(host, claim, &e),
        }
    }

    /// The claim reply of a request that Envoy answered meanwhile: a granted claim is released.
    pub(super) fn release_abandoned_claim(
        &mut self,
        host: &dyn Host,
        claim: Claim,
        status: Option<u16>,
        body: &[u8],
    ) {
        if let Ok(Found::Claimed { .. }) = self.claim_reply(host, &claim, status, body) {
            self.release_later(host, &claim, 0);
        }
    }

    pub(super) fn release_l1(&self, host: &dyn Host, claim: &Claim) {
        if !claim.l1 {
            return;
        }
        let now = host.now_ms();
        if let Err(e) = self
            .worker
            .cache
            .release(host, &claim.key, claim.owner, now)
        {
            warn!(
                "key {}: near-cache claim not released (its lease will expire): {e}",
                claim.key.short()
            );
        }
    }
}
