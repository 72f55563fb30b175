//! The routing step both the stream and the root context take to send a replay through the replay
//! listener (README, "Routed replays"): [`to_listener`] re-routes a held request, [`RouteTo`] says
//! that a root-context answer goes that way, and [`RoutedStreams`] remembers which streams the root
//! context routed. It sits below `stream/` and `background/`, which both use it
//! (`crate::stream::routed` for a retry, `crate::background::routed` for the root context's
//! answers).

use crate::host::Host;
use crate::l1::NearCache;
use crate::record::Record;
use crate::replay;
use crate::scope::RecordKey;
use std::cell::RefCell;
use std::collections::HashMap;

/// Re-routes the held request on `host`'s stream to the replay listener, which answers with
/// `record`: puts the record into L1 (one from the key store is not there yet; a live record there
/// is left as it is) and checks that L1 holds it, sets the filter state the replay route matches
/// and makes Envoy choose the route again, then rewrites `content-type` (the original kept) and
/// `:path` and adds the ticket (signed with `secret`, the current one). The caller resumes the
/// request. Used by the stream for a retry (`crate::stream::routed`) and by the root context for
/// the answers it sends (`crate::background::routed`).
pub fn to_listener(
    host: &dyn Host,
    cache: &NearCache,
    secret: &[u8],
    key: &RecordKey,
    record: &Record,
) -> Result<(), &'static str> {
    let now = host.now_ms();
    let _ = cache.complete(host, key, host.random_u64(), record, now);
    if cache.completed(host, key, now).is_none() {
        return Err("L1 could not take the record");
    }
    if !host.set_filter_state(replay::FILTER_STATE, replay::FILTER_STATE_VALUE)
        || !host.clear_route_cache()
    {
        return Err("Envoy refused the filter state");
    }
    if let Some(content_type) = host.request_header("content-type") {
        host.set_request_header(replay::CONTENT_TYPE_HEADER, &content_type);
    }
    host.set_request_header("content-type", replay::CONTENT_TYPE);
    host.set_request_header(":path", replay::PATH.as_bytes());
    let ticket = replay::ticket(secret, key, now);
    host.set_request_header(replay::TICKET_HEADER, ticket.as_bytes());
    Ok(())
}

/// Where a root-context answer (`crate::background::actions::Answer`) goes instead of a local
/// reply: the record the replay listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTo {
    pub key: RecordKey,
    pub record: Record,
    /// The first answer of a detached execution, not a replay.
    pub first: bool,
    /// The caller is gRPC: when the answer cannot be routed, it gets a retryable `UNAVAILABLE`
    /// rather than a local reply it would read as `UNKNOWN`.
    pub grpc: bool,
}

/// Streams the root context routed to the replay listener, until their answer's headers arrive.
#[derive(Debug, Default)]
pub struct RoutedStreams {
    /// By stream id: whether the answer is a first answer.
    streams: RefCell<HashMap<u32, bool>>,
}

impl RoutedStreams {
    pub fn mark(&self, stream_id: u32, first: bool) {
        self.streams.borrow_mut().insert(stream_id, first);
    }

    /// Whether `stream_id` was routed (and, if so, whether its answer is a first answer); taken
    /// once.
    pub fn take(&self, stream_id: u32) -> Option<bool> {
        self.streams.borrow_mut().remove(&stream_id)
    }

    pub fn len(&self) -> usize {
        self.streams.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.borrow().is_empty()
    }
}
