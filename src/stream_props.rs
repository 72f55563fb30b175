//! Property tests of the state machine against a model.
//!
//! Random interleavings of operations over two callers, three keys and three bodies, on several
//! concurrent streams (Envoy workers) that share one clock and, per Envoy, one shared-data map:
//! requests start (new ones, or retries of an earlier one's caller, key and body), their bodies
//! arrive, callouts are answered (or fail), the upstream answers 2xx / 5xx / 429 (whole, or its
//! headers first and its body later), Envoy answers in the upstream's place (route timeout or
//! upstream reset: the request may have executed; connection failure, no healthy upstream,
//! overflow: it never left; a request timeout while the claim is pending), streams reset, an
//! Envoy's root context stops (or resumes) ticking, and time passes tick by tick: on every tick
//! the root context of each Envoy renews the leases of the requests it executes and sends the
//! key-store writes that streams handed over.
//!
//! Two worlds: one Envoy with no key store (L1 is the truth), and two Envoys sharing a key store
//! that this file models as an in-memory map implementing README "Key-store API (v1)": claim,
//! lookup, complete, release and renew, where complete, release and renew are accepted only from
//! the current claim's token while its lease is live. The model reads and writes bodies with the
//! protocol crate the real key store uses, so it refuses what the real one refuses. Faults are injected on the streams' callouts
//! and on the root context's (503, reset, garbage, a reply lost after the store applied the call;
//! and a callout the root context could not send). Unknown outcomes are locked (the default
//! policy) or, in some runs, released.
//!
//! Invariants, checked after every step:
//! - the upstream executes at most once per (caller, key) while a record lives, whatever the
//!   record says (a response, or "outcome unknown"): when a request is forwarded, the truth (the
//!   model of L1, or the key store model) holds no live record and no live claim of another
//!   request for its (caller, key), and the request owns the claim;
//! - a request that executes keeps its claim in the truth while its stream lives and its Envoy
//!   ticks (unless a renewal of it was lost to a fault): no takeover of a slow upstream;
//! - a replay equals, byte for byte, the response of an execution of the same (caller, key, body)
//!   whose record is still live, so no caller ever receives another caller's response; a record
//!   the key store stores is the response of the request that owns the claim;
//! - 409 only while a claim on that (caller, key) is live, or while an unknown outcome of the
//!   same request is on hold (its Retry-After: the hold left, in seconds rounded up); 410
//!   "outcome unknown" only after the hold of a live unknown-outcome record of the same request;
//!   422 only while a claim or a record with another body is live; 503 only after an injected
//!   fault; nothing else is answered locally;
//! - at most one local reply per stream, never one for a forwarded request;
//! - with a key store, every end of an execution is written there before the response goes on;
//!   a stream hands exactly one write to the root context when it ends while its request
//!   executes or while its own write is pending, a failed write is handed over for retry, a
//!   claim granted after Envoy answered is released from the root context, and nothing else is
//!   handed over; the root context renews only requests that still execute;
//! - without a key store, every decision is exactly the model's (forward, replay, 409 and its
//!   Retry-After, 410, 422, 503), the model renewing each executing claim once a third of the
//!   lease has gone;
//! - never a panic.
//!
//! `PROPTEST_CASES=N` runs more cases (default: 48 per world, a few seconds).

use crate::config::Config;
use crate::deferred::Settled;
use crate::host::Callout;
use crate::l1::NearCache;
use crate::record::{Outcome, Record, StoredResponse};
use crate::stream::{Flow, Stream, REPLAYED_HEADER};
use crate::testing::{FakeHost, FakeShared};
use crate::worker::{Purpose, RootAction, RootReply, Worker};
use idempotency_protocol::{
    body, json, ClaimAnswer, ClaimRequest, ClaimResponse, CompleteRequest, ErrorBody,
    FencedResponse, Hex64, LookupRequest, LookupResponse, ProtocolError, ReleaseRequest,
    RenewRequest,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};
use serde_json::Value;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

const LEASE_MS: u64 = 1_000;
/// How long a key whose outcome is unknown answers 409 before its terminal 410.
const HOLD_MS: u64 = 3_000;
const RETENTION_MS: u64 = 10_000;
/// The root context's timer period, as the adapter sets it.
const TICK_MS: u64 = 200;
const CALLERS: [&str; 2] = ["Bearer alice", "Bearer bob"];
const KEYS: [&str; 3] = ["k0", "\"k1\"", "k2"];
/// The first body is empty: the request ends with its headers.
const BODIES: [&[u8]; 3] = [b"", b"{\"amount\":1}", b"{\"amount\":2}"];

