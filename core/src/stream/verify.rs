//! Key-store claim replies, read for one claim: a record in the reply must open under one of the
//! plugin's secrets for the claim's record key. One that does not (forged or altered in the store)
//! is counted, logged without any of its data, and becomes a store error, so the route's failure
//! mode applies and nothing of it reaches the client.

use super::{Claim, Stream};
use crate::found::Found;
use crate::host::Host;
use crate::keystore_client::{self, ClaimError};
use crate::metrics::Metric;
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

    /// The key store's reply to `claim`, with its record verified.
    pub(super) fn claim_reply(
        &self,
        host: &dyn Host,
        claim: &Claim,
        status: Option<u16>,
        body: &[u8],
    ) -> Result<Found, String> {
        let Some(ks) = &self.worker.cfg.keystore else {
            return Err("no key store is configured".to_string());
        };
        match keystore_client::parse_claim(ks, &claim.key, status, body) {
            Ok(reply) => Ok(reply),
            Err(ClaimError::Unverified) => {
                self.unverified(host, &claim.key);
                Err("record from the key store failed verification".to_string())
            }
            Err(ClaimError::Failed(e)) => Err(e),
        }
    }
}
