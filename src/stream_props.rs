//! Property tests of the state machine against a model (issue 6).
//!
//! Random interleavings of operations over two callers, three keys and three bodies, on several
//! concurrent streams (Envoy workers) that share one clock and, per Envoy, one shared-data map:
//! requests start, their bodies arrive, callouts are answered (or fail), the upstream answers
//! 2xx / 5xx / 429, streams reset, time passes (past the lease, past retention).
//!
//! Two worlds: one Envoy with no key store (L1 is the truth), and two Envoys sharing a key store
//! that this file models as an in-memory map implementing README "Key-store API (v1)", with
//! faults injected (503, reset, garbage, a reply lost after the store applied the call).
//!
//! Invariants, checked after every step:
//! - the upstream executes at most once per (caller, key) while a completed record lives: when a
//!   request is forwarded, the truth (the model of L1, or the key store model) holds no live record
//!   and no live claim of another request for its (caller, key), and the request owns the claim;
//! - a replay equals, byte for byte, the response of an execution of the same (caller, key, body)
//!   whose record is still live, so no caller ever receives another caller's response;
//! - 409 only while a claim on that (caller, key) is live; 422 only while a claim or a record with
//!   another body is live; 503 only after an injected fault; nothing else is answered locally;
//! - at most one local reply per stream, never one for a forwarded request;
//! - without a key store, every decision is exactly the model's (forward, replay, 409, 422, 503);
//! - never a panic.
//!
//! `PROPTEST_CASES=N` runs more cases (default: 48 per world, a few seconds).

use crate::config::Config;
use crate::l1::NearCache;
use crate::stream::{Flow, Stream, REPLAYED_HEADER};
use crate::testing::{FakeHost, FakeShared};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};
use serde_json::Value;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

const LEASE_MS: u64 = 1_000;
const RETENTION_MS: u64 = 10_000;
const CALLERS: [&str; 2] = ["Bearer alice", "Bearer bob"];
const KEYS: [&str; 3] = ["k0", "\"k1\"", "k2"];
/// The first body is empty: the request ends with its headers.
const BODIES: [&[u8]; 3] = [b"", b"{\"amount\":1}", b"{\"amount\":2}"];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

fn pt_config() -> PtConfig {
    PtConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..PtConfig::default()
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// The key store (or Envoy for it) answered 503.
    Unavailable,
    /// The callout was reset: no headers.
    Reset,
    /// 200 with a body that is not the protocol.
    Garbage,
    /// The key store applied the call, but the reply was lost (timeout: 504).
    LostReply,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// A request arrives on an Envoy (ignored with one Envoy); `trailers`: its body ends with
    /// trailers (HTTP/2); `cas_fail`: CAS writes that fail when the request is decided.
    Start {
        envoy: usize,
        caller: usize,
        key: usize,
        body: usize,
        trailers: bool,
        cas_fail: usize,
    },
    /// The rest of the request arrives.
    Body {
        s: usize,
        cas_fail: usize,
    },
    /// The stream's pending callout is answered.
    Answer {
        s: usize,
        fault: Fault,
    },
    /// The upstream answers.
    Respond {
        s: usize,
        status: u16,
    },
    /// The stream ends early (reset or client gone). With a key store: `claim_applied` says whether
    /// a pending claim reached the key store anyway; `release_delivered` whether the root
    /// context's release callout arrives.
    Reset {
        s: usize,
        claim_applied: bool,
        release_delivered: bool,
    },
    Advance(u64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        1 => Just(Fault::Unavailable),
        1 => Just(Fault::Reset),
        1 => Just(Fault::Garbage),
        1 => Just(Fault::LostReply),
    ]
}

