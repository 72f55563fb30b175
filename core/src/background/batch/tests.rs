//! Group commit driven at random: streams submit calls (claims, lookups, completes, releases),
//! callouts come back in any order, whole or failed (no reply, 503, garbage, answers that do not
//! match the batch), batches cannot be sent, and streams end while their calls wait or travel.
//!
//! Invariants, after every step:
//! - each call of a stream that is still there gets exactly one answer, its own (a claim's answer
//!   names its key), and a failed batch is a failed call for each of its entries;
//! - a stream that ended gets nothing, and no answer goes to another stream;
//! - no batch holds more than `batch_max_entries`, and never more callouts travel than
//!   `batches_in_flight` (a stream's call that ended with its stream no longer counts);
//! - nothing waits while a slot is free (the wake-ups the streams and the root context give
//!   are enough), and at the end nothing is left queued or in flight.

use super::*;
use crate::background::actions::{Purpose, RootAction};
use crate::background::worker::Worker;
use crate::configure::configure;
use crate::keystore_client;
use crate::testing::FakeShared;
use idempotency_protocol::{
    body, BatchAnswer, BatchRequest, BatchResponse, ClaimAnswer, ClaimResponse, Compact,
    FencedResponse, Format, LookupResponse,
};
use proptest::prelude::*;
use std::collections::HashMap;

const STREAMS: u32 = 6;

fn worker(max_entries: usize, in_flight: usize) -> Worker {
    let json = format!(
        r#"{{"keystore":{{"cluster":"ks","batch_max_entries":{max_entries},"batches_in_flight":{in_flight}}}}}"#
    );
    configure(
        crate::testing::with_test_secret(&json).as_bytes(),
        &FakeShared::default(),
    )
    .unwrap()
}

/// A call whose answer can be told from any other's: its key is `n`.
fn call(n: u32, kind: u8) -> StoreCall {
    let key = crate::scope::RecordKey(key_bytes(n));
    let fp = [0u8; 32];
    match kind % 4 {
        0 => {
            let terms = keystore_client::ClaimTerms {
                lease_ms: 1000,
                wait_ms: 0,
                abandoned: keystore_client::AbandonedPolicy::Report,
                retention_ms: 1000,
            };
            keystore_client::claim_call(&key, &fp, "tok", &terms)
        }
        1 => keystore_client::lookup_call(&key, &fp),
        2 => keystore_client::release_call(&key, "tok"),
        _ => StoreCall::Complete(idempotency_protocol::CompleteRequest {
            key: idempotency_protocol::Hex64::from_bytes(&key.0),
            token: "tok".into(),
            record: vec![1, 2, 3],
            retention_ms: 1000,
        }),
    }
}

fn key_bytes(n: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k
}

/// The key store's answer to one call: a claim is granted with its key as the token.
fn answer_to(call: &StoreCall) -> BatchAnswer {
    match call {
        StoreCall::Claim(c) => BatchAnswer::Claim(ClaimAnswer {
            response: ClaimResponse::Claimed {
                token: c.key.as_str().to_string(),
            },
            waited: false,
        }),
        StoreCall::Lookup(_) => BatchAnswer::Lookup(LookupResponse::Absent),
        StoreCall::Release(_) => BatchAnswer::Release(FencedResponse::Released),
        StoreCall::Complete(_) => BatchAnswer::Complete(FencedResponse::Stale),
    }
}

