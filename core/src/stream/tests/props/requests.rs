//! Requests arriving: their headers and body, the model's prediction of the decision, and what the
//! stream did once the request ended (forwarded, replayed, refused, or waiting on a callout).

use super::*;

impl World {
    pub(super) fn start(
        &mut self,
        envoy: usize,
        caller: usize,
        key: usize,
        body: usize,
        trailers: bool,
        cas_fail: usize,
    ) -> Result<(), TestCaseError> {
        let mut host = FakeHost::new(&self.shared[envoy], &self.clock, &self.ids);
        host.request_headers = vec![
            (":method".into(), b"POST".to_vec()),
            (":path".into(), b"/payments".to_vec()),
            (":authority".into(), b"api".to_vec()),
            ("idempotency-key".into(), KEYS[key].as_bytes().to_vec()),
            ("authorization".into(), CALLERS[caller].as_bytes().to_vec()),
        ];
        host.request_body = BODIES[body].to_vec();
        let stream = Stream::new(self.workers[envoy].clone());
        self.reqs.push(Req {
            id: self.reqs.len(),
            envoy,
            caller,
            key,
            body,
            trailers,
            host,
            stream,
            stage: Stage::Reading,
            answered: 0,
            lease_until: 0,
            renewed_ms: 0,
            at_risk: false,
            forwarded_at: 0,
            outlived: false,
            faulted: false,
            token: None,
            ks_key: None,
            response: None,
            created_at: 0,
            sent_seen: 0,
        });
        let i = self.reqs.len() - 1;
        let eos = BODIES[body].is_empty();
        if eos {
            let expected = self.predict(i, cas_fail);
            self.shared[envoy].fail_next_cas(cas_fail);
            let r = &mut self.reqs[i];
            let flow = r.stream.on_request_headers(&r.host, true);
            self.shared[envoy].fail_next_cas(0);
            return self.after_request_end(i, flow, expected, cas_fail);
        }
        let r = &mut self.reqs[i];
        let flow = r.stream.on_request_headers(&r.host, false);
        let want = if self.cfg.headers_mode == crate::config::HeadersMode::Hold {
            Flow::Pause
        } else {
            Flow::Continue
        };
        prop_assert_eq!(flow, want, "headers with a body to come");
        prop_assert!(r.host.sent.borrow().is_empty());
        Ok(())
    }

    pub(super) fn body(&mut self, i: usize, cas_fail: usize) -> Result<(), TestCaseError> {
        let expected = self.predict(i, cas_fail);
        let envoy = self.reqs[i].envoy;
        self.shared[envoy].fail_next_cas(cas_fail);
        let r = &mut self.reqs[i];
        let len = r.host.request_body.len();
        let flow = if r.trailers {
            let f = r.stream.on_request_body(&r.host, len, false);
            prop_assert_eq!(f, Flow::Pause, "body without end waits");
            r.stream.on_request_trailers(&r.host)
        } else {
            r.stream.on_request_body(&r.host, len, true)
        };
        self.shared[envoy].fail_next_cas(0);
        self.after_request_end(i, flow, expected, cas_fail)
    }

    /// Without a key store: what the model says the decision must be.
    pub(super) fn predict(&self, i: usize, cas_fail: usize) -> Option<Expect> {
        if self.keystore.is_some() {
            return None;
        }
        let r = &self.reqs[i];
        let now = self.now();
        Some(match self.l1_model.get(&(r.caller, r.key)) {
            Some(slot) if slot.live(now) && slot.body() != r.body => Expect::Status(422),
            Some(Slot::InFlight { until, .. }) if now < *until => Expect::Conflict(1),
            Some(Slot::Completed {
                expires, record, ..
            }) if now < *expires => match Record::decode(record).map(|r| r.outcome) {
                Ok(Outcome::Unknown { hold_until_ms }) if now < hold_until_ms => {
                    Expect::Conflict(hold_left_s(hold_until_ms, now))
                }
                Ok(Outcome::Unknown { .. } | Outcome::NotReplayable) => Expect::Status(410),
                _ => Expect::Replay(record.clone()),
            },
            _ if cas_fail >= 16 => Expect::Status(503),
            _ => Expect::Forward,
        })
    }