fn cas_fail() -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(0usize), 1 => 1usize..4, 1 => 16usize..20]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..2usize, 0..3usize, 0..3usize, any::<bool>(), cas_fail()).prop_map(
            |(envoy, caller, key, body, trailers, cas_fail)| Op::Start {
                envoy,
                caller,
                key,
                body,
                trailers,
                cas_fail
            }
        ),
        2 => (any::<usize>(), cas_fail()).prop_map(|(s, cas_fail)| Op::Body { s, cas_fail }),
        3 => (any::<usize>(), fault()).prop_map(|(s, fault)| Op::Answer { s, fault }),
        3 => (
            any::<usize>(),
            prop_oneof![3 => Just(201u16), 1 => Just(200), 1 => Just(500), 1 => Just(503), 1 => Just(429)]
        )
            .prop_map(|(s, status)| Op::Respond { s, status }),
        1 => (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(
            |(s, claim_applied, release_delivered)| Op::Reset {
                s,
                claim_applied,
                release_delivered
            }
        ),
        2 => prop_oneof![
            Just(1u64),
            Just(LEASE_MS / 2),
            Just(LEASE_MS + 1),
            Just(RETENTION_MS + 1)
        ]
        .prop_map(Op::Advance),
    ]
}

/// What the client of a request is expected to see as a stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resp {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// A claim or record, as the model (of L1, or of the key store) holds it.
#[derive(Debug, Clone)]
enum Slot {
    InFlight {
        body: usize,
        until: u64,
        /// The stream (L1 model) or the token (key store model) that owns it.
        owner: String,
    },
    Completed {
        body: usize,
        expires: u64,
        record: Vec<u8>,
    },
}

impl Slot {
    fn live(&self, now: u64) -> bool {
        match self {
            Slot::InFlight { until, .. } => now < *until,
            Slot::Completed { expires, .. } => now < *expires,
        }
    }
    fn body(&self) -> usize {
        match self {
            Slot::InFlight { body, .. } | Slot::Completed { body, .. } => *body,
        }
    }
}

/// The key store of README "Key-store API (v1)", in memory.
#[derive(Default)]
struct KeyStore {
    map: HashMap<String, Slot>,
    /// Tokens minted so far.
    tokens: u64,
}

