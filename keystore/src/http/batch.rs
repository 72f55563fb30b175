//! `POST /v1/batch`: several calls of any kind (claim, complete, release, lookup) in one request,
//! each answered exactly as its single call would be, in order (the contract is the protocol
//! crate's `batch` module; README, "Key-store API").
//!
//! The entries run concurrently: on Redis they share the multiplexed connection, so their
//! scripts go out back to back (pipelined, one round trip for the batch rather than one per
//! entry), and on Redis Cluster each goes to the node of its key's slot at once; on the memory
//! backend each is one step on the map. Every entry has its own backend time bound, its own
//! metrics (counted under its call's name, as the single call), and its own error: a malformed
//! entry is its 400, a backend failure its 503, and neither touches the other entries.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::future::join_all;

use super::body::BATCH_OP as OP;
use super::formats::{answer, formats};
use super::{AppState, Failure};
use crate::protocol::{BatchAnswer, BatchEntry, BatchResponse, ProtocolError};

/// Answers a batch: 400 naming the problem when the envelope is malformed (then no entry ran),
/// else 200 with one answer per entry.
pub(super) async fn batch(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (format, reply) = formats(&headers);
    let bytes = s.body_or_failure(OP, body)?;
    let entries = format.read_entries(&bytes).map_err(|e| {
        s.metrics.op(OP, "bad_request");
        Failure(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    // The body is no longer needed while the entries run (a batch of completes holds records).
    drop(bytes);
    s.metrics.batches.inc();
    #[allow(clippy::cast_precision_loss)] // at most MAX_BATCH_ENTRIES
    s.metrics.batch_entries.observe(entries.len() as f64);
    let answers = join_all(entries.into_iter().map(|e| s.entry(e))).await;
    s.metrics.op(OP, "answered");
    Ok(answer(reply, StatusCode::OK, &BatchResponse { answers }))
}

impl AppState {
    /// One entry's answer: what its single call would answer, an error included.
    async fn entry(&self, entry: Result<BatchEntry, ProtocolError>) -> BatchAnswer {
        let result = match entry {
            Err(e) => {
                self.metrics.op(OP, "bad_entry");
                Err(Failure(StatusCode::BAD_REQUEST, e.to_string()))
            }
            Ok(BatchEntry::Claim(r)) => self.claim_answer(&r).await.map(BatchAnswer::Claim),
            Ok(BatchEntry::Lookup(r)) => self.lookup_answer(&r).await.map(BatchAnswer::Lookup),
            Ok(BatchEntry::Complete(r)) => {
                self.complete_answer(&r).await.map(BatchAnswer::Complete)
            }
            Ok(BatchEntry::Release(r)) => self.release_answer(&r).await.map(BatchAnswer::Release),
        };
        result.unwrap_or_else(|Failure(status, error)| BatchAnswer::Error {
            status: status.as_u16(),
            error,
        })
    }
}

/// A fenced entry's status is its single call's: the protocol derives it from the answer, the
/// single call's endpoint from `fenced_status`.
#[cfg(test)]
mod tests {
    use super::super::calls::fenced_status;
    use super::*;
    use crate::protocol::FencedResponse;

    #[test]
    fn a_fenced_entry_has_its_single_calls_status() {
        for f in [
            FencedResponse::Stored,
            FencedResponse::Released,
            FencedResponse::Stale,
        ] {
            assert_eq!(BatchAnswer::Complete(f).status(), fenced_status(f).as_u16());
        }
    }
}
