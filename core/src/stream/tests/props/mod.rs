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
//! that [`model`] holds as an in-memory map implementing README "Key-store API (v1)": claim,
//! lookup, complete, release and renew, where complete, release and renew are accepted only from
//! the current claim's token while the key store keeps the claim (live, or abandoned after its
//! lease: reported to claims under `lock`, taken over under `release`). The model reads and writes bodies with the
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
//!   same request is on hold (its Retry-After: the hold left, in seconds rounded up), or while a
//!   key-store claim of the same body is abandoned (its lease ran out: a dead or cut-off holder)
//!   and within the hold after its lease's end; 410 "outcome unknown" only after the hold of a
//!   live unknown-outcome record of the same request, or of such an abandoned claim;
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

mod callouts;
mod model;
mod ops;
mod replies;
mod requests;
mod upstream;
mod world;

use model::*;
use ops::*;

use crate::background::deferred::Settled;
use crate::background::worker::{Purpose, RootAction, RootReply, Worker};
use crate::config::Config;
use crate::configure::configure;
use crate::host::Callout;
use crate::record::{Outcome, Record, StoredResponse};
use crate::stream::{Flow, Stream, REPLAYED_HEADER};
use crate::testing::{FakeHost, FakeShared};
use idempotency_protocol::{
    body, json, AbandonedPolicy, ClaimAnswer, ClaimRequest, ClaimResponse, CompleteRequest,
    ErrorBody, FencedResponse, Hex64, LookupRequest, LookupResponse, ProtocolError, ReleaseRequest,
    RenewBatchRequest, RenewBatchResponse, RenewOutcome, RenewRequest, ABANDONED_RETRY_AFTER_MS,
    DEFAULT_ABANDONED_RETENTION_MS,
};
use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;
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
    /// 409 for a key-store claim abandoned (its lease ran out), during the hold after its lease.
    abandoned: u64,
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
    /// lapsed (L1's lease; with a key store, only under `release`, or past the abandoned claim's
    /// retention).
    takeover: u64,
}

impl Stats {
    fn add(&mut self, s: &Stats) {
        self.forwarded += s.forwarded;
        self.replayed += s.replayed;
        self.conflict += s.conflict;
        self.held += s.held;
        self.abandoned += s.abandoned;
        self.mismatch += s.mismatch;
        self.unavailable += s.unavailable;
        self.unknown += s.unknown;
        self.gone += s.gone;
        self.renewed += s.renewed;
        self.outlived += s.outlived;
        self.takeover += s.takeover;
    }

    /// Every outcome reached. With a key store (and `unknown_outcome: "lock"`, as the coverage
    /// runs have it), a claim whose lease lapsed is abandoned, not taken over: `abandoned` is
    /// reached there and `takeover` only without one (L1's own lease).
    fn all_reached(&self, with_keystore: bool) -> bool {
        let lapsed = if with_keystore {
            self.abandoned
        } else {
            self.takeover
        };
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
            lapsed,
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

/// The fencing tokens a root callout carries (one, or a renew-batch's, in order), read as the key
/// store reads them.
fn fenced_tokens(path: &str, body: &[u8]) -> Result<Vec<String>, ProtocolError> {
    match path.rsplit('/').next() {
        Some("renew-batch") => body::decode_request::<RenewBatchRequest>(body)
            .map(|b| b.renewals.into_iter().map(|r| r.token).collect()),
        _ => fenced_token(path, body).map(|t| vec![t]),
    }
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
        assert!(
            t.all_reached(with_keystore),
            "key store {with_keystore}: {t:?}"
        );
        eprintln!("key store {with_keystore}: {t:?}");
    }
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(48))]

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