impl KeyStore {
    /// Applies a callout; returns the HTTP status and body it answers.
    fn apply(&mut self, path: &str, body: &[u8], now: u64, fp_body: usize) -> (u16, String) {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return (400, r#"{"error":"body"}"#.into());
        };
        let key = v["key"].as_str().unwrap_or_default().to_string();
        let current = self.map.get(&key).filter(|s| s.live(now)).cloned();
        let op = path.rsplit('/').next().unwrap_or_default();
        match op {
            "claim" => {
                let lease = v["lease_ms"].as_u64().unwrap_or(0);
                match current {
                    // Expired in-flight claims are taken over, expired records are gone.
                    None => {
                        self.tokens += 1;
                        let token = format!("T{}", self.tokens);
                        self.map.insert(
                            key,
                            Slot::InFlight {
                                body: fp_body,
                                until: now + lease,
                                owner: token.clone(),
                            },
                        );
                        (200, format!(r#"{{"outcome":"claimed","token":"{token}"}}"#))
                    }
                    Some(s) if s.body() != fp_body => (200, r#"{"outcome":"mismatch"}"#.into()),
                    Some(Slot::InFlight { until, .. }) => (
                        200,
                        format!(
                            r#"{{"outcome":"in_flight","retry_after_ms":{}}}"#,
                            until - now
                        ),
                    ),
                    Some(Slot::Completed { record, .. }) => (
                        200,
                        format!(
                            r#"{{"outcome":"completed","record":"{}"}}"#,
                            B64.encode(record)
                        ),
                    ),
                }
            }
            "complete" | "release" => {
                let token = v["token"].as_str().unwrap_or_default();
                // The current claim's token, even past its lease, as long as nobody took it over.
                let owned = matches!(self.map.get(&key), Some(Slot::InFlight { owner, .. }) if owner == token);
                if !owned {
                    return (409, r#"{"outcome":"stale"}"#.into());
                }
                if op == "release" {
                    self.map.remove(&key);
                    return (200, r#"{"outcome":"released"}"#.into());
                }
                let record = B64
                    .decode(v["record"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                let retention = v["retention_ms"].as_u64().unwrap_or(0);
                let body = self.map.get(&key).map_or(fp_body, Slot::body);
                self.map.insert(
                    key,
                    Slot::Completed {
                        body,
                        expires: now + retention,
                        record,
                    },
                );
                (200, r#"{"outcome":"stored"}"#.into())
            }
            _ => (404, String::new()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Headers seen, the body is still to come.
    Reading,
    /// The request ended; the filter waits for a callout (claim).
    Deciding,
    /// Forwarded upstream, waiting for its answer.
    Forwarded,
    /// The response waits for a store or release callout.
    Finishing,
    Done,
}

struct Req {
    id: usize,
    envoy: usize,
    caller: usize,
    key: usize,
    body: usize,
    trailers: bool,
    host: FakeHost,
    stream: Stream,
    stage: Stage,
    /// Callouts answered so far.
    answered: usize,
    /// When it took a claim (L1, or asked the key store): for "409 only while a claim is live".
    claimed_at: Option<u64>,
    faulted: bool,
    /// The key store token it was granted (the model's view).
    token: Option<String>,
    /// The record key hex (from its claim callout), to find its slot in the key store model.
    ks_key: Option<String>,
    sent_seen: usize,
}

impl Req {
    fn name(&self) -> String {
        format!("r{}", self.id)
    }
}

/// A 2xx that the upstream executed.
struct Execution {
    caller: usize,
    key: usize,
    body: usize,
    response: Resp,
    expires: u64,
}

struct World {
    cfg: Rc<Config>,
    workers: Vec<Rc<crate::worker::Worker>>,
    shared: Vec<FakeShared>,
    clock: Rc<Cell<u64>>,
    ids: Rc<Cell<u64>>,
    keystore: Option<KeyStore>,
    /// The model of L1 (no key store): (caller, key) -> slot.
    l1_model: HashMap<(usize, usize), (Slot, String)>,
    reqs: Vec<Req>,
    executions: Vec<Execution>,
    serial: u64,
    stats: Stats,
}

/// What a run went through, to show the generator reaches every outcome.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    forwarded: u64,
    replayed: u64,
    conflict: u64,
    mismatch: u64,
    unavailable: u64,
}

fn lease_model_owner(slot: &Option<(Slot, String)>) -> Option<&String> {
    match slot {
        Some((Slot::InFlight { .. }, owner)) => Some(owner),
        _ => None,
    }
}

impl World {
    fn new(with_keystore: bool, stream_mode: bool) -> World {
        let ks = if with_keystore {
            r#","keystore":{"cluster":"ks","token":"s3cret"}"#
        } else {
            ""
        };
        let mode = if stream_mode { "stream" } else { "hold" };
        let json = format!(
            r#"{{"lock_lease_ms":{LEASE_MS},"retention_s":{},"l1_slots":2,"headers_mode":"{mode}","failure_mode":"fail_closed"{ks}}}"#,
            RETENTION_MS / 1000
        );
        let cfg = Config::parse(crate::testing::with_test_secret(&json).as_bytes()).unwrap();
        let envoys = if with_keystore { 2 } else { 1 };
        let mut workers = Vec::new();
        let mut shared = Vec::new();
        for _ in 0..envoys {
            let cache = NearCache {
                slots: cfg.l1_slots,
                slot_budget: cfg.max_response_bytes + 4096,
            };
            let s = FakeShared::default();
            cache.ensure_slots(&s).unwrap();
            workers.push(Rc::new(crate::worker::Worker::new(cfg.clone(), cache)));
            shared.push(s);
        }
        World {
            cfg: Rc::new(cfg),
            workers,
            shared,
            clock: Rc::new(Cell::new(1_000_000)),
            ids: Rc::new(Cell::new(0)),
            keystore: with_keystore.then(KeyStore::default),
            l1_model: HashMap::new(),
            reqs: Vec::new(),
            executions: Vec::new(),
            serial: 0,
            stats: Stats::default(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.get()
    }

    fn pick(&self, s: usize, stages: &[Stage]) -> Option<usize> {
        let live: Vec<usize> = (0..self.reqs.len())
            .filter(|&i| stages.contains(&self.reqs[i].stage))
            .collect();
        if live.is_empty() {
            None
        } else {
            Some(live[s % live.len()])
        }
    }

    fn run(&mut self, op: Op) -> Result<(), TestCaseError> {
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
            ),
            Op::Body { s, cas_fail } => match self.pick(s, &[Stage::Reading]) {
                Some(i) => self.body(i, cas_fail),
                None => Ok(()),
            },
            Op::Answer { s, fault } => match self.pick(s, &[Stage::Deciding, Stage::Finishing]) {
                Some(i) => self.answer(i, fault),
                None => Ok(()),
            },
            Op::Respond { s, status } => match self.pick(s, &[Stage::Forwarded]) {
                Some(i) => self.respond(i, status),
                None => Ok(()),
            },
            Op::Reset {
                s,
                claim_applied,
                release_delivered,
            } => {
                let stages = [
                    Stage::Reading,
                    Stage::Deciding,
                    Stage::Forwarded,
                    Stage::Finishing,
                ];
                match self.pick(s, &stages) {
                    Some(i) => self.reset(i, claim_applied, release_delivered),
                    None => Ok(()),
                }
            }
            Op::Advance(ms) => {
                self.clock.set(self.now() + ms);
                Ok(())
            }
        }
    }

    fn start(
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
            claimed_at: None,
            faulted: false,
            token: None,
            ks_key: None,
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

    fn body(&mut self, i: usize, cas_fail: usize) -> Result<(), TestCaseError> {
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
    fn predict(&self, i: usize, cas_fail: usize) -> Option<Expect> {
        if self.keystore.is_some() {
            return None;
        }
        let r = &self.reqs[i];
        let now = self.now();
        Some(match self.l1_model.get(&(r.caller, r.key)) {
            Some((slot, _)) if slot.live(now) && slot.body() != r.body => Expect::Status(422),
            Some((Slot::InFlight { until, .. }, _)) if now < *until => Expect::Status(409),
            Some((
                Slot::Completed {
                    expires, record, ..
                },
                _,
            )) if now < *expires => Expect::Replay(record.clone()),
            _ if cas_fail >= 16 => Expect::Status(503),
            _ => Expect::Forward,
        })
    }

    fn after_request_end(
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
            r.claimed_at = Some(now);
            let (_, c) = r.host.last_callout().unwrap();
            let v: Value = serde_json::from_slice(&c.body).unwrap();
            r.ks_key = v["key"].as_str().map(str::to_string);
            prop_assert!(r.host.sent.borrow().is_empty());
        } else if flow == Flow::Continue && r.host.sent.borrow().is_empty() {
            r.claimed_at = Some(now);
            self.forwarded(i)?;
        } else {
            prop_assert_eq!(flow, Flow::Pause);
            prop_assert_eq!(
                r.host.sent.borrow().len(),
                1,
                "paused with no callout: answered"
            );
            r.stage = Stage::Done;
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
                Some(s) => Expect::Status(s.status),
            };
            match (&expected, &got) {
                (Expect::Replay(record), Expect::Replay(_)) => {
                    let rec = crate::record::Record::decode(record).unwrap();
                    let crate::record::Outcome::Replayable(resp) = rec.outcome else {
                        return Err(TestCaseError::fail("replayed a record without a response"));
                    };
                    let sent = r.host.last_sent().unwrap();
                    let mut headers = resp.headers.clone();
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
    fn forwarded(&mut self, i: usize) -> Result<(), TestCaseError> {
        let now = self.now();
        self.stats.forwarded += 1;
        self.reqs[i].stage = Stage::Forwarded;
        let r = &self.reqs[i];
        let (caller, key, name) = (r.caller, r.key, r.name());
        // No live record of an execution of this (caller, key) in the truth.
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
                let slot = self.l1_model.get(&(caller, key));
                if let Some((s, _)) = slot {
                    prop_assert!(
                        !s.live(now),
                        "forwarded while the (caller, key) holds a live {:?}",
                        s
                    );
                }
                self.l1_model.insert(
                    (caller, key),
                    (
                        Slot::InFlight {
                            body: r.body,
                            until: now + LEASE_MS,
                            owner: name.clone(),
                        },
                        name,
                    ),
                );
            }
        }
        Ok(())
    }

    fn answer(&mut self, i: usize, fault: Fault) -> Result<(), TestCaseError> {
        let now = self.now();
        let r = &mut self.reqs[i];
        let Some((token, callout)) = r.host.callouts.borrow().get(r.answered).cloned() else {
            return Ok(());
        };
        r.answered += 1;
        let path = callout
            .headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
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
        let ks = self.keystore.as_mut().unwrap();
        let applied = matches!(fault, Fault::None | Fault::LostReply);
        let (status, reply) = if applied {
            ks.apply(&path, &callout.body, now, r.body)
        } else {
            (0, String::new())
        };
        if path.ends_with("/complete") && status == 200 {
            // The key store's retention runs from when it stored the record.
            let rec = crate::testing::record_of_complete(&callout.body);
            let body = match rec.outcome {
                crate::record::Outcome::Replayable(r) => r.body,
                _ => Vec::new(),
            };
            for e in self
                .executions
                .iter_mut()
                .filter(|e| e.response.body == body)
            {
                e.expires = e.expires.max(now + RETENTION_MS);
            }
        }
        if path.ends_with("/claim") && status == 200 {
            let v: Value = serde_json::from_str(&reply).unwrap();
            if let Some(t) = v["token"].as_str() {
                r.token = Some(t.to_string());
            }
        }
        if !matches!(fault, Fault::None) {
            r.faulted = true;
        }
        let (status, reply): (Option<u16>, String) = match fault {
            Fault::None => (Some(status), reply),
            Fault::Unavailable => (Some(503), r#"{"error":"backend unavailable: x"}"#.into()),
            Fault::Reset => (None, String::new()),
            Fault::Garbage => (Some(200), "<html>oops</html>".into()),
            Fault::LostReply => (Some(504), "upstream request timeout".into()),
        };
        let resumed_req = r.host.resumed_request.get();
        let resumed_resp = r.host.resumed_response.get();
        r.stream
            .on_callout_response(&r.host, token, status, reply.as_bytes());
        match r.stage {
            Stage::Deciding => {
                if r.host.resumed_request.get() > resumed_req {
                    prop_assert!(r.host.sent.borrow().is_empty());
                    self.forwarded(i)?;
                } else {
                    let sent = r.host.sent.borrow().len();
                    prop_assert_eq!(sent, 1, "a claim answer is a forward or a local reply");
                    r.stage = Stage::Done;
                }
            }
            Stage::Finishing => {
                prop_assert_eq!(
                    r.host.resumed_response.get(),
                    resumed_resp + 1,
                    "the held response goes on"
                );
                r.stage = Stage::Done;
            }
            _ => {}
        }
        self.check_replies(i)
    }

    fn respond(&mut self, i: usize, status: u16) -> Result<(), TestCaseError> {
        let now = self.now();
        self.serial += 1;
        let serial = self.serial;
        let r = &mut self.reqs[i];
        let body = format!(
            "{{\"exec\":{serial},\"caller\":{},\"key\":{}}}",
            r.caller, r.key
        )
        .into_bytes();
        r.host.response_headers = vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-type".into(), b"application/json".to_vec()),
            ("x-bin".into(), vec![0xff, serial as u8, 0x00]),
            ("date".into(), b"Mon".to_vec()),
            ("set-cookie".into(), b"a=1".to_vec()),
            ("set-cookie".into(), format!("s={serial}").into_bytes()),
        ];
        r.host.response_body = body.clone();
        let callouts = r.host.callouts.borrow().len();
        let mut flow = r.stream.on_response_headers(&r.host, false);
        if flow == Flow::Continue {
            flow = r.stream.on_response_body(&r.host, body.len(), true);
        }
        let ok = (200..300).contains(&status);
        if ok {
            self.executions.push(Execution {
                caller: r.caller,
                key: r.key,
                body: r.body,
                response: Resp {
                    status,
                    // `set-cookie` is never stored, so a replay never carries it.
                    headers: vec![
                        ("content-type".into(), b"application/json".to_vec()),
                        ("x-bin".into(), vec![0xff, serial as u8, 0x00]),
                    ],
                    body,
                },
                expires: now + RETENTION_MS,
            });
        }
        let dispatched = r.host.callouts.borrow().len() > callouts;
        if dispatched {
            prop_assert_eq!(flow, Flow::Pause, "held until the key store answers");
            r.stage = Stage::Finishing;
        } else {
            prop_assert_eq!(flow, Flow::Continue);
            r.stage = Stage::Done;
        }
        if self.keystore.is_none() {
            let name = r.name();
            let (caller, key, rbody) = (r.caller, r.key, r.body);
            // As L1 completes: unless another request holds a live claim or record for the key.
            let free = match self.l1_model.get(&(caller, key)) {
                None => true,
                Some((slot, owner)) => owner == &name || !slot.live(now),
            };
            let owned =
                lease_model_owner(&self.l1_model.get(&(caller, key)).cloned()) == Some(&name);
            if (ok && free) || (!ok && owned) {
                if ok {
                    let record = crate::record::Record {
                        fingerprint: [0; 32],
                        created_ms: now,
                        expires_ms: now + RETENTION_MS,
                        outcome: crate::record::Outcome::Replayable(
                            crate::record::StoredResponse {
                                status,
                                headers: self.executions.last().unwrap().response.headers.clone(),
                                body: self.executions.last().unwrap().response.body.clone(),
                            },
                        ),
                    };
                    self.l1_model.insert(
                        (caller, key),
                        (
                            Slot::Completed {
                                body: rbody,
                                expires: now + RETENTION_MS,
                                record: record.encode(),
                            },
                            name,
                        ),
                    );
                } else {
                    self.l1_model.remove(&(caller, key));
                }
            }
        }
        Ok(())
    }

    fn reset(
        &mut self,
        i: usize,
        claim_applied: bool,
        release_delivered: bool,
    ) -> Result<(), TestCaseError> {
        let now = self.now();
        let r = &mut self.reqs[i];
        // A claim callout still pending may have reached the key store before the stream died.
        if r.stage == Stage::Deciding && claim_applied {
            if let (Some(ks), Some((_, c))) = (self.keystore.as_mut(), r.host.last_callout()) {
                let _ = ks.apply("/v1/claim", &c.body, now, r.body);
            }
        }
        r.stream.on_done(&r.host);
        let release = self.workers[r.envoy]
            .writes
            .borrow_mut()
            .take_due(now)
            .into_iter()
            .map(|d| d.callout)
            .find(|c| {
                c.headers
                    .iter()
                    .any(|(n, v)| n == ":path" && v.ends_with("/release"))
            });
        r.stage = Stage::Done;
        if let Some(c) = release {
            prop_assert!(
                r.token.is_some(),
                "a key-store release only for a granted claim"
            );
            if release_delivered {
                let ks = self.keystore.as_mut().unwrap();
                let path = c
                    .headers
                    .iter()
                    .find(|(n, _)| n == ":path")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                prop_assert!(path.ends_with("/release"));
                let (status, _) = ks.apply(&path, &c.body, now, r.body);
                prop_assert!(status == 200 || status == 409);
            }
        }
        if self.keystore.is_none() {
            let name = r.name();
            let key = (r.caller, r.key);
            if lease_model_owner(&self.l1_model.get(&key).cloned()) == Some(&name) {
                self.l1_model.remove(&key);
            }
        }
        Ok(())
    }

    /// The local replies of request `i` are ones the model allows.
    fn check_replies(&mut self, i: usize) -> Result<(), TestCaseError> {
        let now = self.now();
        let r = &self.reqs[i];
        let sent = r.host.sent.borrow().clone();
        prop_assert!(sent.len() <= 1, "one local reply at most: {:?}", sent);
        if r.stage == Stage::Forwarded {
            prop_assert!(sent.is_empty(), "a forwarded request got a local reply");
        }
        if sent.len() <= r.sent_seen {
            return Ok(());
        }
        let reply = sent.last().unwrap();
        let same = |e: &Execution| e.caller == r.caller && e.key == r.key;
        let others_live = |want_in_flight: bool, other_body: bool| {
            let claims = self.reqs.iter().enumerate().any(|(j, o)| {
                j != i
                    && o.caller == r.caller
                    && o.key == r.key
                    && (!other_body || o.body != r.body)
                    && matches!(o.stage, Stage::Deciding | Stage::Forwarded)
                    && o.claimed_at.is_some_and(|t| now < t + LEASE_MS)
            });
            let records = !want_in_flight
                && self
                    .executions
                    .iter()
                    .any(|e| same(e) && (!other_body || e.body != r.body) && now < e.expires);
            let store = match (&self.keystore, &r.ks_key) {
                (Some(ks), Some(k)) => ks.map.get(k).is_some_and(|s| {
                    s.live(now)
                        && (!other_body || s.body() != r.body)
                        && (!want_in_flight || matches!(s, Slot::InFlight { .. }))
                }),
                _ => false,
            };
            claims || records || store
        };
        if reply.header(REPLAYED_HEADER).is_some() {
            let mut headers = reply.headers.clone();
            prop_assert_eq!(
                headers.pop(),
                Some((REPLAYED_HEADER.to_string(), b"true".to_vec()))
            );
            let got = Resp {
                status: reply.status,
                headers,
                body: reply.body.clone(),
            };
            self.stats.replayed += 1;
            let matched = self
                .executions
                .iter()
                .any(|e| same(e) && e.body == r.body && now < e.expires && e.response == got);
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
                409 => self.stats.conflict += 1,
                422 => self.stats.mismatch += 1,
                _ => self.stats.unavailable += 1,
            }
            match reply.status {
                409 => prop_assert!(others_live(true, false), "409 with no live claim"),
                422 => prop_assert!(
                    others_live(false, true),
                    "422 with no live claim or record of another body"
                ),
                503 => prop_assert!(r.faulted, "503 without a fault"),
                s => prop_assert!(false, "unexpected local reply {}", s),
            }
        }
        self.reqs[i].sent_seen = sent.len();
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Forward,
    Replay(Vec<u8>),
    Status(u16),
}

fn run_world(ops: &[Op], with_keystore: bool, stream_mode: bool) -> Result<Stats, TestCaseError> {
    let mut w = World::new(with_keystore, stream_mode);
    for op in ops {
        w.run(*op)?;
    }
    Ok(w.stats)
}

/// The properties mean something only if the runs reach every outcome: check that they do. The
/// generator is seeded, so this coverage check gives the same answer on every run.
#[test]
fn the_generated_runs_reach_every_outcome() {
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    for with_keystore in [false, true] {
        let total = std::cell::RefCell::new(Stats::default());
        let config = PtConfig {
            cases: 128,
            failure_persistence: None,
            ..PtConfig::default()
        };
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut runner = TestRunner::new_with_rng(config, rng);
        runner
            .run(&prop::collection::vec(op(), 1..60), |ops| {
                let s = run_world(&ops, with_keystore, false)?;
                let mut t = total.borrow_mut();
                t.forwarded += s.forwarded;
                t.replayed += s.replayed;
                t.conflict += s.conflict;
                t.mismatch += s.mismatch;
                t.unavailable += s.unavailable;
                Ok(())
            })
            .unwrap();
        let t = *total.borrow();
        assert!(
            t.forwarded > 0
                && t.replayed > 0
                && t.conflict > 0
                && t.mismatch > 0
                && t.unavailable > 0,
            "key store {with_keystore}: {t:?}"
        );
        eprintln!("key store {with_keystore}: {t:?}");
    }
}

proptest! {
    #![proptest_config(pt_config())]

    #[test]
    fn one_envoy_without_a_key_store_follows_the_model(
        ops in prop::collection::vec(op(), 1..60),
        stream_mode in any::<bool>(),
    ) {
        run_world(&ops, false, stream_mode)?;
    }

    #[test]
    fn two_envoys_with_a_faulty_key_store_keep_the_invariants(
        ops in prop::collection::vec(op(), 1..60),
        stream_mode in any::<bool>(),
    ) {
        run_world(&ops, true, stream_mode)?;
    }
}
