//! The model key store: README "Key-store API (v1)" in memory (claim, lookup, complete, release,
//! renew, renew-batch; fenced by the current claim's token while the key store keeps the claim),
//! reading and writing bodies with the protocol crate the real key store uses, so it refuses what
//! the real one refuses. A claim whose lease ran out is abandoned for its `retention_ms`: reported
//! (`abandoned`) to a claim naming `report`, taken over by one naming `take_over`, and still
//! completed, released or revived by its holder's late write.

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
        /// How long the key store keeps the claim, abandoned, once its lease ran out (L1: 0).
        keep: u64,
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
    /// A key-store claim whose lease ran out, still kept (its outcome is unknown).
    pub(super) fn abandoned(&self, now: u64) -> bool {
        matches!(self, Slot::InFlight { until, keep, .. } if *until <= now && now < until + keep)
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
        let keep = match self.map.get(r.key.as_str()) {
            Some(Slot::InFlight { keep, .. }) => *keep,
            _ => 0,
        };
        self.fenced(&r.key, &r.token, now, |body, owner| {
            Some(Slot::InFlight {
                body,
                until: now + r.lease_ms,
                owner,
                keep,
            })
        })
    }

    /// What `key` holds for the key store: a live slot, or an abandoned claim.
    pub(super) fn kept(&self, key: &Hex64, now: u64) -> Option<Slot> {
        self.map
            .get(key.as_str())
            .filter(|s| s.live(now) || s.abandoned(now))
            .cloned()
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
        let kept = self.kept(&r.key, now);
        let takes_over = r.abandoned == Some(AbandonedPolicy::TakeOver);
        let response = match kept {
            Some(s) if s.abandoned(now) && takes_over => self.grant(r, fp_body, now),
            None => self.grant(r, fp_body, now),
            Some(s) if s.body() != fp_body => ClaimResponse::Mismatch,
            Some(Slot::InFlight { until, .. }) if now < until => ClaimResponse::InFlight {
                retry_after_ms: until - now,
            },
            Some(Slot::InFlight { until, .. }) => match r.abandoned {
                Some(_) => ClaimResponse::Abandoned {
                    lease_ended_ms_ago: now - until,
                },
                None => ClaimResponse::InFlight {
                    retry_after_ms: ABANDONED_RETRY_AFTER_MS,
                },
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

    /// A new claim of `r.key` (or a takeover of an abandoned one).
    fn grant(&mut self, r: &ClaimRequest, body: usize, now: u64) -> ClaimResponse {
        // The caller's proposed token, as the real key store does; else a new one.
        self.tokens += 1;
        let token = r
            .token
            .clone()
            .unwrap_or_else(|| format!("T{}", self.tokens));
        self.map.insert(
            r.key.as_str().to_string(),
            Slot::InFlight {
                body,
                until: now + r.lease_ms,
                owner: token.clone(),
                keep: r.retention_ms.unwrap_or(DEFAULT_ABANDONED_RETENTION_MS),
            },
        );
        ClaimResponse::Claimed { token }
    }

    pub(super) fn lookup(
        &self,
        r: &LookupRequest,
        now: u64,
    ) -> Result<(u16, String), ProtocolError> {
        let fp_body = self.body_of(&r.fingerprint)?;
        let response = match self.kept(&r.key, now) {
            None => LookupResponse::Absent,
            Some(s) if s.body() != fp_body => LookupResponse::Mismatch,
            Some(Slot::InFlight { until, .. }) if now < until => LookupResponse::InFlight {
                retry_after_ms: until - now,
            },
            Some(Slot::InFlight { until, .. }) => match r.abandoned {
                Some(_) => LookupResponse::Abandoned {
                    lease_ended_ms_ago: now - until,
                },
                None => LookupResponse::InFlight {
                    retry_after_ms: ABANDONED_RETRY_AFTER_MS,
                },
            },
            Some(Slot::Completed { record, .. }) => LookupResponse::Completed { record },
        };
        Ok(reply(200, &response))
    }

    /// Complete, release and renew: accepted only from the current claim's token, while the key
    /// store keeps the claim (live, or abandoned: a late answer still wins).
    /// `next` makes what the key then holds (from the claim's body and owner), if anything.
    pub(super) fn fenced(
        &mut self,
        key: &Hex64,
        token: &str,
        now: u64,
        next: impl FnOnce(usize, String) -> Option<Slot>,
    ) -> Option<()> {
        let Some(Slot::InFlight { owner, body, .. }) = self.kept(key, now) else {
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
