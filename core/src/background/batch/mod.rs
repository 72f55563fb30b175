//! Group commit of the key-store calls (claim, lookup, complete, release) that the streams of one
//! Envoy worker make, the way a database amortises its log flushes: a callout costs Envoy far
//! more than the bytes in it, so calls that arrive while earlier ones travel leave together.
//!
//! - While fewer than `keystore.batches_in_flight` callouts travel, a call leaves at once on its
//!   own callout, from its stream (a quiet gateway adds no latency).
//! - Otherwise it waits in the queue; when a callout returns, the root context sends what waits
//!   as one batch of at most `keystore.batch_max_entries` (a batch of one on the call's own
//!   endpoint), and delivers each entry's answer to its stream.
//! - A stream that ends takes its waiting calls out of the queue; an answer that arrives for it
//!   later is dropped, never given to another stream ([`Batcher::forget`]).
//!
//! This file is the queue and its bookkeeping only; `io.rs` turns batches into callouts and
//! their replies into each entry's answer.

mod io;
#[cfg(test)]
mod tests;

pub use io::Delivery;

use crate::host::Callout;
use crate::keystore_client::StoreCall;
use std::collections::{HashMap, HashSet, VecDeque};

/// Entry ids live apart from Envoy's callout tokens (high bit set), so that a stream paused on
/// one never takes the other for it.
const ENTRY_BIT: u32 = 1 << 31;

/// What a batch adds to each call's own body, at most (its operation, its length).
const ENTRY_OVERHEAD: usize = 32;

/// One call of a stream, as it waits for a batch.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where its answer goes: the stream, and the id the stream is paused on.
    pub stream_id: u32,
    pub id: u32,
    pub call: StoreCall,
    /// The call on its own endpoint (a batch of one is sent so).
    pub single: Callout,
}

/// What became of a call a stream submitted.
#[derive(Debug)]
pub enum Submitted {
    /// Room in flight: the stream sends the call itself now (then [`Batcher::sent_single`]).
    Now(Callout),
    /// It waits for the next batch; its answer comes with this id.
    Queued(u32),
    /// A call that never waits behind others: the stream sends it on its own callout, which holds
    /// no slot (a claim that waits for a key in flight).
    Alone(Callout),
}

/// A callout of the root context carrying queued entries.
#[derive(Debug, Clone)]
pub struct Flight {
    /// The entries, in the batch's order: their streams and ids.
    pub entries: Vec<(u32, u32)>,
    /// Each entry's call (`claim`, `complete`, ...): the answer must be to that call.
    pub ops: Vec<&'static str>,
    /// Sent on the single endpoint: its reply is the one entry's answer as it is.
    pub single: bool,
    /// Each entry's call on its own endpoint, kept while a batch travels: a key store that
    /// predates `/v1/batch` answers 404, and the calls go again one by one.
    pub singles: Vec<Callout>,
}

/// The queue and the callouts in flight of one worker.
#[derive(Debug, Default)]
pub struct Batcher {
    max_entries: usize,
    /// The streams' callouts are known by token: batching is (or was) on, so the root context may
    /// have handed a stream an answer, and a call the stream made then replies to the root context.
    track: bool,
    /// The bytes of calls one batch carries at most (the key store's request body limit is
    /// larger than its largest record, `keystore.max_record_bytes`); a call alone may be larger.
    max_bytes: usize,
    max_in_flight: usize,
    queue: VecDeque<Entry>,
    /// Single callouts the streams sent, by token: their stream.
    singles: HashMap<u32, u32>,
    /// Callouts of calls that never wait ([`Submitted::Alone`]), by token: their stream. They hold
    /// no slot; they are known so that a reply the root context gets reaches its stream.
    alone: HashMap<u32, u32>,
    /// Batches the root context sent, by token.
    batches: HashMap<u32, Flight>,
    /// Slots taken for callouts being sent (a stream's single call, a batch of the root context).
    reserved: usize,
    /// Streams that ended while entries of theirs travel in a batch.
    gone: HashSet<u32>,
    next_id: u32,
    /// Batches sent and the entries in them (the `batches_sent`, `batch_entries` counters).
    pub sent_batches: u64,
    pub sent_entries: u64,
}

impl Batcher {
    /// `max_entries` 0: off (every call on its own callout, nothing counted here).
    pub fn new(max_entries: usize, max_in_flight: usize, max_bytes: usize) -> Batcher {
        Batcher {
            max_entries,
            track: max_entries > 0,
            max_bytes,
            max_in_flight: max_in_flight.max(1),
            ..Batcher::default()
        }
    }

    /// The batcher a worker's key-store settings ask for (off without a key store).
    pub fn of(keystore: Option<&crate::config::KeystoreConfig>) -> Batcher {
        keystore.map_or_else(Batcher::default, |k| {
            let max_bytes = usize::try_from(k.max_record_bytes).unwrap_or(usize::MAX);
            Batcher::new(k.batch_max_entries, k.batches_in_flight, max_bytes)
        })
    }

    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    /// The key store has no batch endpoint (it predates it): from now on every call goes alone;
    /// what waits leaves one by one.
    pub fn turn_off(&mut self) {
        self.max_entries = 0;
    }

