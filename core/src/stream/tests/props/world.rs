//! The world of the property tests: its Envoys, clock and truth, the operations it runs, and time
//! passing (the root contexts' ticks: renewals and hand-over writes, with their faults).

use super::*;

impl World {
    pub(super) fn new(with_keystore: bool, stream_mode: bool, release_policy: bool) -> World {
        // Each stream's key-store call on its own callout, as the model answers them: batches
        // (group commit) have their own property test, `background/batch/tests.rs`.
        let ks = if with_keystore {
            r#","keystore":{"cluster":"ks","token":"s3cret","batch_max_entries":0}"#
        } else {
            ""
        };
        let mode = if stream_mode { "stream" } else { "hold" };
        let policy = if release_policy { "release" } else { "lock" };
        let json = format!(
            r#"{{"lock_lease_ms":{LEASE_MS},"retention_s":{},"unknown_outcome":"{policy}","unknown_hold_ms":{HOLD_MS},"l1_slots":2,"headers_mode":"{mode}","failure_mode":"fail_closed"{ks}}}"#,
            RETENTION_MS / 1000
        );
        let cfg = Config::parse(crate::testing::with_test_secret(&json).as_bytes()).unwrap();
        let envoys = if with_keystore { 2 } else { 1 };
        let mut workers = Vec::new();
        let mut shared = Vec::new();
        for _ in 0..envoys {
            let s = FakeShared::default();
            let bytes = crate::testing::with_test_secret(&json);
            workers.push(Rc::new(configure(bytes.as_bytes(), &s).unwrap()));
            shared.push(s);
        }
        let start = 1_000_000;
        World {
            cfg: Rc::new(cfg),
            workers,
            shared,
            clock: Rc::new(Cell::new(start)),
            ids: Rc::new(Cell::new(0)),
            keystore: with_keystore.then(KeyStore::default),
            l1_model: HashMap::new(),
            release_policy,
            reqs: Vec::new(),
            executions: Vec::new(),
            unknowns: Vec::new(),
            serial: 0,
            frozen: vec![false; envoys],
            next_tick: start + TICK_MS,
            root_calls: 0,
            stats: Stats::default(),
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.clock.get()
    }

    pub(super) fn pick(&self, s: usize, stages: &[Stage]) -> Option<usize> {
        let live: Vec<usize> = (0..self.reqs.len())
            .filter(|&i| stages.contains(&self.reqs[i].stage))
            .collect();
        if live.is_empty() {
            None
        } else {
            Some(live[s % live.len()])
        }
    }

    /// Writes the streams of Envoy `e` handed to its root context and not settled yet.
    pub(super) fn handed_over(&self, e: usize) -> usize {
        self.workers[e].writes.borrow().pending()
    }

    pub(super) fn run(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Start {
                envoy,
                caller,
                key,
                body,
                trailers,
                cas_fail,
            } => self.start(
                envoy % self.shared.len(),
                caller,
                key,
                body,
                trailers,
                cas_fail,
            )?,
            Op::Retry {
                envoy,
                of,
                trailers,
                cas_fail,
            } => {
                if !self.reqs.is_empty() {
                    let r = &self.reqs[of % self.reqs.len()];
                    let (caller, key, body) = (r.caller, r.key, r.body);
                    let envoy = envoy % self.shared.len();
                    self.start(envoy, caller, key, body, trailers, cas_fail)?;
                }
            }
            Op::Body { s, cas_fail } => {
                if let Some(i) = self.pick(s, &[Stage::Reading]) {
                    self.body(i, cas_fail)?;
                }
            }
            Op::Answer { s, fault } => {
                let stages = [Stage::Deciding, Stage::Abandoned, Stage::Finishing];
                if let Some(i) = self.pick(s, &stages) {
                    self.answer(i, fault)?;
                }
            }
            Op::Respond { s, status, whole } => {
                if let Some(i) = self.pick(s, &EXECUTING) {
                    self.respond(i, status, whole)?;
                }
            }
            Op::Envoy { s, answer } => {
                let stage = if answer == EnvoyAnswer::RequestTimeout {
                    Stage::Deciding
                } else {
                    Stage::Forwarded
                };
                if let Some(i) = self.pick(s, &[stage]) {
                    self.envoy_answers(i, answer)?;
                }
            }
            Op::Reset {
                s,
                pending_applied,
                delivered,
            } => {
                let stages = [
                    Stage::Reading,
                    Stage::Deciding,
                    Stage::Abandoned,
                    Stage::Forwarded,
                    Stage::Capturing,
                    Stage::Finishing,
                ];
                if let Some(i) = self.pick(s, &stages) {
                    self.reset(i, pending_applied, delivered)?;
                }
            }
            Op::Freeze { envoy } => {
                let e = envoy % self.frozen.len();
                self.frozen[e] = !self.frozen[e];
                if self.frozen[e] {
                    for r in self.reqs.iter_mut().filter(|r| r.envoy == e) {
                        r.at_risk |= r.executing();
                    }
                }
            }
            Op::Advance { ms, faults } => self.advance(ms, faults)?,
        }
        self.check_leases()
    }

