//! Duplicates that wait, on an Envoy without a key store, for the record of their key's first
//! request (`in_flight: "wait"`). The root context looks at L1 for each of them on every tick and
//! answers the stream itself; with a key store, the key store holds the wait instead.

use crate::budget::Held;
use crate::fingerprint::Fingerprint;
use crate::scope::RecordKey;

/// One waiting stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub stream_id: u32,
    pub key: RecordKey,
    pub fingerprint: Fingerprint,
    /// Past this time the duplicate gets 409.
    pub until_ms: u64,
    /// The duplicate is a gRPC call: a refusal is answered as a gRPC status.
    pub grpc: bool,
    /// A replay goes through the replay listener (`routed_replay`, and the request's headers are
    /// still held).
    pub routed: bool,
}

/// The waiting streams of one worker, each with its share of the memory budget (given back when
/// it is answered or leaves).
#[derive(Debug, Default)]
pub struct Waiters {
    waiting: Vec<(Waiter, Held)>,
}

impl Waiters {
    pub fn add(&mut self, w: Waiter, held: Held) {
        self.waiting.push((w, held));
    }

    /// A waiting client that leaves costs nothing more.
    pub fn remove(&mut self, stream_id: u32) {
        self.waiting.retain(|(w, _)| w.stream_id != stream_id);
    }

    /// Removes and returns the waiters `done` says are answered.
    pub fn settle(&mut self, mut done: impl FnMut(&Waiter) -> bool) -> Vec<Waiter> {
        let (answered, left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(w, _)| done(w));
        self.waiting = left;
        answered.into_iter().map(|(w, _)| w).collect()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}
