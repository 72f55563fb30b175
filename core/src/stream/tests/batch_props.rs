//! Group commit through whole streams, at random: first executions with distinct keys on one
//! worker, whose claims and completes go alone or in batches; callouts come back in any order,
//! whole or failed (no reply, 503, garbage, a short batch), and clients leave at any point.
//! The key store grants each claim with its key as the token and stores each record.
//!
//! Invariants:
//! - a stream is resumed only by the answer to its own claim: it executes at most once, and only
//!   if that answer granted it; a failed call answers 503 (`fail_closed`), and nothing else;
//! - the record a stream stores carries the token granted to its own key (never another's);
//! - a stream that ended is never resumed nor answered afterwards;
//! - at the end, with every callout answered, each stream still there has finished (its response
//!   went on after its record was stored, or it got its 503), and nothing waits in the batcher.

use super::batch::granted;
use super::*;
use crate::background::batch::Delivery;
use crate::host::Callout;
use crate::keystore_client::StoreCall;
use idempotency_protocol::{
    body, BatchAnswer, BatchRequest, BatchResponse, ClaimRequest, Compact, CompleteRequest, Format,
};
use proptest::prelude::*;

const CFG: &str = r#"{"keystore":{"cluster":"ks","token":"s3cret","batch_max_entries":3,"batches_in_flight":1},"routes":[{"prefix":"/payments","failure_mode":"fail_closed"}]}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Unavailable,
    Reset,
    Garbage,
    Short,
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    /// The i-th travelling callout (modulo their number) comes back.
    Land(usize, Fault),
    /// The upstream answers the i-th forwarded stream.
    Respond(usize),
    /// The client of the i-th stream leaves.
    Leave(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let fault = prop_oneof![
        6 => Just(Fault::None),
        1 => Just(Fault::Unavailable),
        1 => Just(Fault::Reset),
        1 => Just(Fault::Garbage),
        1 => Just(Fault::Short),
    ];
    prop_oneof![
        3 => Just(Op::Start),
        5 => (any::<usize>(), fault).prop_map(|(i, f)| Op::Land(i, f)),
        2 => any::<usize>().prop_map(Op::Respond),
        1 => any::<usize>().prop_map(Op::Leave),
    ]
}

struct S {
    stream: Stream,
    host: FakeHost,
    /// The record key (hex) of its claim: the token the key store grants it.
    key: Option<String>,
    ended: bool,
    forwarded: bool,
    /// Its response is held for its record.
    writing: bool,
    finished: bool,
    /// Resumes and local replies seen when it ended.
    at_end: (u32, usize),
}

/// A callout in flight: a stream's own (`owner`), or a batch of the root context.
struct Flight {
    token: u32,
    callout: Callout,
    owner: Option<usize>,
}

struct Sim {
    w: World,
    streams: Vec<S>,
    flights: Vec<Flight>,
    /// How many callouts of each stream's host were taken into `flights`.
    seen: Vec<usize>,
    next_root_token: u32,
}

