//! What the streams of one Envoy worker share with its root context: the config, the near cache,
//! the key-store writes that must outlive their stream, the claims to renew, the duplicates that
//! wait locally, and the requests the plugin executes itself (detached). The root context drives
//! [`Worker::on_tick`], [`Worker::start_detached`] and [`Worker::on_reply`] and carries out the
//! [`RootAction`]s they return; every decision here is plain Rust.

pub use crate::background::actions::{Answer, Purpose, RootAction, RootReply};
use crate::background::batch::Batcher;
use crate::background::deferred::{Deferred, Retrier, Settled};
use crate::background::detached::{ending, DetachedJob};
use crate::background::leases::{HeldClaim, Leases};
use crate::background::trailers::TrailerHandover;
use crate::background::waiting::Waiters;
use crate::budget::Budget;
use crate::config::Config;
use crate::found::Found;
use crate::host::{Headers, SharedData};
use crate::keystore_client::{self, AckReply};
use crate::l1::NearCache;
use crate::metrics::Metric;
use crate::record::Record;
use crate::reply::LocalReply;
use crate::reroute::{RouteTo, RoutedStreams};
use crate::scope::RecordKey;
use idempotency_protocol::MAX_RENEW_BATCH;
use log::{debug, warn};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

pub struct Worker {
    pub cfg: Config,
    pub cache: NearCache,
    /// Writes handed over by streams (records, releases), sent and retried by the root context.
    pub writes: RefCell<Retrier>,
    pub leases: RefCell<Leases>,
    pub waiters: RefCell<Waiters>,
    /// The bytes this worker's VM holds for clients, against `memory_budget_bytes`.
    pub budget: Rc<Budget>,
    /// Renewal batches in flight, by callout token: the keys, in the batch's order.
    renewals: RefCell<HashMap<u32, Vec<RecordKey>>>,
    /// Detached executions queued by streams, waiting for the root context to send them.
    pub(super) detached_queue: RefCell<Vec<DetachedJob>>,
    /// Detached executions on their way upstream, by callout token.
    pub(super) detached_running: RefCell<HashMap<u32, DetachedJob>>,
    /// Streams to answer once a write lands, by the write's callout token.
    answer_after: RefCell<HashMap<u32, Answer>>,
    /// The shared queue that wakes this worker's root context (see [`Worker::set_doorbell`]).
    doorbell: Cell<Option<u32>>,
    /// Trailers of root-context answers, until their stream's last body callback.
    pub trailers: TrailerHandover,
    /// The streams' key-store calls gathered while others travel (`keystore.batch_max_entries`).
    pub batcher: RefCell<Batcher>,
    /// Streams whose root-context answer went through the replay listener.
    pub routed: RoutedStreams,
}

impl Worker {
    pub fn new(cfg: Config, cache: NearCache) -> Worker {
        let budget = Budget::new(cfg.memory_budget_bytes);
        let batcher = Batcher::of(cfg.keystore.as_ref());
        Worker {
            cfg,
            cache,
            writes: RefCell::new(Retrier::default()),
            leases: RefCell::new(Leases::default()),
            waiters: RefCell::new(Waiters::default()),
            budget,
            renewals: RefCell::new(HashMap::new()),
            detached_queue: RefCell::new(Vec::new()),
            detached_running: RefCell::new(HashMap::new()),
            answer_after: RefCell::new(HashMap::new()),
            doorbell: Cell::new(None),
            trailers: TrailerHandover::default(),
            batcher: RefCell::new(batcher),
            routed: RoutedStreams::default(),
        }
    }

    /// Hands a key-store write to the root context (sent on its next tick, retried on failure).
    pub fn defer(&self, write: Deferred) {
        self.writes.borrow_mut().push(write);
    }

    /// The shared queue whose messages wake the root context (`on_queue_ready`).
    pub fn set_doorbell(&self, queue: u32) {
        self.doorbell.set(Some(queue));
    }

    pub fn doorbell(&self) -> Option<u32> {
        self.doorbell.get()
    }

    /// Queues a detached execution; the stream then rings the doorbell.
    pub fn queue_detached(&self, job: DetachedJob) {
        self.detached_queue.borrow_mut().push(job);
    }

    /// The detached executions to send now (the root context was woken). The request moves into
    /// the callout (no copy): once sent, only Envoy holds its body.
    pub fn start_detached(&self) -> Vec<RootAction> {
        std::mem::take(&mut *self.detached_queue.borrow_mut())
            .into_iter()
            .map(|mut job| {
                let callout = std::mem::take(&mut job.upstream);
                RootAction::Send(callout, Purpose::Detached(Box::new(job)))
            })
            .collect()
    }