/// Whether `(status, body)` is the right answer to `call` (`ok`), or a failed call.
fn check_answer(call: &StoreCall, status: Option<u16>, body: &[u8], ok: bool) -> bool {
    if !ok {
        return status.is_none();
    }
    let want = answer_to(call);
    if status != Some(want.status()) {
        return false;
    }
    match (call, want) {
        (StoreCall::Claim(c), _) => body::decode::<ClaimAnswer>(body).is_ok_and(|a| {
            a.response
                == ClaimResponse::Claimed {
                    token: c.key.as_str().to_string(),
                }
        }),
        (_, BatchAnswer::Lookup(l)) => body::decode::<LookupResponse>(body).is_ok_and(|a| a == l),
        (_, BatchAnswer::Release(f) | BatchAnswer::Complete(f)) => {
            body::decode::<FencedResponse>(body).is_ok_and(|a| a == f)
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Status503,
    Reset,
    Garbage,
    /// One answer short.
    Short,
    NotSent,
    /// A key store that predates `/v1/batch`: 404 to a batch (then every call goes alone).
    NoBatchEndpoint,
}

#[derive(Debug, Clone)]
enum Op {
    Submit(u32, u8),
    /// The i-th callout in flight (modulo their number) returns.
    Land(usize, Fault),
    End(u32),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let fault = prop_oneof![
        6 => Just(Fault::None),
        1 => Just(Fault::Status503),
        1 => Just(Fault::Reset),
        1 => Just(Fault::Garbage),
        1 => Just(Fault::Short),
        1 => Just(Fault::NotSent),
        1 => Just(Fault::NoBatchEndpoint),
    ];
    prop_oneof![
        6 => (0..STREAMS, any::<u8>()).prop_map(|(s, k)| Op::Submit(s, k)),
        5 => (any::<usize>(), fault).prop_map(|(i, f)| Op::Land(i, f)),
        1 => (0..STREAMS).prop_map(Op::End),
        1 => Just(Op::Tick),
    ]
}

/// A callout on its way: a stream's own, or a batch of the root context.
struct Travelling {
    token: u32,
    callout: Callout,
    /// The stream whose own call this is (its reply goes to it directly).
    stream: Option<u32>,
}

struct Sim {
    worker: Worker,
    max_entries: usize,
    max_in_flight: usize,
    /// Each stream slot's current Envoy context id (a new one after it ends).
    ids: Vec<u32>,
    /// The call each live stream waits on: (the id it is paused on, the call).
    waiting: HashMap<u32, (Option<u32>, StoreCall)>,
    travelling: Vec<Travelling>,
    next_token: u32,
    next_key: u32,
    ended: Vec<u32>,
}

impl Sim {
    fn new(max_entries: usize, max_in_flight: usize) -> Sim {
        Sim {
            worker: worker(max_entries, max_in_flight),
            max_entries,
            max_in_flight,
            ids: (1..=STREAMS).collect(),
            waiting: HashMap::new(),
            travelling: Vec::new(),
            next_token: 1,
            next_key: 1,
            ended: Vec::new(),
        }
    }

    fn token(&mut self) -> u32 {
        self.next_token += 1;
        self.next_token
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Submit(s, kind) => {
                let id = self.ids[s as usize];
                if self.waiting.contains_key(&id) {
                    return Ok(());
                }
                self.next_key += 1;
                let c = call(self.next_key, kind);
                let ks = self.worker.cfg.keystore.clone().unwrap();
                let single = keystore_client::single(&ks, &c);
                match self.worker.submit_call(id, c.clone(), single) {
                    Submitted::Now(callout) => {
                        let token = self.token();
                        self.worker.batcher.borrow_mut().sent_single(token, id);
                        self.travelling.push(Travelling {
                            token,
                            callout,
                            stream: Some(id),
                        });
                        self.waiting.insert(id, (Some(token), c));
                    }
                    Submitted::Queued(entry) => {
                        prop_assert!(entry & ENTRY_BIT != 0);
                        self.waiting.insert(id, (Some(entry), c));
                    }
                    Submitted::Alone(_) => prop_assert!(false, "no call here waits"),
                }
            }
            Op::Land(i, fault) => {
                if self.travelling.is_empty() {
                    return Ok(());
                }
                let t = self.travelling.remove(i % self.travelling.len());
                self.land(t, fault)?;
            }
            Op::End(s) => {
                let id = self.ids[s as usize];
                self.waiting.remove(&id);
                self.ended.push(id);
                self.ids[s as usize] = id + 1000;
                if self.worker.batcher.borrow_mut().forget(id) {
                    self.flush()?;
                }
            }
            Op::Tick => self.flush()?,
        }
        let b = self.worker.batcher.borrow();
        prop_assert!(!b.ready(), "calls wait while a slot is free");
        prop_assert!(
            !b.enabled() || b.in_flight() <= self.max_in_flight,
            "{} in flight",
            b.in_flight()
        );
        Ok(())
    }

    /// The root context is woken: it sends what waits.
    fn flush(&mut self) -> Result<(), TestCaseError> {
        let actions = self.worker.flush_batches();
        self.carry_out(actions, Fault::None)
    }

    fn carry_out(&mut self, actions: Vec<RootAction>, fault: Fault) -> Result<(), TestCaseError> {
        let mut todo: std::collections::VecDeque<RootAction> = actions.into();
        let mut refuse = matches!(fault, Fault::NotSent);
        while let Some(action) = todo.pop_front() {
            match action {
                RootAction::Send(callout, purpose) => {
                    let Purpose::Batch(flight) = &purpose else {
                        prop_assert!(false, "only batches here");
                        continue;
                    };
                    prop_assert!(flight.entries.len() <= self.max_entries);
                    prop_assert!(
                        flight.single || self.worker.batcher.borrow().enabled(),
                        "a batch after the key store said it has no batch endpoint"
                    );
                    if refuse {
                        // One refusal per step: the next batch goes.
                        refuse = false;
                        let shared = FakeShared::default();
                        let more = self.worker.not_sent(purpose, "refused", &shared, 0);
                        for a in more.into_iter().rev() {
                            todo.push_front(a);
                        }
                        continue;
                    }
                    let token = self.token();
                    self.worker.sent(token, purpose, 0);
                    self.travelling.push(Travelling {
                        token,
                        callout,
                        stream: None,
                    });
                }
                RootAction::Deliver(d) => {
                    self.deliver(d.stream_id, d.token, d.status, &d.body, fault)?
                }
                RootAction::Count(_) | RootAction::Answer(_) => {}
            }
        }
        Ok(())
    }

    /// An answer reaches stream `id`, which is paused on `token`.
    fn deliver(
        &mut self,
        id: u32,
        token: u32,
        status: Option<u16>,
        body: &[u8],
        fault: Fault,
    ) -> Result<(), TestCaseError> {
        prop_assert!(!self.ended.contains(&id), "answer for ended stream {}", id);
        let Some((expected, call)) = self.waiting.remove(&id) else {
            prop_assert!(false, "answer for stream {} that waits for none", id);
            return Ok(());
        };
        prop_assert_eq!(expected, Some(token), "answer under another id");
        // Right, or (only under a fault) a failed call: no answer, or one the stream refuses.
        let right = check_answer(&call, status, body, true);
        let failed = check_answer(&call, status, body, false)
            || status == Some(503)
            || (status == Some(200) && body.first() == Some(&1) && body.get(1) == Some(&0xff));
        prop_assert!(
            right || (failed && !matches!(fault, Fault::None)),
            "wrong answer {:?} {:?} to {:?}",
            status,
            String::from_utf8_lossy(body),
            call
        );
        Ok(())
    }

    /// The key store's reply to a travelling callout, under `fault`.
    fn land(&mut self, t: Travelling, fault: Fault) -> Result<(), TestCaseError> {
        let path = t
            .callout
            .headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let (status, reply) = match fault {
            Fault::Status503 => (Some(503), b"{}".to_vec()),
            Fault::Reset => (None, Vec::new()),
            Fault::Garbage => (Some(200), b"\x01\xff\xff".to_vec()),
            Fault::NoBatchEndpoint if path.ends_with("/batch") => (Some(404), b"{}".to_vec()),
            _ if path.ends_with("/batch") => {
                let req: BatchRequest = body::decode_request(&t.callout.body).unwrap();
                let mut answers: Vec<BatchAnswer> = req.entries.iter().map(answer_to).collect();
                if matches!(fault, Fault::Short) {
                    answers.pop();
                }
                (Some(200), BatchResponse { answers }.to_compact())
            }
            _ => {
                let c = self.single_call(&path, &t.callout.body);
                let a = answer_to(&c);
                let status = a.status();
                let body = match a {
                    BatchAnswer::Claim(c) => Format::Compact.encode(&c),
                    BatchAnswer::Lookup(l) => Format::Compact.encode(&l),
                    BatchAnswer::Release(f) | BatchAnswer::Complete(f) => {
                        Format::Compact.encode(&f)
                    }
                    BatchAnswer::Error { .. } => Vec::new(),
                };
                (Some(status), body)
            }
        };
        let shared = FakeShared::default();
        if let Some(stream) = t.stream {
            // A stream's own call: Envoy gives the reply to the stream, if it is still there.
            let freed = self.worker.batcher.borrow_mut().single_landed(t.token);
            if !self.ended.contains(&stream) {
                let ok = matches!(
                    fault,
                    Fault::None | Fault::Short | Fault::NotSent | Fault::NoBatchEndpoint
                );
                let (expected, call) = self.waiting.remove(&stream).unwrap();
                prop_assert_eq!(expected, Some(t.token));
                prop_assert!(freed.is_some());
                if ok {
                    prop_assert!(check_answer(&call, status, &reply, true));
                }
            }
            if self.worker.batcher.borrow().ready() {
                self.flush()?;
            }
            return Ok(());
        }
        let (_, actions) = self
            .worker
            .on_reply(t.token, status, Vec::new(), reply, &shared, 0);
        self.carry_out(actions, fault)
    }

    fn single_call(&self, path: &str, b: &[u8]) -> StoreCall {
        match path.rsplit('/').next().unwrap_or_default() {
            "claim" => StoreCall::Claim(body::decode_request(b).unwrap()),
            "lookup" => StoreCall::Lookup(body::decode_request(b).unwrap()),
            "release" => StoreCall::Release(body::decode_request(b).unwrap()),
            _ => StoreCall::Complete(body::decode_request(b).unwrap()),
        }
    }

    /// Every callout returns: every live stream has its answer, nothing is left.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        while !self.travelling.is_empty() {
            let t = self.travelling.remove(0);
            self.land(t, Fault::None)?;
        }
        let b = self.worker.batcher.borrow();
        prop_assert_eq!(b.queued(), 0);
        prop_assert_eq!(b.in_flight(), 0);
        prop_assert!(self.waiting.is_empty(), "unanswered: {:?}", self.waiting);
        Ok(())
    }
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(64))]

    #[test]
    fn batches_split_fail_and_answer_out_of_order(
        max_entries in 1usize..5,
        in_flight in 1usize..3,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut sim = Sim::new(max_entries, in_flight);
        for op in ops {
            sim.step(op)?;
        }
        sim.drain()?;
    }
}