    /// Time passes; the root context of every Envoy that is not frozen ticks every `TICK_MS`.
    pub(super) fn advance(&mut self, ms: u64, faults: u64) -> Result<(), TestCaseError> {
        let target = self.now() + ms;
        let mut n = 0;
        while self.next_tick <= target {
            self.clock.set(self.next_tick);
            for e in 0..self.workers.len() {
                if !self.frozen[e] {
                    self.tick(e, faults, &mut n)?;
                }
            }
            self.check_leases()?;
            self.next_tick += TICK_MS;
        }
        self.clock.set(target);
        Ok(())
    }

    /// One tick of Envoy `e`'s root context: renewals, and the writes streams handed over, sent
    /// at once; their replies (with the faults of `faults`) are fed back.
    pub(super) fn tick(
        &mut self,
        e: usize,
        faults: u64,
        n: &mut usize,
    ) -> Result<(), TestCaseError> {
        let now = self.now();
        for r in self.reqs.iter_mut() {
            // A renewal extends an L1 claim only while it is live.
            if r.envoy == e && r.executing() && now < r.lease_until {
                r.lease_until = now + LEASE_MS;
            }
        }
        let out = self.workers[e].on_tick(&self.shared[e], now);
        if self.keystore.is_none() {
            prop_assert!(
                out.is_empty(),
                "no key store: the root context sends nothing"
            );
            self.renew_l1_model(e, now);
            return Ok(());
        }
        for action in out {
            let RootAction::Send(callout, purpose) = action else {
                return Err(TestCaseError::fail(format!(
                    "no waiters and no detached execution here, yet the root context would {action:?}"
                )));
            };
            let fault = fault_at(faults, *n);
            *n += 1;
            self.root_calls += 1;
            let token = 1_000_000 + self.root_calls;
            let path = path_of(&callout);
            let ks_tokens = fenced_tokens(&path, &callout.body)
                .map_err(|e| TestCaseError::fail(format!("root callout body: {e}")))?;
            let mut owners = Vec::new();
            for ks_token in &ks_tokens {
                let owner = self.reqs.iter().position(|r| {
                    r.token.as_deref() == Some(ks_token.as_str())
                        || proposed_token(r).as_deref() == Some(ks_token.as_str())
                });
                let Some(j) = owner else {
                    return Err(TestCaseError::fail(format!(
                        "the root context sent {path} with a token the key store never granted"
                    )));
                };
                owners.push(j);
            }
            match &purpose {
                Purpose::Renewal(keys) => {
                    prop_assert!(path.ends_with("/renew-batch"), "a renewal is {}", path);
                    prop_assert_eq!(keys.len(), owners.len(), "one key per entry");
                    for &j in &owners {
                        prop_assert!(
                            self.reqs[j].envoy == e && self.reqs[j].executing(),
                            "renewed request {} no longer executes on this Envoy",
                            j
                        );
                    }
                }
                Purpose::Write(_) => prop_assert!(
                    path.ends_with("/complete") || path.ends_with("/release"),
                    "a handed-over write is {}",
                    path
                ),
                other => {
                    return Err(TestCaseError::fail(format!(
                        "unexpected root callout {other:?}"
                    )))
                }
            }
            if fault == Fault::NotSent {
                let before = self.handed_over(e);
                let renewal = matches!(purpose, Purpose::Renewal(_));
                let more =
                    self.workers[e].not_sent(purpose, "cluster not found", &self.shared[e], now);
                prop_assert!(more.is_empty(), "nothing to answer: {:?}", more);
                for &j in &owners {
                    self.reqs[j].at_risk |= renewal;
                }
                prop_assert_eq!(
                    self.handed_over(e),
                    before + usize::from(!renewal),
                    "a write that could not be sent is queued again, a renewal is not"
                );
                continue;
            }
            self.workers[e].sent(token, purpose.clone(), now);
            let (status, reply) = self.call_keystore(&callout, fault, None)?;
            let (root, more) = self.workers[e].on_reply(
                token,
                status,
                Vec::new(),
                reply.clone().into_bytes(),
                &self.shared[e],
                now,
            );
            prop_assert!(
                more.iter().all(|a| matches!(a, RootAction::Count(_))),
                "only counts: {:?}",
                more
            );
            match purpose {
                Purpose::Renewal(keys) => {
                    if !fault.applied() {
                        for &j in &owners {
                            self.reqs[j].at_risk = true;
                        }
                    }
                    let want = match (fault, status) {
                        (Fault::None, Some(200)) => {
                            let answer: RenewBatchResponse = json::decode(reply.as_bytes())
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            let refused: Vec<_> = keys
                                .iter()
                                .zip(&answer.outcomes)
                                .filter(|(_, o)| **o == RenewOutcome::Stale)
                                .map(|(k, _)| *k)
                                .collect();
                            RootReply::Renewals {
                                renewed: keys.len() - refused.len(),
                                refused,
                            }
                        }
                        _ => RootReply::RenewalFailed {
                            keys: keys.len(),
                            error: String::new(),
                        },
                    };
                    let same = match (&root, &want) {
                        (
                            RootReply::RenewalFailed { keys: a, .. },
                            RootReply::RenewalFailed { keys: b, .. },
                        ) => a == b,
                        (a, b) => a == b,
                    };
                    prop_assert!(same, "renewal reply {:?}, expected {:?}", root, want);
                    let counted = more
                        .iter()
                        .filter(|a| {
                            matches!(
                                a,
                                RootAction::Count(
                                    crate::metrics::Metric::RenewalRefused
                                        | crate::metrics::Metric::StoreError
                                )
                            )
                        })
                        .count();
                    let expected = match &want {
                        RootReply::Renewals { refused, .. } => refused.len(),
                        _ => keys.len(),
                    };
                    prop_assert_eq!(counted, expected, "one count per refused or failed key");
                }
                Purpose::WriteThenAnswer(..) | Purpose::Detached(_) | Purpose::Batch(_) => {}
                Purpose::Write(_) => {
                    let ok = match fault {
                        Fault::None => root == RootReply::Write(Settled::Done),
                        _ => matches!(root, RootReply::Write(Settled::Retrying(_))),
                    };
                    prop_assert!(ok, "write reply {:?} under {:?}", root, fault);
                }
            }
        }
        Ok(())
    }