    /// Renews due leases in L1 at once, answers local waiters whose record landed (or whose wait
    /// ended), and returns every callout to send now: deferred writes and key-store renewals, the
    /// claims due in batches of at most [`MAX_RENEW_BATCH`] (one callout per tick with fewer):
    /// each callout costs Envoy far more than the entries in it.
    pub fn on_tick(&self, shared: &dyn SharedData, now_ms: u64) -> Vec<RootAction> {
        let mut out: Vec<RootAction> = self
            .writes
            .borrow_mut()
            .take_due(now_ms)
            .into_iter()
            .map(|d| RootAction::Send(d.callout.clone(), Purpose::Write(d)))
            .collect();
        let lease_ms = self.cfg.lock_lease_ms;
        let mut to_renew = Vec::new();
        for claim in self.leases.borrow_mut().due(now_ms, lease_ms) {
            if claim.l1 {
                match self
                    .cache
                    .renew(shared, &claim.key, claim.owner, now_ms, lease_ms)
                {
                    Ok(true) => {}
                    Ok(false) => warn!(
                        "key {}: near-cache claim not renewed: no longer ours",
                        claim.key.short()
                    ),
                    Err(e) => warn!("key {}: near-cache renewal failed: {e}", claim.key.short()),
                }
            }
            // A token means the key store granted the claim.
            if let Some(token) = claim.token {
                to_renew.push((claim.key, token));
            }
        }
        if let Some(ks) = &self.cfg.keystore {
            for batch in to_renew.chunks(MAX_RENEW_BATCH) {
                let callout = keystore_client::renew_batch(ks, batch, lease_ms);
                let keys = batch.iter().map(|(key, _)| *key).collect();
                out.push(RootAction::Send(callout, Purpose::Renewal(keys)));
            }
        }
        // Calls that wait for a batch while no callout of theirs travels (a safety net: a
        // returning callout or an ending stream sends them at once).
        out.extend(self.flush_batches());
        self.answer_waiters(shared, now_ms, &mut out);
        out
    }

    fn answer_waiters(&self, shared: &dyn SharedData, now_ms: u64, out: &mut Vec<RootAction>) {
        if self.waiters.borrow().is_empty() {
            return;
        }
        let mut replies = Vec::new();
        let answered = self.waiters.borrow_mut().settle(|w| {
            let found = self.cache.peek(shared, &w.key, &w.fingerprint, now_ms);
            // A replay to a gRPC caller goes through the replay listener (`super::routed`).
            let route = match &found {
                Some(Found::Completed(record)) if w.routed && record.is_replayable() => {
                    Some(Box::new(RouteTo {
                        key: w.key,
                        record: record.clone(),
                        first: false,
                        grpc: w.grpc,
                    }))
                }
                _ => None,
            };
            if let Some(Found::InFlight { .. }) = found {
                if now_ms < w.until_ms {
                    return false;
                }
                replies.push(Metric::WaitTimedOut);
            }
            // Freed (released, expired) or unreadable: the client retries and runs it.
            let reply = found
                .and_then(|found| {
                    // L1 never reports an abandoned claim (only the key store does), so no
                    // route's hold applies here.
                    LocalReply::for_found(
                        found,
                        now_ms,
                        0,
                        &self.cfg.replay_headers,
                        self.cfg.expires_header.as_deref(),
                    )
                })
                .unwrap_or_else(|| LocalReply::conflict(0));
            let reply = if w.grpc { reply.for_grpc() } else { reply };
            if reply.metric == Metric::Replayed {
                replies.push(Metric::WaitReplayed);
            }
            replies.push(reply.metric);
            out.push(RootAction::Answer(Answer {
                stream_id: w.stream_id,
                status: reply.status,
                headers: reply.headers,
                body: reply.body,
                trailers: reply.trailers,
                route,
            }));
            true
        });
        debug!("{} local waiter(s) answered", answered.len());
        out.extend(replies.into_iter().map(RootAction::Count));
    }

    /// Records that the root context sent `purpose` as callout `token`.
    pub fn sent(&self, token: u32, purpose: Purpose, now_ms: u64) {
        match purpose {
            Purpose::Write(d) => self.writes.borrow_mut().sent(token, d),
            Purpose::WriteThenAnswer(d, answer) => {
                self.writes.borrow_mut().sent(token, d);
                self.answer_after.borrow_mut().insert(token, answer);
            }
            Purpose::Renewal(keys) => {
                self.renewals.borrow_mut().insert(token, keys);
            }
            Purpose::Detached(mut job) => {
                // Dispatched: Envoy has its own copy of the request.
                job.held = None;
                job.sent_ms = now_ms;
                self.leases
                    .borrow_mut()
                    .hold(HeldClaim::of(&job.claim, now_ms));
                self.detached_running.borrow_mut().insert(token, *job);
            }
            Purpose::Batch(flight) => self.batch_sent(token, flight),
        }
    }

