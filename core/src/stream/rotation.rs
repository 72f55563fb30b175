//! Secret rotation: a key may have been stored under a previous secret (`hmac_secrets` after the
//! first), and so under another record key. Before claiming under the current secret, each
//! previous secret's record key is looked up, L1 first, then the key store (a lookup claims
//! nothing). A record found there answers the retry; a claim in flight there answers 409; nothing
//! found: the request goes on under the current secret. With one secret there is nothing to do and
//! no cost; with previous secrets, a request that misses L1 costs one key-store round trip per
//! previous secret.

use super::{Admitted, Flow, Phase, Stream};
use crate::config::{FailureMode, UnknownOutcome};
use crate::fingerprint::keyed;
use crate::found::Found;
use crate::host::Host;
use crate::keystore_client::{self, ClaimError};
use crate::metrics::Metric;
use crate::problem::Problem;
use log::warn;

impl Stream {
    /// The body is complete: look under the previous secrets, then decide under the current one.
    pub(super) fn look_up_previous(&mut self, host: &dyn Host, admitted: Admitted) -> Flow {
        self.next_previous(host, admitted, 0)
    }

    /// Looks under previous secret `index` and the ones after it.
    fn next_previous(&mut self, host: &dyn Host, admitted: Admitted, index: usize) -> Flow {
        let worker = self.worker.clone();
        let cfg = &worker.cfg;
        let digest = admitted.fingerprinter.digest();
        let now = host.now_ms();
        let secrets: Vec<&[u8]> = cfg.secrets.previous().collect();
        for (i, key) in admitted.previous.iter().enumerate().skip(index) {
            let Some(secret) = secrets.get(i) else { break };
            let fingerprint = keyed(secret, &digest);
            if let Some(found @ (Found::Completed(_) | Found::InFlight { .. } | Found::Mismatch)) =
                worker.cache.peek(host, key, &fingerprint, now)
            {
                return self.answer_found(host, key, found, &admitted.rule);
            }
            let Some(ks) = &cfg.keystore else { continue };
            let call = keystore_client::lookup_call(key, &fingerprint);
            let callout = keystore_client::single(ks, &call);
            match self.send_call(host, call, callout) {
                Ok(token) => {
                    self.phase = Phase::LookingUp {
                        admitted: Box::new(admitted),
                        callout: token,
                        index: i,
                    };
                    return Flow::Pause;
                }
                Err(e) => {
                    return self.lookup_failed(
                        host,
                        admitted,
                        i,
                        &format!("lookup callout not dispatched: {e}"),
                    )
                }
            }
        }
        self.decide(host, admitted)
    }

    pub(super) fn on_lookup_reply(
        &mut self,
        host: &dyn Host,
        admitted: Admitted,
        index: usize,
        status: Option<u16>,
        body: &[u8],
    ) -> Flow {
        let Some(key) = admitted.previous.get(index).copied() else {
            return self.next_previous(host, admitted, index + 1);
        };
        let worker = self.worker.clone();
        let Some(ks) = &worker.cfg.keystore else {
            return Flow::Pause;
        };
        let fingerprint = worker
            .cfg
            .secrets
            .previous()
            .nth(index)
            .map(|secret| keyed(secret, &admitted.fingerprinter.digest()));
        match keystore_client::parse_lookup(ks, &key, status, body) {
            Ok(Found::Absent) => self.next_previous(host, admitted, index + 1),
            // Under `unknown_outcome: "release"` an abandoned claim frees its key: the request
            // goes on, under the current secret.
            Ok(Found::Abandoned { .. })
                if admitted.rule.unknown_outcome == UnknownOutcome::Release =>
            {
                self.next_previous(host, admitted, index + 1)
            }
            Ok(Found::Completed(record)) if Some(record.fingerprint) != fingerprint => {
                let rule = admitted.rule.clone();
                self.answer_found(host, &key, Found::Mismatch, &rule)
            }
            Ok(
                found @ (Found::Completed(_)
                | Found::InFlight { .. }
                | Found::Mismatch
                | Found::Abandoned { .. }),
            ) => {
                let rule = admitted.rule.clone();
                self.answer_found(host, &key, found, &rule)
            }
            Err(ClaimError::Unverified) => {
                self.unverified(host, &key);
                self.answer_unverifiable(host)
            }
            // A lookup claims nothing; the parser cannot produce it.
            Ok(Found::Claimed { .. }) => {
                let why = "lookup reply with a claim";
                self.lookup_failed(host, admitted, index, why)
            }
            Err(ClaimError::Failed(e)) => self.lookup_failed(host, admitted, index, &e),
        }
    }

    /// A lookup could not be made: the route's failure mode decides, as for a claim.
    fn lookup_failed(
        &mut self,
        host: &dyn Host,
        admitted: Admitted,
        index: usize,
        why: &str,
    ) -> Flow {
        self.count(host, Metric::StoreError);
        match admitted.rule.failure_mode {
            FailureMode::FailOpen => {
                warn!(
                    "key {}: lookup under a previous secret failed ({why}); fail_open: going on",
                    admitted.key.short()
                );
                self.next_previous(host, admitted, index + 1)
            }
            FailureMode::FailClosed => {
                warn!(
                    "key {}: lookup under a previous secret failed ({why}); fail_closed: 503",
                    admitted.key.short()
                );
                self.answer(
                    host,
                    Problem::StoreUnavailable,
                    "the idempotency key store could not be reached",
                )
            }
        }
    }
}