    /// The worker renews each claim it executes under once a third of the lease has gone; L1
    /// extends it if it is still the owner's and live.
    pub(super) fn renew_l1_model(&mut self, e: usize, now: u64) {
        let period = LEASE_MS / 3;
        for r in self.reqs.iter_mut() {
            if r.envoy != e || !r.executing() || now - r.renewed_ms < period {
                continue;
            }
            r.renewed_ms = now;
            let name = r.name();
            if let Some(Slot::InFlight { owner, until, .. }) =
                self.l1_model.get_mut(&(r.caller, r.key))
            {
                if *owner == name && now < *until {
                    *until = now + LEASE_MS;
                    self.stats.renewed += 1;
                }
            }
        }
    }

    /// A request that executes, on an Envoy that ticks, and whose renewals all arrived, still
    /// owns a live claim in the truth.
    pub(super) fn check_leases(&mut self) -> Result<(), TestCaseError> {
        let now = self.now();
        for r in self.reqs.iter_mut().filter(|r| r.executing() && !r.at_risk) {
            let slot = match &self.keystore {
                None => self.l1_model.get(&(r.caller, r.key)),
                Some(ks) => r.ks_key.as_ref().and_then(|k| ks.map.get(k)),
            };
            let owner = match &self.keystore {
                None => Some(r.name()),
                Some(_) => r.token.clone(),
            };
            let holds = matches!(slot, Some(Slot::InFlight { owner: o, until, .. })
                if Some(o) == owner.as_ref() && now < *until);
            prop_assert!(
                holds,
                "request {} executes on an Envoy that ticks, yet lost its claim: {:?}",
                r.id,
                slot
            );
            if !r.outlived && now > r.forwarded_at + LEASE_MS {
                r.outlived = true;
                self.stats.outlived += 1;
            }
        }
        Ok(())
    }
}