fn path(c: &Callout) -> String {
    c.headers
        .iter()
        .find(|(n, _)| n == ":path")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn single_call(c: &Callout) -> StoreCall {
    let p = path(c);
    match p.rsplit('/').next().unwrap_or_default() {
        "claim" => StoreCall::Claim(body::decode_request::<ClaimRequest>(&c.body).unwrap()),
        "complete" => {
            StoreCall::Complete(body::decode_request::<CompleteRequest>(&c.body).unwrap())
        }
        "release" => StoreCall::Release(body::decode_request(&c.body).unwrap()),
        _ => StoreCall::Lookup(body::decode_request(&c.body).unwrap()),
    }
}

impl Sim {
    fn new() -> Sim {
        let w = World::new(CFG);
        w.worker.set_doorbell(7);
        Sim {
            w,
            streams: Vec::new(),
            flights: Vec::new(),
            seen: Vec::new(),
            next_root_token: 1 << 30,
        }
    }

    /// Takes the callouts streams sent since the last look into `flights`, and checks what
    /// each stream did meanwhile.
    fn collect(&mut self) -> Result<(), TestCaseError> {
        for (i, s) in self.streams.iter().enumerate() {
            let callouts = s.host.callouts.borrow();
            for (token, c) in callouts.iter().skip(self.seen[i]) {
                self.flights.push(Flight {
                    token: *token,
                    callout: c.clone(),
                    owner: Some(i),
                });
            }
            self.seen[i] = callouts.len();
        }
        for s in &mut self.streams {
            let resumed = s.host.resumed_request.get();
            prop_assert!(resumed <= 1, "a stream resumed twice");
            if s.ended {
                prop_assert_eq!(
                    (resumed, s.host.sent.borrow().len()),
                    s.at_end,
                    "a stream that ended was resumed or answered"
                );
                continue;
            }
            if resumed == 1 && !s.forwarded {
                s.forwarded = true;
                prop_assert!(s.host.sent.borrow().is_empty());
            }
            if let Some(sent) = s.host.sent.borrow().last() {
                prop_assert_eq!(sent.status, 503, "only a failed call is answered locally");
                prop_assert!(!s.forwarded, "answered after it executed");
                s.finished = true;
            }
            if s.writing && s.host.resumed_response.get() == 1 {
                s.finished = true;
            }
        }
        Ok(())
    }

    /// The root context is woken (a stream's callout came back, or a stream ended): it sends
    /// what waits.
    fn flush(&mut self) -> Result<(), TestCaseError> {
        let actions = self.w.worker.flush_batches();
        self.carry_out(actions)
    }

    fn carry_out(&mut self, actions: Vec<RootAction>) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                RootAction::Send(callout, purpose) => {
                    self.next_root_token += 1;
                    let token = self.next_root_token;
                    self.w.worker.sent(token, purpose, self.w.clock.get());
                    self.flights.push(Flight {
                        token,
                        callout,
                        owner: None,
                    });
                }
                RootAction::Deliver(d) => self.deliver(d)?,
                _ => {}
            }
        }
        self.collect()
    }

    fn deliver(&mut self, d: Delivery) -> Result<(), TestCaseError> {
        let i = self
            .streams
            .iter()
            .position(|s| s.host.stream_id.get() == d.stream_id);
        let Some(i) = i else {
            prop_assert!(false, "an answer for a stream nobody knows");
            return Ok(());
        };
        let s = &mut self.streams[i];
        prop_assert!(!s.ended, "an answer for a stream that ended");
        s.stream
            .on_callout_response(&s.host, d.token, d.status, &d.body);
        Ok(())
    }

    fn land(&mut self, f: Flight, fault: Fault) -> Result<(), TestCaseError> {
        let p = path(&f.callout);
        let (status, reply) = match fault {
            Fault::Unavailable => (Some(503), b"{}".to_vec()),
            Fault::Reset => (None, Vec::new()),
            Fault::Garbage => (Some(200), b"<html>".to_vec()),
            _ if p.ends_with("/batch") => {
                let req: BatchRequest = body::decode_request(&f.callout.body).unwrap();
                let mut answers: Vec<BatchAnswer> = req.entries.iter().map(granted).collect();
                if fault == Fault::Short {
                    answers.pop();
                }
                (Some(200), BatchResponse { answers }.to_compact())
            }
            _ => {
                let a = granted(&single_call(&f.callout));
                let status = a.status();
                let body = match a {
                    BatchAnswer::Claim(c) => Format::Compact.encode(&c),
                    BatchAnswer::Complete(x) | BatchAnswer::Release(x) => {
                        Format::Compact.encode(&x)
                    }
                    _ => Vec::new(),
                };
                (Some(status), body)
            }
        };
        if let Some(i) = f.owner {
            // A stream's own callout: Envoy drops the reply of a stream that ended.
            let s = &mut self.streams[i];
            if !s.ended {
                s.stream
                    .on_callout_response(&s.host, f.token, status, &reply);
                let woke = s.host.woke_root.replace(0);
                self.collect()?;
                if woke > 0 {
                    self.flush()?;
                }
            }
            return Ok(());
        }
        let actions = self.w.reply(f.token, status, Vec::new(), &reply);
        self.carry_out(actions)
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Start => {
                let key = format!("k{}", self.streams.len());
                let (stream, host, _) = self.w.send(&post(&key, b"{}"));
                let ks_key = host
                    .last_callout()
                    .map(|(_, c)| crate::testing::callout_json(&c)["key"].clone());
                self.streams.push(S {
                    stream,
                    host,
                    key: ks_key.and_then(|k| k.as_str().map(str::to_string)),
                    ended: false,
                    forwarded: false,
                    writing: false,
                    finished: false,
                    at_end: (0, 0),
                });
                self.seen.push(0);
                if self.streams.last().is_some_and(|s| s.key.is_none()) {
                    // Queued: its key shows in the batch that carries it.
                    let entries = self.w.worker.batcher.borrow().queued();
                    prop_assert!(entries > 0, "paused on neither a callout nor the queue");
                }
                self.collect()?;
            }
            Op::Land(i, fault) => {
                if !self.flights.is_empty() {
                    let f = self.flights.remove(i % self.flights.len());
                    self.land(f, fault)?;
                }
            }
            Op::Respond(i) => {
                let live: Vec<usize> = (0..self.streams.len())
                    .filter(|&j| {
                        let s = &self.streams[j];
                        s.forwarded && !s.writing && !s.ended
                    })
                    .collect();
                if !live.is_empty() {
                    let j = live[i % live.len()];
                    let s = &mut self.streams[j];
                    let flow = self.w.respond(&mut s.stream, &mut s.host, 201, b"{}");
                    prop_assert_eq!(flow, Flow::Pause, "held for its record");
                    s.writing = true;
                    self.collect()?;
                    self.check_complete(j)?;
                }
            }
            Op::Leave(i) => {
                if !self.streams.is_empty() {
                    let j = i % self.streams.len();
                    let s = &mut self.streams[j];
                    if !s.ended {
                        s.stream.on_done(&s.host);
                        s.ended = true;
                        s.at_end = (s.host.resumed_request.get(), s.host.sent.borrow().len());
                        let woke = s.host.woke_root.replace(0);
                        if woke > 0 {
                            self.flush()?;
                        }
                    }
                }
            }
        }
        let b = self.w.worker.batcher.borrow();
        prop_assert!(!b.ready(), "calls wait while a slot is free");
        Ok(())
    }

    /// The record a stream stores names the token of its own claim (its own key).
    fn check_complete(&self, j: usize) -> Result<(), TestCaseError> {
        let s = &self.streams[j];
        if let Some((_, c)) = s.host.last_callout() {
            if path(&c).ends_with("/complete") {
                let v = crate::testing::callout_json(&c);
                prop_assert_eq!(&v["token"], &v["key"], "a record under another's token");
            }
        }
        Ok(())
    }

    /// Every callout comes back whole; every stream still there finishes.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        let mut rounds = 0;
        loop {
            while !self.flights.is_empty() {
                let f = self.flights.remove(0);
                self.land(f, Fault::None)?;
            }
            let pending: Vec<usize> = (0..self.streams.len())
                .filter(|&j| {
                    let s = &self.streams[j];
                    s.forwarded && !s.writing && !s.ended
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            for j in pending {
                self.step(Op::Respond(j))?;
            }
            rounds += 1;
            prop_assert!(rounds < 10, "the streams do not finish");
        }
        for (j, s) in self.streams.iter().enumerate() {
            prop_assert!(s.ended || s.finished, "stream {} never finished", j);
        }
        let b = self.w.worker.batcher.borrow();
        prop_assert_eq!((b.queued(), b.in_flight()), (0, 0));
        Ok(())
    }
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(48))]

    #[test]
    fn streams_get_their_own_answers_whatever_the_batches_do(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut sim = Sim::new();
        for op in ops {
            sim.step(op)?;
        }
        sim.drain()?;
    }
}
