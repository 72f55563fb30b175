//! The upstream's answers, Envoy's answers in its place and streams reset: what the filter then
//! keeps, releases or locks, in L1 and in the key store.

use super::*;
use crate::outcome::callout;

impl World {
    pub(super) fn respond(
        &mut self,
        i: usize,
        status: u16,
        whole: bool,
    ) -> Result<(), TestCaseError> {
        let callouts = self.reqs[i].host.callouts.borrow().len();
        if self.reqs[i].stage == Stage::Capturing {
            // The rest of the body: Envoy holds only the chunk of this callback.
            let r = &mut self.reqs[i];
            let whole = r.response.as_ref().map_or(0, |resp| resp.body.len());
            r.host.response_body = r.host.response_body.split_off(whole / 2);
            let len = r.host.response_body.len();
            let flow = r.stream.on_response_body(&r.host, len, true);
            return self.executed(i, flow, callouts);
        }
        self.serial += 1;
        let serial = self.serial;
        let r = &mut self.reqs[i];
        let body = format!(
            "{{\"exec\":{serial},\"caller\":{},\"key\":{}}}",
            r.caller, r.key
        )
        .into_bytes();
        // The upstream answered itself: no response flags.
        r.host.properties.clear();
        r.host.response_headers = vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-type".into(), b"application/json".to_vec()),
            ("x-bin".into(), vec![0xff, serial as u8, 0x00]),
            ("date".into(), b"Mon".to_vec()),
            ("set-cookie".into(), b"a=1".to_vec()),
            ("set-cookie".into(), format!("s={serial}").into_bytes()),
        ];
        r.host.response_body = body.clone();
        let ok = (200..300).contains(&status);
        r.response = ok.then(|| Resp {
            status,
            // `set-cookie` is never stored, so a replay never carries it.
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("x-bin".into(), vec![0xff, serial as u8, 0x00]),
            ],
            body: body.clone(),
        });
        let now = self.now();
        let r = &mut self.reqs[i];
        r.created_at = now;
        let mut flow = r.stream.on_response_headers(&r.host, false);
        if !ok {
            // The request did not really run: the key is released, the body streams on. A 503
            // or 504 is read whole first (a proxy on the way may have written Envoy's reset
            // text): its key is released at the end of its body.
            if callout::may_be_envoy_text(status) {
                prop_assert_eq!(flow, Flow::Continue, "the body is read before the release");
                prop_assert_eq!(r.host.callouts.borrow().len(), callouts);
                flow = r.stream.on_response_body(&r.host, body.len(), true);
            }
            self.l1_release(i);
            return self.settled(i, flow, callouts);
        }
        prop_assert_eq!(flow, Flow::Continue, "the response body is captured");
        prop_assert_eq!(
            r.host.response_headers_set.borrow().last().cloned(),
            Some((
                crate::config::DEFAULT_EXPIRES_HEADER.to_string(),
                crate::expiry::http_date(now + RETENTION_MS).into_bytes()
            )),
            "the first answer says until when its key is honoured"
        );
        if whole {
            let flow = r.stream.on_response_body(&r.host, body.len(), true);
            return self.executed(i, flow, callouts);
        }
        let flow = r.stream.on_response_body(&r.host, body.len() / 2, false);
        prop_assert_eq!(flow, Flow::Continue, "streamed on while it is copied");
        prop_assert_eq!(r.host.callouts.borrow().len(), callouts);
        r.stage = Stage::Capturing;
        Ok(())
    }

    /// The upstream's whole 2xx arrived: it is kept.
    pub(super) fn executed(
        &mut self,
        i: usize,
        flow: Flow,
        callouts: usize,
    ) -> Result<(), TestCaseError> {
        let r = &self.reqs[i];
        let now = r.created_at;
        let Some(response) = r.response.clone() else {
            return Err(TestCaseError::fail("captured a response that is not kept"));
        };
        self.executions.push(Execution {
            req: i,
            caller: r.caller,
            key: r.key,
            body: r.body,
            response: response.clone(),
            expires: now + RETENTION_MS,
        });
        if self.keystore.is_none() {
            let record = Record {
                fingerprint: [0; 32],
                created_ms: now,
                expires_ms: now + RETENTION_MS,
                outcome: Outcome::Replayable(StoredResponse {
                    status: response.status,
                    headers: response.headers,
                    body: response.body,
                    ..StoredResponse::default()
                }),
            };
            self.l1_keep(i, record);
        }
        self.settled(i, flow, callouts)
    }

    /// After the end of an execution: with a key store, the response waits for its write.
    pub(super) fn settled(
        &mut self,
        i: usize,
        flow: Flow,
        callouts: usize,
    ) -> Result<(), TestCaseError> {
        let r = &mut self.reqs[i];
        let dispatched = r.host.callouts.borrow().len() > callouts;
        prop_assert_eq!(
            dispatched,
            self.keystore.is_some(),
            "with a key store, every end of an execution is written there first"
        );
        if dispatched {
            prop_assert_eq!(flow, Flow::Pause, "held until the key store answers");
            r.stage = Stage::Finishing;
            Ok(())
        } else {
            prop_assert_eq!(flow, Flow::Continue);
            self.end(i)
        }
    }

    /// Without a key store, L1 keeps `record` for request `i`, unless another request holds a
    /// live claim or record for the key. Returns whether it did.
    pub(super) fn l1_keep(&mut self, i: usize, record: Record) -> bool {
        if self.keystore.is_some() {
            return false;
        }
        let now = self.now();
        let r = &self.reqs[i];
        let name = r.name();
        let free = match self.l1_model.get(&(r.caller, r.key)) {
            None => true,
            Some(s) => !s.live(now) || matches!(s, Slot::InFlight { owner, .. } if *owner == name),
        };
        if free {
            let slot = Slot::Completed {
                body: r.body,
                expires: record.expires_ms,
                record: record.encode(),
            };
            self.l1_model.insert((r.caller, r.key), slot);
        }
        free
    }

    /// Without a key store, L1 drops request `i`'s claim, if it still holds it.
    pub(super) fn l1_release(&mut self, i: usize) {
        if self.keystore.is_some() {
            return;
        }
        let r = &self.reqs[i];
        let key = (r.caller, r.key);
        if matches!(self.l1_model.get(&key), Some(Slot::InFlight { owner, .. }) if *owner == r.name())
        {
            self.l1_model.remove(&key);
        }
    }

    /// Request `i` was forwarded and no complete answer came back: under the lock policy, the key
    /// is locked as "outcome unknown"; under the release policy, it is released.
    pub(super) fn unknown_outcome(&mut self, i: usize) {
        if self.release_policy {
            return self.l1_release(i);
        }
        let now = self.now();
        let r = &self.reqs[i];
        let hold_until = now + HOLD_MS;
        self.unknowns.push(Unknown {
            req: i,
            caller: r.caller,
            key: r.key,
            body: r.body,
            hold_until,
            expires: now + RETENTION_MS,
        });
        let record = Record {
            fingerprint: [0; 32],
            created_ms: now,
            expires_ms: now + RETENTION_MS,
            outcome: Outcome::Unknown {
                hold_until_ms: hold_until,
            },
        };
        if self.l1_keep(i, record) {
            self.stats.unknown += 1;
        }
    }

    pub(super) fn envoy_answers(
        &mut self,
        i: usize,
        answer: EnvoyAnswer,
    ) -> Result<(), TestCaseError> {
        let (status, flags) = answer.status_and_flags();
        let r = &mut self.reqs[i];
        r.host.properties.insert(
            vec!["response".into(), "flags".into()],
            flags.to_le_bytes().to_vec(),
        );
        r.host.response_headers = vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-type".into(), b"text/plain".to_vec()),
        ];
        r.host.response_body = b"answered by envoy".to_vec();
        let callouts = r.host.callouts.borrow().len();
        if answer == EnvoyAnswer::RequestTimeout {
            // While the claim is pending: the request never reached the upstream.
            let flow = r.stream.on_response_headers(&r.host, true);
            prop_assert_eq!(
                flow,
                Flow::Continue,
                "nothing to hold: Envoy's reply goes on"
            );
            prop_assert_eq!(r.host.callouts.borrow().len(), callouts);
            prop_assert!(r.host.sent.borrow().is_empty());
            r.stage = Stage::Abandoned;
            r.lease_until = 0;
            return Ok(());
        }
        let mut flow = r.stream.on_response_headers(&r.host, false);
        if flow == Flow::Continue {
            let len = r.host.response_body.len();
            flow = r.stream.on_response_body(&r.host, len, true);
        }
        if answer.may_have_executed() {
            self.unknown_outcome(i);
        } else {
            self.l1_release(i);
        }
        self.settled(i, flow, callouts)
    }

    pub(super) fn reset(
        &mut self,
        i: usize,
        pending_applied: bool,
        delivered: bool,
    ) -> Result<(), TestCaseError> {
        let stage = self.reqs[i].stage;
        let e = self.reqs[i].envoy;
        // A callout still pending may reach the key store; its reply is lost with the stream.
        let waiting = [Stage::Deciding, Stage::Abandoned, Stage::Finishing];
        if pending_applied && self.keystore.is_some() && waiting.contains(&stage) {
            let r = &self.reqs[i];
            let pending = r.host.callouts.borrow().get(r.answered).cloned();
            if let Some((_, c)) = pending {
                self.call_keystore(&c, Fault::LostReply, Some(i))?;
            }
        }
        let before = self.handed_over(e);
        let r = &mut self.reqs[i];
        r.answered = r.host.callouts.borrow().len();
        r.stream.on_done(&r.host);
        r.stage = Stage::Done;
        let handed = self.handed_over(e) - before;
        let executing = EXECUTING.contains(&stage);
        if executing {
            self.unknown_outcome(i);
        }
        prop_assert_eq!(
            handed,
            usize::from(
                self.keystore.is_some()
                    && (executing || matches!(stage, Stage::Finishing | Stage::Deciding))
            ),
            "a stream that ends while its request executes, its claim or its write is pending \
             hands one write over (a claim: the release of its proposed token), and nothing \
             otherwise (was {:?})",
            stage
        );
        if delivered && self.keystore.is_some() && !self.frozen[e] {
            self.tick(e, 0, &mut 0)?;
        }
        Ok(())
    }
}
