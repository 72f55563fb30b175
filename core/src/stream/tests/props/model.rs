//! The model key store: README "Key-store API (v1)" in memory (claim, lookup, complete, release,
//! renew, renew-batch; fenced by the current claim's token while its lease is live), reading and writing bodies
//! with the protocol crate the real key store uses, so it refuses what the real one refuses.

use super::*;

/// What the client of a request is expected to see as a stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resp {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) body: Vec<u8>,
}

/// A claim or record, as the model (of L1, or of the key store) holds it.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    InFlight {
        body: usize,
        until: u64,
        /// The request (L1 model) or the token (key store model) that owns it.
        owner: String,
    },
    Completed {
        body: usize,
        expires: u64,
        record: Vec<u8>,
    },
}

impl Slot {
    pub(super) fn live(&self, now: u64) -> bool {
        match self {
            Slot::InFlight { until, .. } => now < *until,
            Slot::Completed { expires, .. } => now < *expires,
        }
    }
    pub(super) fn body(&self) -> usize {
        match self {
            Slot::InFlight { body, .. } | Slot::Completed { body, .. } => *body,
        }
    }
}

/// A reply of the key store model: the status and the JSON body.
pub(super) fn reply(status: u16, body: &impl serde::Serialize) -> (u16, String) {
    (status, String::from_utf8(json::encode(body)).unwrap())
}

pub(super) fn stale() -> (u16, String) {
    reply(409, &FencedResponse::Stale)
}

/// What the real key store answers to a body it refuses: 400 naming the field.
pub(super) fn bad_request(e: &ProtocolError) -> (u16, String) {
    reply(
        400,
        &ErrorBody {
            error: e.to_string(),
        },
    )
}

/// The key store of README "Key-store API (v1)", in memory. It parses and validates bodies with
/// the real key store's code (the protocol crate), so it is as strict as the real one.
#[derive(Default)]
pub(super) struct KeyStore {
    pub(super) map: HashMap<String, Slot>,
    /// Tokens minted so far.
    pub(super) tokens: u64,
    /// The body each fingerprint (hex) stands for, learnt from the claims the filter sends.
    pub(super) fingerprints: HashMap<String, usize>,
}

impl KeyStore {
    /// Applies a callout; returns the HTTP status and body it answers.
    pub(super) fn apply(&mut self, path: &str, body: &[u8], now: u64) -> (u16, String) {
        let answer = match path.rsplit('/').next().unwrap_or_default() {
            "claim" => body::decode_request(body).and_then(|r| self.claim(&r, now)),
            "lookup" => body::decode_request(body).and_then(|r| self.lookup(&r, now)),
            "complete" => body::decode_request(body).map(|r: CompleteRequest| {
                self.fenced(&r.key, &r.token, now, |body, _| {
                    Some(Slot::Completed {
                        body,
                        expires: now + r.retention_ms,
                        record: r.record.clone(),
                    })
                })
                .map_or_else(stale, |()| reply(200, &FencedResponse::Stored))
            }),
            "release" => body::decode_request(body).map(|r: ReleaseRequest| {
                match self.fenced(&r.key, &r.token, now, |_, _| None) {
                    Some(()) => reply(200, &FencedResponse::Released),
                    None => stale(),
                }
            }),
            "renew" => body::decode_request(body).map(|r: RenewRequest| {
                self.renew(&r, now)
                    .map_or_else(stale, |()| reply(200, &FencedResponse::Renewed))
            }),
            "renew-batch" => body::decode_request(body).map(|b: RenewBatchRequest| {
                let outcomes = b
                    .renewals
                    .iter()
                    .map(|r| match self.renew(r, now) {
                        Some(()) => RenewOutcome::Renewed,
                        None => RenewOutcome::Stale,
                    })
                    .collect();
                reply(200, &RenewBatchResponse { outcomes })
            }),
            _ => Ok((404, String::new())),
        };
        answer.unwrap_or_else(|e| bad_request(&e))
    }

    /// Renews the claim `r.token` holds, if it is the key's live claim.
    fn renew(&mut self, r: &RenewRequest, now: u64) -> Option<()> {
        self.fenced(&r.key, &r.token, now, |body, owner| {
            Some(Slot::InFlight {
                body,
                until: now + r.lease_ms,
                owner,
            })
        })
    }

    /// The live slot of `key`: expired claims are free to be taken over, expired records gone.
    pub(super) fn live(&self, key: &Hex64, now: u64) -> Option<Slot> {
        self.map.get(key.as_str()).filter(|s| s.live(now)).cloned()
    }

    /// The body a fingerprint stands for, if the model learnt it from a claim the filter sent.
    pub(super) fn body_of(&self, fingerprint: &Hex64) -> Result<usize, ProtocolError> {
        self.fingerprints
            .get(fingerprint.as_str())
            .copied()
            .ok_or_else(|| ProtocolError::field("fingerprint", "unknown to the model"))
    }

    pub(super) fn claim(
        &mut self,
        r: &ClaimRequest,
        now: u64,
    ) -> Result<(u16, String), ProtocolError> {
        let fp_body = self.body_of(&r.fingerprint)?;
        let response = match self.live(&r.key, now) {
            None => {
                // The caller's proposed token, as the real key store does; else a new one.
                self.tokens += 1;
                let token = r
                    .token
                    .clone()
                    .unwrap_or_else(|| format!("T{}", self.tokens));
                self.map.insert(
                    r.key.as_str().to_string(),
                    Slot::InFlight {
                        body: fp_body,
                        until: now + r.lease_ms,
                        owner: token.clone(),
                    },
                );
                ClaimResponse::Claimed { token }
            }
            Some(s) if s.body() != fp_body => ClaimResponse::Mismatch,
            Some(Slot::InFlight { until, .. }) => ClaimResponse::InFlight {
                retry_after_ms: until - now,
            },
            Some(Slot::Completed { record, .. }) => ClaimResponse::Completed { record },
        };
        Ok(reply(
            200,
            &ClaimAnswer {
                response,
                waited: false,
            },
        ))
    }

    pub(super) fn lookup(
        &self,
        r: &LookupRequest,
        now: u64,
    ) -> Result<(u16, String), ProtocolError> {
        let fp_body = self.body_of(&r.fingerprint)?;
        let response = match self.live(&r.key, now) {
            None => LookupResponse::Absent,
            Some(s) if s.body() != fp_body => LookupResponse::Mismatch,
            Some(Slot::InFlight { until, .. }) => LookupResponse::InFlight {
                retry_after_ms: until - now,
            },
            Some(Slot::Completed { record, .. }) => LookupResponse::Completed { record },
        };
        Ok(reply(200, &response))
    }

    /// Complete, release and renew: accepted only from the current claim's token, and only while
    /// its lease is live (past it, the key is free to be taken over, whether or not someone did).
    /// `next` makes what the key then holds (from the claim's body and owner), if anything.
    pub(super) fn fenced(
        &mut self,
        key: &Hex64,
        token: &str,
        now: u64,
        next: impl FnOnce(usize, String) -> Option<Slot>,
    ) -> Option<()> {
        let Some(Slot::InFlight { owner, body, .. }) = self.live(key, now) else {
            return None;
        };
        if owner != token {
            return None;
        }
        match next(body, owner) {
            Some(slot) => self.map.insert(key.as_str().to_string(), slot),
            None => self.map.remove(key.as_str()),
        };
        Some(())
    }
}