    pub(super) fn after_request_end(
        &mut self,
        i: usize,
        flow: Flow,
        expected: Option<Expect>,
        cas_fail: usize,
    ) -> Result<(), TestCaseError> {
        let now = self.now();
        if cas_fail >= 16 {
            self.reqs[i].faulted = true;
        }
        let r = &mut self.reqs[i];
        let callouts = r.host.callouts.borrow().len();
        if callouts > r.answered {
            prop_assert_eq!(flow, Flow::Pause, "waits for the claim callout");
            r.stage = Stage::Deciding;
            r.lease_until = now + LEASE_MS;
            let (_, c) = r.host.last_callout().unwrap();
            prop_assert!(path_of(&c).ends_with("/claim"));
            let sent: ClaimRequest = body::decode_request(&c.body).unwrap();
            r.ks_key = Some(sent.key.as_str().to_string());
            prop_assert!(r.host.sent.borrow().is_empty());
            // Learn the fingerprint: one per body, never shared by two bodies.
            let fp = sent.fingerprint.as_str().to_string();
            let body = r.body;
            let ks = self.keystore.as_mut().unwrap();
            prop_assert!(
                ks.fingerprints
                    .iter()
                    .all(|(f, b)| (*f == fp) == (*b == body)),
                "body {} has fingerprint {}, known: {:?}",
                body,
                fp,
                ks.fingerprints
            );
            ks.fingerprints.insert(fp, body);
        } else if flow == Flow::Continue && r.host.sent.borrow().is_empty() {
            self.forwarded(i)?;
        } else {
            prop_assert_eq!(flow, Flow::Pause);
            prop_assert_eq!(
                r.host.sent.borrow().len(),
                1,
                "paused with no callout: answered"
            );
            self.end(i)?;
        }
        self.check_replies(i)?;
        if let Some(expected) = expected {
            let r = &self.reqs[i];
            let got = match r.host.last_sent() {
                None if r.stage == Stage::Forwarded => Expect::Forward,
                None => Expect::Status(0),
                Some(s) if s.header(REPLAYED_HEADER).is_some() => {
                    // Compare with the stored record: decode it to the response.
                    Expect::Replay(Vec::new())
                }
                Some(s) if s.status == 409 => Expect::Conflict(retry_after(&s).unwrap_or(0)),
                Some(s) => Expect::Status(s.status),
            };
            match (&expected, &got) {
                (Expect::Replay(record), Expect::Replay(_)) => {
                    let rec = Record::decode(record).unwrap();
                    let Outcome::Replayable(resp) = rec.outcome else {
                        return Err(TestCaseError::fail("replayed a record without a response"));
                    };
                    let sent = r.host.last_sent().unwrap();
                    let mut headers = resp.headers.clone();
                    crate::expiry::set_header(
                        &mut headers,
                        crate::config::DEFAULT_EXPIRES_HEADER,
                        rec.expires_ms,
                    );
                    headers.push((REPLAYED_HEADER.to_string(), b"true".to_vec()));
                    prop_assert_eq!(
                        (sent.status, &sent.headers, &sent.body),
                        (resp.status, &headers, &resp.body),
                        "replay differs from the model's record"
                    );
                }
                _ => prop_assert_eq!(&expected, &got, "the filter disagrees with the model"),
            }
        }
        Ok(())
    }

    /// The request goes upstream: the truth must let it, and it now owns the claim.
    pub(super) fn forwarded(&mut self, i: usize) -> Result<(), TestCaseError> {
        let now = self.now();
        self.stats.forwarded += 1;
        let frozen = self.frozen[self.reqs[i].envoy];
        let r = &mut self.reqs[i];
        r.stage = Stage::Forwarded;
        r.renewed_ms = now;
        r.lease_until = now + LEASE_MS;
        r.at_risk = frozen;
        r.forwarded_at = now;
        let r = &self.reqs[i];
        let (caller, key, name) = (r.caller, r.key, r.name());
        if self
            .reqs
            .iter()
            .any(|o| o.id != r.id && o.caller == caller && o.key == key && o.executing())
        {
            self.stats.takeover += 1;
        }
        // No live record of this (caller, key) in the truth, whatever its outcome.
        match &mut self.keystore {
            Some(ks) => {
                let Some(k) = &r.ks_key else {
                    return Err(TestCaseError::fail(
                        "forwarded without asking the key store",
                    ));
                };
                let token = r.token.clone();
                let owns = matches!(ks.map.get(k), Some(Slot::InFlight { owner, until, .. })
                        if Some(owner) == token.as_ref() && now < *until);
                prop_assert!(
                    owns,
                    "forwarded without a live key-store claim: {:?}",
                    ks.map.get(k)
                );
            }
            None => {
                if let Some(s) = self.l1_model.get(&(caller, key)) {
                    prop_assert!(
                        !s.live(now),
                        "forwarded while the (caller, key) holds a live {:?}",
                        s
                    );
                }
                let slot = Slot::InFlight {
                    body: r.body,
                    until: now + LEASE_MS,
                    owner: name,
                    keep: 0,
                };
                self.l1_model.insert((caller, key), slot);
            }
        }
        Ok(())
    }

    /// The stream ends after its answer: nothing is left for the root context.
    pub(super) fn end(&mut self, i: usize) -> Result<(), TestCaseError> {
        let e = self.reqs[i].envoy;
        let before = self.handed_over(e);
        let r = &mut self.reqs[i];
        r.stream.on_done(&r.host);
        r.stage = Stage::Done;
        prop_assert_eq!(
            self.handed_over(e),
            before,
            "a stream that ends after its answer hands nothing over"
        );
        Ok(())
    }
}
