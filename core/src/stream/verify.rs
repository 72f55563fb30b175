//! Key-store claim replies, read for one claim: a record in the reply must open under one of the
//! plugin's secrets for the claim's record key. One that does not (forged or altered in the store,
//! or sealed under a secret no longer configured) is counted, logged without any of its data, and
//! answered with its own problem (`record-unverifiable`, 502), whatever the failure mode: the key
//! store answered, and what it holds for the key may be the record of an execution, so neither a
//! replay nor a second execution is safe. An operator inspects and purges it with the admin tool.

use super::{Claim, Flow, Stream};
use crate::found::Found;
use crate::host::Host;
use crate::keystore_client::{self, ClaimError};
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::scope::RecordKey;
use log::warn;

impl Stream {
    /// A record from the key store that does not open for its key: counted, logged without data.
    pub(super) fn unverified(&self, host: &dyn Host, key: &RecordKey) {
        self.count(host, Metric::UnverifiedRecord);
        warn!(
            "key {}: the key store returned a record that fails verification (not sealed for this key under any configured secret); not replayed",
            key.short()
        );
    }

    /// Answers a request whose key holds a record that fails verification (counted already).
    pub(super) fn answer_unverifiable(&mut self, host: &dyn Host) -> Flow {
        self.answer(
            host,
            Problem::RecordUnverifiable,
            "the key store holds a record for this key that fails verification; it is neither replayed nor executed again (an operator can inspect and purge it)",
        )
    }

    /// The key store's reply to `claim`, with its record verified (an unverifiable one is counted
    /// and logged here).
    pub(super) fn claim_reply(
        &self,
        host: &dyn Host,
        claim: &Claim,
        status: Option<u16>,
        body: &[u8],
    ) -> Result<Found, ClaimError> {
        let Some(ks) = &self.worker.cfg.keystore else {
            return Err(ClaimError::Failed("no key store is configured".to_string()));
        };
        let reply = keystore_client::parse_claim(ks, &claim.key, status, body);
        if reply == Err(ClaimError::Unverified) {
            self.unverified(host, &claim.key);
        }
        reply
    }
}
