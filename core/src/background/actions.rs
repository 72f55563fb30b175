//! What the root context is asked to do and what its callouts' replies meant: the vocabulary between
//! [`super::worker::Worker`]'s steps and the adapter that carries them out (`src/adapter/root.rs`),
//! apart so that a reader of either finds it in one short file.

use crate::background::batch::{Delivery, Flight};
use crate::background::deferred::{Deferred, Settled};
use crate::background::detached::DetachedJob;
use crate::host::{Callout, Headers};
use crate::metrics::Metric;
use crate::reroute::RouteTo;
use crate::scope::RecordKey;

/// A reply for a stream that the root context answers (if the stream is still there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub stream_id: u32,
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Sent after the body (HTTP/2 and later), through [`super::trailers::TrailerHandover`].
    pub trailers: Headers,
    /// Sent through the replay listener instead, when the request can still be re-routed
    /// (`super::routed`).
    pub route: Option<Box<RouteTo>>,
}

/// Why the root context sends a callout.
#[derive(Debug, Clone)]
pub enum Purpose {
    Write(Deferred),
    /// A write, then an answer to a stream that waits for it.
    WriteThenAnswer(Deferred, Answer),
    /// One batch of renewals: the keys, in the order of the batch's entries.
    Renewal(Vec<RecordKey>),
    Detached(Box<DetachedJob>),
    /// Streams' key-store calls gathered while others travelled (`super::batch`).
    Batch(Flight),
}

/// What the root context does next.
#[derive(Debug, Clone)]
pub enum RootAction {
    Send(Callout, Purpose),
    Answer(Answer),
    /// The answer to a stream's key-store call that travelled in a batch: the stream's callout
    /// callback runs with it (a stream that is gone is skipped).
    Deliver(Delivery),
    Count(Metric),
}

/// What a reply to one of the root context's callouts meant (for its log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootReply {
    Write(Settled),
    /// A batch of renewals answered: how many were renewed, and the keys whose claim the key
    /// store no longer knows as ours (taken over, or expired).
    Renewals {
        renewed: usize,
        refused: Vec<RecordKey>,
    },
    /// A batch of renewals failed as a whole: each of its keys is retried at the next period.
    RenewalFailed {
        keys: usize,
        error: String,
    },
    Detached,
    /// A callout carrying streams' calls (`super::batch`): its answers go to their streams.
    Batch,
    Unknown,
}