    /// A callout the root context meant to send could not go out.
    pub fn not_sent(
        &self,
        purpose: Purpose,
        why: &str,
        shared: &dyn SharedData,
        now_ms: u64,
    ) -> Vec<RootAction> {
        match purpose {
            // Queued again: the next tick tries once more, until the write's deadline.
            Purpose::Write(d) => self.writes.borrow_mut().push(d),
            Purpose::WriteThenAnswer(d, answer) => {
                self.writes.borrow_mut().push(d);
                return vec![RootAction::Answer(answer)];
            }
            Purpose::Renewal(keys) => warn!("{} lease renewal(s) not sent: {why}", keys.len()),
            Purpose::Detached(job) => {
                warn!(
                    "key {}: detached request not sent: {why}",
                    job.claim.key.short()
                );
                return self.settle_detached(
                    *job,
                    crate::outcome::callout::dispatch_failed(),
                    Default::default(),
                    shared,
                    now_ms,
                );
            }
            Purpose::Batch(flight) => return self.batch_not_sent(flight, why),
        }
        Vec::new()
    }

    pub fn is_detached(&self, token: u32) -> bool {
        self.detached_running.borrow().contains_key(&token)
    }

    /// A reply to one of the root context's callouts. `headers` are read only for detached runs.
    pub fn on_reply(
        &self,
        token: u32,
        status: Option<u16>,
        headers: Headers,
        body: Vec<u8>,
        shared: &dyn SharedData,
        now_ms: u64,
    ) -> (RootReply, Vec<RootAction>) {
        self.on_reply_with_trailers(token, status, (headers, body, Vec::new()), shared, now_ms)
    }

    /// [`Worker::on_reply`] with the callout's trailers: a detached execution keeps them in its
    /// record (`reply`: headers, body, trailers).
    pub fn on_reply_with_trailers(
        &self,
        token: u32,
        status: Option<u16>,
        reply: (Headers, Vec<u8>, Headers),
        shared: &dyn SharedData,
        now_ms: u64,
    ) -> (RootReply, Vec<RootAction>) {
        let (headers, body, trailers) = reply;
        if let Some(job) = self.detached_running.borrow_mut().remove(&token) {
            let end = ending(status, &headers, &body);
            let actions = self.settle_detached(job, end, (headers, body, trailers), shared, now_ms);
            return (RootReply::Detached, actions);
        }
        let renewal = self.renewals.borrow_mut().remove(&token);
        if let Some(keys) = renewal {
            return Worker::on_renewals(keys, status, &body);
        }
        if let Some(actions) = self.batch_reply(token, status, &body) {
            return (RootReply::Batch, actions);
        }
        let settled = self
            .writes
            .borrow_mut()
            .on_reply(token, status, &body, now_ms);
        let mut actions = Vec::new();
        if let Some(answer) = self.answer_after.borrow_mut().remove(&token) {
            actions.push(RootAction::Answer(answer));
        }
        match settled {
            Settled::Unknown => (RootReply::Unknown, actions),
            settled => {
                // A write that is retried is counted once, when it is given up.
                if matches!(settled, Settled::GaveUp(_)) {
                    actions.push(RootAction::Count(Metric::StoreError));
                }
                (RootReply::Write(settled), actions)
            }
        }
    }

    /// The answer to a batch of renewals: a refused one counts `renewal_refused`; a batch that
    /// failed counts a store error for each of its keys, as that many single renewals would.
    fn on_renewals(
        keys: Vec<RecordKey>,
        status: Option<u16>,
        body: &[u8],
    ) -> (RootReply, Vec<RootAction>) {
        match keystore_client::parse_renew_batch(status, body, keys.len()) {
            Ok(acks) => {
                let total = keys.len();
                let refused: Vec<RecordKey> = keys
                    .into_iter()
                    .zip(acks)
                    .filter(|(_, ack)| *ack == AckReply::Stale)
                    .map(|(key, _)| key)
                    .collect();
                let renewed = total.saturating_sub(refused.len());
                debug!("{renewed} lease(s) renewed");
                let counts = refused
                    .iter()
                    .map(|_| RootAction::Count(Metric::RenewalRefused))
                    .collect();
                (RootReply::Renewals { renewed, refused }, counts)
            }
            Err(error) => {
                let counts = keys
                    .iter()
                    .map(|_| RootAction::Count(Metric::StoreError))
                    .collect();
                let keys = keys.len();
                (RootReply::RenewalFailed { keys, error }, counts)
            }
        }
    }

    /// Keeps `record` for `key` in L1 under `owner`'s claim (logged when it cannot).
    pub fn l1_keep(
        &self,
        shared: &dyn SharedData,
        key: &RecordKey,
        owner: u64,
        record: &Record,
        now_ms: u64,
    ) {
        match self.cache.complete(shared, key, owner, record, now_ms) {
            Ok(true) => {}
            Ok(false) => warn!(
                "key {}: near-cache claim was taken over before completion",
                key.short()
            ),
            Err(e) => warn!(
                "key {}: record not kept in the near cache: {e}",
                key.short()
            ),
        }
    }

    pub fn l1_release(&self, shared: &dyn SharedData, key: &RecordKey, owner: u64, now_ms: u64) {
        if let Err(e) = self.cache.release(shared, key, owner, now_ms) {
            warn!(
                "key {}: near-cache claim not released (its lease will expire): {e}",
                key.short()
            );
        }
    }
}