/// Envoy's response flags (bits of the `response.flags` property) that the model uses.
const NO_HEALTHY_UPSTREAM: u64 = 0x2;
const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
const UPSTREAM_REMOTE_RESET: u64 = 0x10;
const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
const UPSTREAM_OVERFLOW: u64 = 0x80;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The root context could not send the callout (its streams' callouts are always sent).
    NotSent,
}

impl Fault {
    /// The key store saw the call.
    fn applied(self) -> bool {
        matches!(self, Fault::None | Fault::LostReply)
    }
}

/// The fault of the `n`th root-context callout of an `Advance`, read from its fault pattern:
/// three bits per callout (0 to 2: none).
fn fault_at(pattern: u64, n: usize) -> Fault {
    match (pattern >> (3 * (n % 21))) & 7 {
        3 => Fault::NotSent,
        4 => Fault::Unavailable,
        5 => Fault::Reset,
        6 => Fault::Garbage,
        7 => Fault::LostReply,
        _ => Fault::None,
    }
}

/// A fault pattern where every root-context callout gets a 503: the key store is down.
fn key_store_down() -> u64 {
    (0..21).fold(0u64, |acc, n| acc | 4 << (3 * n))
}

/// Envoy answers in the upstream's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvoyAnswer {
    /// 504 when the route timeout fires while the upstream works (UT): it may have executed.
    RouteTimeout,
    /// 503 after the upstream reset the stream (UR), a connection failure retried before it (UF
    /// too): it may have executed.
    UpstreamReset,
    /// 503, no connection to the upstream (UF): the request never left.
    ConnectionFailure,
    /// 503, no healthy upstream (UH): the request never left.
    NoHealthyUpstream,
    /// 503, circuit breaker overflow (UO): the request never left.
    Overflow,
    /// 408, the request timed out while the filter waited for its claim: never forwarded.
    RequestTimeout,
}

impl EnvoyAnswer {
    fn status_and_flags(self) -> (u16, u64) {
        match self {
            EnvoyAnswer::RouteTimeout => (504, UPSTREAM_REQUEST_TIMEOUT),
            EnvoyAnswer::UpstreamReset => {
                (503, UPSTREAM_REMOTE_RESET | UPSTREAM_CONNECTION_FAILURE)
            }
            EnvoyAnswer::ConnectionFailure => (503, UPSTREAM_CONNECTION_FAILURE),
            EnvoyAnswer::NoHealthyUpstream => (503, NO_HEALTHY_UPSTREAM),
            EnvoyAnswer::Overflow => (503, UPSTREAM_OVERFLOW),
            EnvoyAnswer::RequestTimeout => (408, 0),
        }
    }

