//! The streams' callouts answered by the key store model, with injected faults.

use super::*;

impl World {
    /// Sends a callout to the key store model through `fault`; `req`: the stream that sent it.
    pub(super) fn call_keystore(
        &mut self,
        callout: &Callout,
        fault: Fault,
        req: Option<usize>,
    ) -> Result<(Option<u16>, String), TestCaseError> {
        let path = path_of(callout);
        let auth = callout
            .headers
            .iter()
            .any(|(n, v)| n == "authorization" && v == "Bearer s3cret");
        prop_assert!(auth, "callouts carry the key store token");
        let body_text = String::from_utf8_lossy(&callout.body).to_string();
        prop_assert!(
            !body_text.contains("alice")
                && !body_text.contains("bob")
                && !body_text.contains("amount"),
            "only hashes leave Envoy: {}",
            body_text
        );
        let (status, reply) = if fault.applied() {
            self.ks_apply(&path, &callout.body, req)?
        } else {
            (0, String::new())
        };
        Ok(match fault {
            Fault::None => (Some(status), reply),
            Fault::Unavailable => (Some(503), r#"{"error":"backend unavailable: x"}"#.into()),
            Fault::Reset => (None, String::new()),
            Fault::Garbage => (Some(200), "<html>oops</html>".into()),
            Fault::LostReply => (Some(504), "upstream request timeout".into()),
            Fault::NotSent => return Err(TestCaseError::fail("a callout that was not sent")),
        })
    }

    /// Applies a callout to the key store model, and follows what it stored.
    pub(super) fn ks_apply(
        &mut self,
        path: &str,
        body: &[u8],
        req: Option<usize>,
    ) -> Result<(u16, String), TestCaseError> {
        let now = self.now();
        let ks = self.keystore.as_mut().unwrap();
        let (status, reply) = ks.apply(path, body, now);
        if status != 200 {
            return Ok((status, reply));
        }
        if path.ends_with("/claim") {
            let granted: ClaimAnswer = json::decode(reply.as_bytes()).unwrap();
            if let (Some(i), ClaimResponse::Claimed { token }) = (req, granted.response) {
                self.reqs[i].token = Some(token);
            }
        } else if path.ends_with("/renew") {
            self.stats.renewed += 1;
        } else if path.ends_with("/renew-batch") {
            let answer: RenewBatchResponse = json::decode(reply.as_bytes()).unwrap();
            self.stats.renewed += answer
                .outcomes
                .iter()
                .filter(|o| **o == RenewOutcome::Renewed)
                .count() as u64;
        } else if path.ends_with("/complete") {
            let token = fenced_token(path, body).unwrap();
            let Some(j) = self
                .reqs
                .iter()
                .position(|r| r.token.as_deref() == Some(token.as_str()))
            else {
                return Err(TestCaseError::fail(
                    "a record stored under an unknown token",
                ));
            };
            // Records in the key store are sealed under the plugin's secret.
            let rec = crate::testing::record_of_complete(body);
            // The key store's retention runs from when it stored the record.
            match rec.outcome {
                Outcome::Replayable(resp) => {
                    let Some(e) = self.executions.iter_mut().find(|e| e.req == j) else {
                        return Err(TestCaseError::fail(format!(
                            "a response stored for request {j}, which did not execute"
                        )));
                    };
                    prop_assert_eq!(
                        (resp.status, &resp.headers, &resp.body),
                        (e.response.status, &e.response.headers, &e.response.body),
                        "the stored record is the response of the claim's owner"
                    );
                    e.expires = e.expires.max(now + RETENTION_MS);
                }
                Outcome::Unknown { hold_until_ms } => {
                    let Some(u) = self.unknowns.iter_mut().find(|u| u.req == j) else {
                        return Err(TestCaseError::fail(format!(
                            "an unknown outcome stored for request {j}, whose outcome is known"
                        )));
                    };
                    prop_assert_eq!(hold_until_ms, u.hold_until);
                    u.expires = u.expires.max(now + RETENTION_MS);
                    self.stats.unknown += 1;
                }
                Outcome::NotReplayable => {
                    return Err(TestCaseError::fail("every response here fits"));
                }
            }
        }
        Ok((status, reply))
    }

    pub(super) fn answer(&mut self, i: usize, fault: Fault) -> Result<(), TestCaseError> {
        let r = &mut self.reqs[i];
        let Some((token, callout)) = r.host.callouts.borrow().get(r.answered).cloned() else {
            return Ok(());
        };
        r.answered += 1;
        let (status, reply) = self.call_keystore(&callout, fault, Some(i))?;
        let e = self.reqs[i].envoy;
        let before = self.handed_over(e);
        let r = &mut self.reqs[i];
        if fault != Fault::None {
            r.faulted = true;
        }
        let resumed_req = r.host.resumed_request.get();
        let resumed_resp = r.host.resumed_response.get();
        r.stream
            .on_callout_response(&r.host, token, status, reply.as_bytes());
        let handed = self.handed_over(e) - before;
        let r = &mut self.reqs[i];
        match r.stage {
            Stage::Deciding => {
                prop_assert_eq!(handed, 0, "a claim reply hands nothing over");
                let granted = fault == Fault::None && reply.contains(r#""claimed""#);
                let resumed = r.host.resumed_request.get() > resumed_req;
                prop_assert_eq!(
                    resumed,
                    granted,
                    "a request executes iff its claim is granted"
                );
                if resumed {
                    prop_assert!(r.host.sent.borrow().is_empty());
                    self.forwarded(i)?;
                } else {
                    let sent = r.host.sent.borrow().len();
                    prop_assert_eq!(sent, 1, "a claim answer is a forward or a local reply");
                    self.end(i)?;
                }
            }
            Stage::Abandoned => {
                prop_assert_eq!(
                    r.host.resumed_request.get(),
                    resumed_req,
                    "Envoy answered: never forwarded"
                );
                prop_assert!(r.host.sent.borrow().is_empty(), "Envoy answered already");
                let granted = fault == Fault::None && reply.contains(r#""claimed""#);
                prop_assert_eq!(
                    handed,
                    usize::from(granted),
                    "a claim granted after Envoy answered is released by the root context"
                );
                self.end(i)?;
            }
            Stage::Finishing => {
                prop_assert_eq!(
                    r.host.resumed_response.get(),
                    resumed_resp + 1,
                    "the held response goes on"
                );
                prop_assert_eq!(
                    handed,
                    usize::from(fault != Fault::None),
                    "a write that failed is handed over for retry"
                );
                self.end(i)?;
            }
            _ => {}
        }
        self.check_replies(i)
    }
}