#[test]
fn a_quiet_worker_sends_at_once_and_a_busy_one_gathers() {
    let mut sim = Sim::new(8, 1);
    sim.step(Op::Submit(0, 0)).unwrap();
    assert_eq!(sim.travelling.len(), 1, "the first call leaves at once");
    for s in 1..5 {
        sim.step(Op::Submit(s, s as u8)).unwrap();
    }
    assert_eq!(sim.travelling.len(), 1, "the others wait");
    assert_eq!(sim.worker.batcher.borrow().queued(), 4);
    sim.step(Op::Land(0, Fault::None)).unwrap();
    assert_eq!(sim.travelling.len(), 1, "one batch");
    assert!(sim.travelling[0]
        .callout
        .headers
        .iter()
        .any(|(_, v)| v == "/v1/batch"));
    assert_eq!(sim.worker.batcher.borrow().sent_entries, 4);
    sim.drain().unwrap();
}

#[test]
fn a_key_store_without_the_batch_endpoint_gets_each_call_alone() {
    let mut sim = Sim::new(8, 1);
    for s in 0..4 {
        sim.step(Op::Submit(s, s as u8)).unwrap();
    }
    sim.step(Op::Land(0, Fault::None)).unwrap();
    sim.step(Op::Land(0, Fault::NoBatchEndpoint)).unwrap();
    assert!(!sim.worker.batcher.borrow().enabled());
    assert_eq!(
        sim.travelling.len(),
        3,
        "the batch's three calls go again, alone"
    );
    assert!(sim.travelling.iter().all(|t| !t
        .callout
        .headers
        .iter()
        .any(|(_, v)| v == "/v1/batch")));
    assert_eq!(sim.waiting.len(), 3, "nobody was answered the 404");
    sim.drain().unwrap();
}

#[test]
fn a_failed_batch_fails_each_entry_and_the_next_one_goes() {
    let mut sim = Sim::new(8, 1);
    for s in 0..4 {
        sim.step(Op::Submit(s, 0)).unwrap();
    }
    sim.step(Op::Land(0, Fault::None)).unwrap();
    sim.step(Op::Submit(0, 1)).unwrap();
    // The batch of three fails: each of its streams gets a failed call (checked in `deliver`).
    sim.step(Op::Land(0, Fault::Status503)).unwrap();
    assert_eq!(sim.waiting.len(), 1, "only the newest call waits");
    sim.drain().unwrap();
}