    fn may_have_executed(self) -> bool {
        matches!(self, EnvoyAnswer::RouteTimeout | EnvoyAnswer::UpstreamReset)
    }
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
    /// A client retries: a request with the caller, key and body of an earlier one arrives.
    Retry {
        envoy: usize,
        of: usize,
        trailers: bool,
        cas_fail: usize,
    },
    /// The rest of the request arrives.
    Body { s: usize, cas_fail: usize },
    /// The stream's pending callout is answered.
    Answer { s: usize, fault: Fault },
    /// The upstream answers: its headers and whole body, or (`whole` false) its headers and half
    /// of its body. On a response being received, the rest of its body.
    Respond { s: usize, status: u16, whole: bool },
    /// Envoy answers in the upstream's place (the request timeout: while the claim is pending).
    Envoy { s: usize, answer: EnvoyAnswer },
    /// The stream ends early (reset or client gone). With a key store: `pending_applied` says
    /// whether its pending callout (claim or write) reached the key store anyway; `delivered`
    /// whether the root context ticks at once and sends what the stream handed over (if not, the
    /// next ticks do, with the faults of their `Advance`).
    Reset {
        s: usize,
        pending_applied: bool,
        delivered: bool,
    },
    /// An Envoy's root context stops ticking (or ticks again): its leases are no longer renewed.
    Freeze { envoy: usize },
    /// Time passes tick by tick; `faults`: the pattern of faults of the root context's callouts.
    Advance { ms: u64, faults: u64 },
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

fn envoy_answer() -> impl Strategy<Value = EnvoyAnswer> {
    prop_oneof![
        2 => Just(EnvoyAnswer::RouteTimeout),
        1 => Just(EnvoyAnswer::UpstreamReset),
        2 => Just(EnvoyAnswer::ConnectionFailure),
        1 => Just(EnvoyAnswer::NoHealthyUpstream),
        1 => Just(EnvoyAnswer::Overflow),
        2 => Just(EnvoyAnswer::RequestTimeout),
    ]
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
        3 => (0..2usize, any::<usize>(), any::<bool>(), cas_fail()).prop_map(
            |(envoy, of, trailers, cas_fail)| Op::Retry {
                envoy,
                of,
                trailers,
                cas_fail
            }
        ),
        2 => (any::<usize>(), cas_fail()).prop_map(|(s, cas_fail)| Op::Body { s, cas_fail }),
        3 => (any::<usize>(), fault()).prop_map(|(s, fault)| Op::Answer { s, fault }),
        3 => (
            any::<usize>(),
            prop_oneof![3 => Just(201u16), 1 => Just(200), 1 => Just(500), 1 => Just(503), 1 => Just(429)],
            prop::bool::weighted(0.7),
        )
            .prop_map(|(s, status, whole)| Op::Respond { s, status, whole }),
        1 => (any::<usize>(), envoy_answer()).prop_map(|(s, answer)| Op::Envoy { s, answer }),
        1 => (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(
            |(s, pending_applied, delivered)| Op::Reset {
                s,
                pending_applied,
                delivered
            }
        ),
        2 => (0..2usize).prop_map(|envoy| Op::Freeze { envoy }),
        3 => (
            prop_oneof![
                3 => Just(1u64),
                3 => Just(TICK_MS),
                2 => Just(LEASE_MS / 2),
                2 => Just(LEASE_MS + 1),
                1 => Just(HOLD_MS),
                1 => Just(RETENTION_MS + 1)
            ],
            prop_oneof![6 => Just(0u64), 1 => any::<u64>(), 1 => Just(key_store_down())],
        )
            .prop_map(|(ms, faults)| Op::Advance { ms, faults }),
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

/// A reply of the key store model: the status and the JSON body.
fn reply(status: u16, body: &impl serde::Serialize) -> (u16, String) {
    (status, String::from_utf8(json::encode(body)).unwrap())
}

fn stale() -> (u16, String) {
    reply(409, &FencedResponse::Stale)
}

/// What the real key store answers to a body it refuses: 400 naming the field.
fn bad_request(e: &ProtocolError) -> (u16, String) {
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
struct KeyStore {
    map: HashMap<String, Slot>,
    /// Tokens minted so far.
    tokens: u64,
    /// The body each fingerprint (hex) stands for, learnt from the claims the filter sends.
    fingerprints: HashMap<String, usize>,
}

impl KeyStore {
    /// Applies a callout; returns the HTTP status and body it answers.
    fn apply(&mut self, path: &str, body: &[u8], now: u64) -> (u16, String) {
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
                self.fenced(&r.key, &r.token, now, |body, owner| {
                    Some(Slot::InFlight {
                        body,
                        until: now + r.lease_ms,
                        owner,
                    })
                })
                .map_or_else(stale, |()| reply(200, &FencedResponse::Renewed))
            }),
            _ => Ok((404, String::new())),
        };
        answer.unwrap_or_else(|e| bad_request(&e))
    }

    /// The live slot of `key`: expired claims are free to be taken over, expired records gone.
    fn live(&self, key: &Hex64, now: u64) -> Option<Slot> {
        self.map.get(key.as_str()).filter(|s| s.live(now)).cloned()
    }

    /// The body a fingerprint stands for, if the model learnt it from a claim the filter sent.
    fn body_of(&self, fingerprint: &Hex64) -> Result<usize, ProtocolError> {
        self.fingerprints
            .get(fingerprint.as_str())
            .copied()
            .ok_or_else(|| ProtocolError::field("fingerprint", "unknown to the model"))
    }

    fn claim(&mut self, r: &ClaimRequest, now: u64) -> Result<(u16, String), ProtocolError> {
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

    fn lookup(&self, r: &LookupRequest, now: u64) -> Result<(u16, String), ProtocolError> {
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
    fn fenced(
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Headers seen, the body is still to come.
    Reading,
    /// The request ended; the filter waits for a callout (claim).
    Deciding,
    /// Envoy answered while the claim was pending; the claim's reply may still land.
    Abandoned,
    /// Forwarded upstream, waiting for its answer.
    Forwarded,
    /// The upstream's response headers arrived, its body is still coming.
    Capturing,
    /// The response waits for a store or release callout.
    Finishing,
    Done,
}

/// The stages in which a request executes: its claim is renewed.
const EXECUTING: [Stage; 2] = [Stage::Forwarded, Stage::Capturing];

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
    /// Callouts of this stream answered (or lost with it) so far.
    answered: usize,
    /// Until when a claim this request took may be live in L1 (renewals push it on): a bound for
    /// "409 only while a claim is live".
    lease_until: u64,
    /// When the worker last renewed its claim: the model of the renewal schedule (no key store).
    renewed_ms: u64,
    /// Its claim may lapse: its Envoy stopped ticking, or a renewal of it was lost to a fault.
    at_risk: bool,
    /// When it was forwarded.
    forwarded_at: u64,
    /// It was seen executing, past the lease, with its claim.
    outlived: bool,
    faulted: bool,
    /// The key store token it was granted (the model's view).
    token: Option<String>,
    /// The record key hex (from its claim callout), to find its slot in the key store model.
    ks_key: Option<String>,
    /// The response the upstream sends it (2xx only).
    response: Option<Resp>,
    /// When its response headers arrived: its record is created as of then.
    created_at: u64,
    sent_seen: usize,
}

impl Req {
    fn name(&self) -> String {
        format!("r{}", self.id)
    }
    fn executing(&self) -> bool {
        EXECUTING.contains(&self.stage)
    }
}

/// A 2xx that the upstream executed.
struct Execution {
    req: usize,
    caller: usize,
    key: usize,
    body: usize,
    response: Resp,
    expires: u64,
}

/// An attempt whose outcome is unknown, as the filter records it (in L1, in the key store).
struct Unknown {
    req: usize,
    caller: usize,
    key: usize,
    body: usize,
    hold_until: u64,
    expires: u64,
}

struct World {
    cfg: Rc<Config>,
    workers: Vec<Rc<Worker>>,
    shared: Vec<FakeShared>,
    clock: Rc<Cell<u64>>,
    ids: Rc<Cell<u64>>,
    keystore: Option<KeyStore>,
    /// The model of L1 (no key store): (caller, key) -> slot.
    l1_model: HashMap<(usize, usize), Slot>,
    /// Unknown outcomes are released instead of locked.
    release_policy: bool,
    reqs: Vec<Req>,
    executions: Vec<Execution>,
    unknowns: Vec<Unknown>,
    serial: u64,
    /// Envoys whose root context does not tick.
    frozen: Vec<bool>,
    next_tick: u64,
    /// Callouts the root contexts sent so far.
    root_calls: u32,
    stats: Stats,
}

/// What a run went through, to show the generator reaches every outcome.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    forwarded: u64,
    replayed: u64,
    /// 409 for a live claim.
    conflict: u64,
    /// 409 for an unknown outcome on hold.
    held: u64,
    mismatch: u64,
    unavailable: u64,
    /// Unknown-outcome records written to the truth (the L1 model, or the key store model).
    unknown: u64,
    /// 410: outcome unknown.
    gone: u64,
    /// Renewals applied to the truth.
    renewed: u64,
    /// Requests seen executing for longer than the lease, still owning their claim.
    outlived: u64,
    /// A request forwarded while another one with its (caller, key) still executed, whose claim
    /// lapsed.
    takeover: u64,
}

impl Stats {
    fn add(&mut self, s: &Stats) {
        self.forwarded += s.forwarded;
        self.replayed += s.replayed;
        self.conflict += s.conflict;
        self.held += s.held;
        self.mismatch += s.mismatch;
        self.unavailable += s.unavailable;
        self.unknown += s.unknown;
        self.gone += s.gone;
        self.renewed += s.renewed;
        self.outlived += s.outlived;
        self.takeover += s.takeover;
    }

    fn all_reached(&self) -> bool {
        [
            self.forwarded,
            self.replayed,
            self.conflict,
            self.held,
            self.mismatch,
            self.unavailable,
            self.unknown,
            self.gone,
            self.renewed,
            self.outlived,
            self.takeover,
        ]
        .iter()
        .all(|&n| n > 0)
    }
}

/// The fencing token request `r` proposed with its claim, if it sent one.
fn proposed_token(r: &Req) -> Option<String> {
    r.host
        .callouts
        .borrow()
        .iter()
        .find(|(_, c)| path_of(c).ends_with("/claim"))
        .and_then(|(_, c)| body::decode_request::<ClaimRequest>(&c.body).ok())
        .and_then(|claim| claim.token)
}

/// The fencing token a complete, release or renew callout carries, read as the key store reads it.
fn fenced_token(path: &str, body: &[u8]) -> Result<String, ProtocolError> {
    match path.rsplit('/').next() {
        Some("complete") => body::decode_request::<CompleteRequest>(body).map(|r| r.token),
        Some("release") => body::decode_request::<ReleaseRequest>(body).map(|r| r.token),
        Some("renew") => body::decode_request::<RenewRequest>(body).map(|r| r.token),
        _ => Err(ProtocolError::body(format!(
            "{path} carries no fencing token"
        ))),
    }
}

fn path_of(callout: &Callout) -> String {
    callout
        .headers
        .iter()
        .find(|(n, _)| n == ":path")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn retry_after(reply: &crate::testing::Sent) -> Option<u64> {
    reply
        .header("retry-after")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
}

/// The Retry-After of a 409 for an unknown outcome on hold until `hold_until`.
fn hold_left_s(hold_until: u64, now: u64) -> u64 {
    (hold_until - now).div_ceil(1000).max(1)
}

impl World {
    fn new(with_keystore: bool, stream_mode: bool, release_policy: bool) -> World {
        let ks = if with_keystore {
            r#","keystore":{"cluster":"ks","token":"s3cret"}"#
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
            let cache = NearCache {
                slots: cfg.l1_slots,
                slot_budget: cfg.max_response_bytes + 4096,
            };
            let s = FakeShared::default();
            cache.ensure_slots(&s).unwrap();
            workers.push(Rc::new(Worker::new(cfg.clone(), cache)));
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

    /// Writes the streams of Envoy `e` handed to its root context and not settled yet.
    fn handed_over(&self, e: usize) -> usize {
        self.workers[e].writes.borrow().pending()
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
    fn advance(&mut self, ms: u64, faults: u64) -> Result<(), TestCaseError> {
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
    fn tick(&mut self, e: usize, faults: u64, n: &mut usize) -> Result<(), TestCaseError> {
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
            let ks_token = fenced_token(&path, &callout.body)
                .map_err(|e| TestCaseError::fail(format!("root callout body: {e}")))?;
            let owner = self.reqs.iter().position(|r| {
                r.token.as_deref() == Some(ks_token.as_str())
                    || proposed_token(r).as_deref() == Some(ks_token.as_str())
            });
            let Some(j) = owner else {
                return Err(TestCaseError::fail(format!(
                    "the root context sent {path} with a token the key store never granted"
                )));
            };
            match &purpose {
                Purpose::Renewal(_) => {
                    prop_assert!(path.ends_with("/renew"), "a renewal is {}", path);
                    prop_assert!(
                        self.reqs[j].envoy == e && self.reqs[j].executing(),
                        "renewed request {} no longer executes on this Envoy",
                        j
                    );
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
                self.reqs[j].at_risk |= renewal;
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
                reply.into_bytes(),
                &self.shared[e],
                now,
            );
            prop_assert!(
                more.iter().all(|a| matches!(a, RootAction::Count(_))),
                "only counts: {:?}",
                more
            );
            match purpose {
                Purpose::Renewal(key) => {
                    if !fault.applied() {
                        self.reqs[j].at_risk = true;
                    }
                    let want = match (fault, status) {
                        (Fault::None, Some(200)) => RootReply::Renewed,
                        (Fault::None, Some(409)) => RootReply::RenewalRefused(key),
                        _ => RootReply::RenewalFailed(String::new()),
                    };
                    let same = match (&root, &want) {
                        (RootReply::RenewalFailed(_), RootReply::RenewalFailed(_)) => true,
                        (a, b) => a == b,
                    };
                    prop_assert!(same, "renewal reply {:?}, expected {:?}", root, want);
                }
                Purpose::WriteThenAnswer(..) | Purpose::Detached(_) => {}
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
    fn renew_l1_model(&mut self, e: usize, now: u64) {
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
    fn check_leases(&mut self) -> Result<(), TestCaseError> {
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
    fn forwarded(&mut self, i: usize) -> Result<(), TestCaseError> {
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
                };
                self.l1_model.insert((caller, key), slot);
            }
        }
        Ok(())
    }

    /// The stream ends after its answer: nothing is left for the root context.
    fn end(&mut self, i: usize) -> Result<(), TestCaseError> {
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

    /// Sends a callout to the key store model through `fault`; `req`: the stream that sent it.
    fn call_keystore(
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
    fn ks_apply(
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

    fn answer(&mut self, i: usize, fault: Fault) -> Result<(), TestCaseError> {
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

    fn respond(&mut self, i: usize, status: u16, whole: bool) -> Result<(), TestCaseError> {
        let callouts = self.reqs[i].host.callouts.borrow().len();
        if self.reqs[i].stage == Stage::Capturing {
            // The rest of the body.
            let r = &mut self.reqs[i];
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
        let flow = r.stream.on_response_headers(&r.host, false);
        if !ok {
            // The request did not really run: the key is released, the body streams on.
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
        prop_assert_eq!(flow, Flow::Pause, "buffered until the body ends");
        prop_assert_eq!(r.host.callouts.borrow().len(), callouts);
        r.stage = Stage::Capturing;
        Ok(())
    }

    /// The upstream's whole 2xx arrived: it is kept.
    fn executed(&mut self, i: usize, flow: Flow, callouts: usize) -> Result<(), TestCaseError> {
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
                }),
            };
            self.l1_keep(i, record);
        }
        self.settled(i, flow, callouts)
    }

    /// After the end of an execution: with a key store, the response waits for its write.
    fn settled(&mut self, i: usize, flow: Flow, callouts: usize) -> Result<(), TestCaseError> {
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
    fn l1_keep(&mut self, i: usize, record: Record) -> bool {
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
    fn l1_release(&mut self, i: usize) {
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
    fn unknown_outcome(&mut self, i: usize) {
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

    fn envoy_answers(&mut self, i: usize, answer: EnvoyAnswer) -> Result<(), TestCaseError> {
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

    fn reset(
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

    /// The local replies of request `i` are ones the model allows.
    fn check_replies(&mut self, i: usize) -> Result<(), TestCaseError> {
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
                    s.live(now)
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
                    prop_assert!(
                        held || in_flight,
                        "409 (retry-after {:?}) with no live claim and no unknown outcome on hold",
                        wait
                    );
                    if held {
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
                        .any(|u| unknown(u) && u.hold_until <= now);
                    prop_assert!(gone, "410 with no unknown outcome past its hold");
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Forward,
    Replay(Vec<u8>),
    /// 409 with its Retry-After in seconds.
    Conflict(u64),
    Status(u16),
}

fn run_world(
    ops: &[Op],
    with_keystore: bool,
    stream_mode: bool,
    release_policy: bool,
) -> Result<Stats, TestCaseError> {
    let mut w = World::new(with_keystore, stream_mode, release_policy);
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
            cases: 512,
            failure_persistence: None,
            ..PtConfig::default()
        };
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut runner = TestRunner::new_with_rng(config, rng);
        runner
            .run(&prop::collection::vec(op(), 1..60), |ops| {
                let s = run_world(&ops, with_keystore, false, false)?;
                total.borrow_mut().add(&s);
                Ok(())
            })
            .unwrap();
        let t = *total.borrow();
        assert!(t.all_reached(), "key store {with_keystore}: {t:?}");
        eprintln!("key store {with_keystore}: {t:?}");
    }
}

proptest! {
    #![proptest_config(pt_config())]

    #[test]
    fn one_envoy_without_a_key_store_follows_the_model(
        ops in prop::collection::vec(op(), 1..60),
        stream_mode in any::<bool>(),
        release_policy in prop::bool::weighted(0.2),
    ) {
        run_world(&ops, false, stream_mode, release_policy)?;
    }

    #[test]
    fn two_envoys_with_a_faulty_key_store_keep_the_invariants(
        ops in prop::collection::vec(op(), 1..60),
        stream_mode in any::<bool>(),
        release_policy in prop::bool::weighted(0.2),
    ) {
        run_world(&ops, true, stream_mode, release_policy)?;
    }
}