    /// Slots for `n` callouts the root context sends outside [`Batcher::take`] (each then
    /// [`Batcher::batch_sent`] or [`Batcher::batch_not_sent`]).
    pub fn reserve(&mut self, n: usize) {
        self.reserved += n;
    }

    /// Callouts of the streams' calls travelling now (or being sent).
    pub fn in_flight(&self) -> usize {
        self.singles.len() + self.batches.len() + self.reserved
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A stream's call: at once if a slot is free and nothing waits ahead of it, else queued.
    pub fn submit(&mut self, stream_id: u32, call: StoreCall, single: Callout) -> Submitted {
        if !self.enabled() || (self.queue.is_empty() && self.in_flight() < self.max_in_flight) {
            if self.track {
                self.reserved += 1;
            }
            return Submitted::Now(single);
        }
        self.next_id = self.next_id.wrapping_add(1);
        let id = ENTRY_BIT | (self.next_id & !ENTRY_BIT);
        self.queue.push_back(Entry {
            stream_id,
            id,
            call,
            single,
        });
        Submitted::Queued(id)
    }

    /// The stream sent the call [`Submitted::Now`] gave it, as callout `token`.
    pub fn sent_single(&mut self, token: u32, stream_id: u32) {
        if self.track {
            self.reserved = self.reserved.saturating_sub(1);
            self.singles.insert(token, stream_id);
        }
    }

    /// The stream sent a call [`Submitted::Alone`] gave it, as callout `token`.
    pub fn sent_alone(&mut self, token: u32, stream_id: u32) {
        if self.track {
            self.alone.insert(token, stream_id);
        }
    }

    /// The stream could not send it: its slot is free again.
    pub fn single_not_sent(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// A reply to callout `token` arrived: if it was a stream's single call, its slot is free and
    /// its stream is returned.
    pub fn single_landed(&mut self, token: u32) -> Option<u32> {
        self.singles
            .remove(&token)
            .or_else(|| self.alone.remove(&token))
    }

    /// Whether the root context should send a batch now (something waits and a slot is free).
    pub fn ready(&self) -> bool {
        !self.queue.is_empty() && (!self.enabled() || self.in_flight() < self.max_in_flight)
    }

    /// The next batch to send, if [`Batcher::ready`]: at most `max_entries` entries, oldest first.
    /// It holds a slot until [`Batcher::batch_sent`] or [`Batcher::batch_not_sent`].
    pub fn take(&mut self) -> Option<Vec<Entry>> {
        if !self.ready() {
            return None;
        }
        let mut n = 0;
        let mut bytes = 0usize;
        for entry in self.queue.iter().take(self.max_entries.max(1)) {
            bytes = bytes.saturating_add(entry.single.body.len() + ENTRY_OVERHEAD);
            if n > 0 && bytes > self.max_bytes {
                break;
            }
            n += 1;
        }
        self.reserved += 1;
        Some(self.queue.drain(..n).collect())
    }

    /// The root context could not send a batch [`Batcher::take`] gave it.
    pub fn batch_not_sent(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// The root context sent `flight` as callout `token`.
    pub fn batch_sent(&mut self, token: u32, flight: Flight) {
        self.reserved = self.reserved.saturating_sub(1);
        self.sent_batches += 1;
        self.sent_entries += flight.entries.len() as u64;
        self.batches.insert(token, flight);
    }

    /// The reply to batch `token` arrived: the batch, and for each entry whether its stream is
    /// still there to be answered.
    pub fn batch_landed(&mut self, token: u32) -> Option<(Flight, Vec<bool>)> {
        let flight = self.batches.remove(&token)?;
        let live = flight
            .entries
            .iter()
            .map(|(stream, _)| !self.gone.contains(stream))
            .collect();
        self.prune_gone();
        Some((flight, live))
    }

    /// Leaves out entries of ended streams from a batch that could not be sent.
    pub fn live(&self, entries: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
        entries
            .into_iter()
            .filter(|(stream, _)| !self.gone.contains(stream))
            .collect()
    }

    /// The stream ended: its waiting calls leave the queue, its single callout no longer holds a
    /// slot (Envoy drops the reply of a stream that is gone), and answers to its entries in a
    /// batch are dropped. True when a slot was freed for what waits.
    pub fn forget(&mut self, stream_id: u32) -> bool {
        self.queue.retain(|e| e.stream_id != stream_id);
        self.alone.retain(|_, s| *s != stream_id);
        let before = self.singles.len();
        self.singles.retain(|_, s| *s != stream_id);
        let freed = self.singles.len() < before;
        if self
            .batches
            .values()
            .any(|f| f.entries.iter().any(|(s, _)| *s == stream_id))
        {
            self.gone.insert(stream_id);
        }
        freed && self.ready()
    }

    /// Forgets ended streams that no batch in flight names any more.
    fn prune_gone(&mut self) {
        let batches = &self.batches;
        self.gone.retain(|s| {
            batches
                .values()
                .any(|f| f.entries.iter().any(|(stream, _)| stream == s))
        });
    }
}
