//! The invariants on what a client receives: every local reply and replay checked against the
//! executions and claims the truth holds.

use super::*;

impl World {
    /// The local replies of request `i` are ones the model allows.
    pub(super) fn check_replies(&mut self, i: usize) -> Result<(), TestCaseError> {
        let now = self.now();
        let r = &self.reqs[i];
        let sent = r.host.sent.borrow().clone();
        prop_assert!(sent.len() <= 1, "one local reply at most: {:?}", sent);
        if r.executing() {
            prop_assert!(sent.is_empty(), "a forwarded request got a local reply");
        }
        if sent.len() <= r.sent_seen {
            return Ok(());
        }
        let reply = sent.last().unwrap();
        let same = |caller: usize, key: usize| caller == r.caller && key == r.key;
        let others_live = |want_in_flight: bool, other_body: bool| {
            let claims = self.reqs.iter().enumerate().any(|(j, o)| {
                j != i
                    && same(o.caller, o.key)
                    && (!other_body || o.body != r.body)
                    && matches!(
                        o.stage,
                        Stage::Deciding | Stage::Forwarded | Stage::Capturing
                    )
                    && now < o.lease_until
            });
            let records = !want_in_flight
                && (self.executions.iter().any(|e| {
                    same(e.caller, e.key) && (!other_body || e.body != r.body) && now < e.expires
                }) || self.unknowns.iter().any(|u| {
                    same(u.caller, u.key) && (!other_body || u.body != r.body) && now < u.expires
                }));
            let store = match (&self.keystore, &r.ks_key) {
                (Some(ks), Some(k)) => ks.map.get(k).is_some_and(|s| {
                    // An abandoned claim is still the key store's (a 422 for another body).
                    (s.live(now) || s.abandoned(now))
                        && (!other_body || s.body() != r.body)
                        && match s {
                            // Its own claim is no one else's.
                            Slot::InFlight { owner, .. } => Some(owner) != r.token.as_ref(),
                            Slot::Completed { .. } => !want_in_flight,
                        }
                }),
                _ => false,
            };
            claims || records || store
        };
        // An abandoned key-store claim of this (caller, key) and body: when its lease ended.
        let abandoned_since = match (&self.keystore, &r.ks_key) {
            (Some(ks), Some(k)) => ks.map.get(k).and_then(|s| match s {
                Slot::InFlight { until, body, .. } if s.abandoned(now) && *body == r.body => {
                    Some(*until)
                }
                _ => None,
            }),
            _ => None,
        };
        // The unknown outcomes of this very request (same caller, key and body) still recorded.
        let unknown = |u: &Unknown| same(u.caller, u.key) && u.body == r.body && now < u.expires;
        if reply.header(REPLAYED_HEADER).is_some() {
            let mut headers = reply.headers.clone();
            prop_assert_eq!(
                headers.pop(),
                Some((REPLAYED_HEADER.to_string(), b"true".to_vec()))
            );
            // Every replay says until when its key is honoured; the first answer went out before.
            prop_assert_eq!(
                headers.pop().map(|(name, _)| name),
                Some(crate::config::DEFAULT_EXPIRES_HEADER.to_string())
            );
            let got = Resp {
                status: reply.status,
                headers,
                body: reply.body.clone(),
            };
            self.stats.replayed += 1;
            let matched = self.executions.iter().any(|e| {
                same(e.caller, e.key) && e.body == r.body && now < e.expires && e.response == got
            });
            prop_assert!(
                matched,
                "replay {:?} is no live response of caller {} key {} body {}",
                String::from_utf8_lossy(&got.body),
                r.caller,
                r.key,
                r.body
            );
        } else {
            match reply.status {
                409 => {
                    let wait = retry_after(reply);
                    let held = self.unknowns.iter().any(|u| {
                        unknown(u)
                            && now < u.hold_until
                            && wait == Some(hold_left_s(u.hold_until, now))
                    });
                    let in_flight = wait == Some(1) && others_live(true, false);
                    // An abandoned claim is held as an unknown outcome from its lease's end.
                    let abandoned = abandoned_since.is_some_and(|until| {
                        now < until + HOLD_MS && wait == Some(hold_left_s(until + HOLD_MS, now))
                    });
                    prop_assert!(
                        held || in_flight || abandoned,
                        "409 (retry-after {:?}) with no live claim and no unknown outcome on hold",
                        wait
                    );
                    if abandoned {
                        self.stats.abandoned += 1;
                    } else if held {
                        self.stats.held += 1;
                    } else {
                        self.stats.conflict += 1;
                    }
                }
                410 => {
                    let v: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                    let kind = v["type"].as_str().unwrap_or_default();
                    prop_assert!(kind.ends_with("outcome-unknown"), "410 of type {}", kind);
                    let gone = self
                        .unknowns
                        .iter()
                        .any(|u| unknown(u) && u.hold_until <= now)
                        || abandoned_since.is_some_and(|until| until + HOLD_MS <= now);
                    prop_assert!(
                        gone,
                        "410 with no unknown outcome, nor abandoned claim, past its hold"
                    );
                    self.stats.gone += 1;
                }
                422 => {
                    prop_assert!(
                        others_live(false, true),
                        "422 with no live claim or record of another body"
                    );
                    self.stats.mismatch += 1;
                }
                503 => {
                    prop_assert!(r.faulted, "503 without a fault");
                    self.stats.unavailable += 1;
                }
                s => prop_assert!(false, "unexpected local reply {}", s),
            }
        }
        self.reqs[i].sent_seen = sent.len();
        Ok(())
    }
}
