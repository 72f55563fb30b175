//! The compact form of a batch ([`crate::batch`]) and of its answer. Each entry and each answer
//! carries the single call's own compact body as a byte string, so it is read by that call's
//! reader, and one that does not read is that entry's error only.
//!
//! Request: the marker, the entry count (a varint, 1 to [`MAX_BATCH_ENTRIES`], refused before any
//! entry is read or room is made for them), then per entry its `op` byte (0 claim, 1 complete,
//! 2 release, 3 lookup) and its body as a varint length and that many bytes: the single call's
//! compact body, marker byte included.
//!
//! Answer: the marker, the answer count (a varint), then per answer its `op` byte (0 to 3 as
//! above, 4 error), its status (a varint) and its body as a varint length and that many bytes:
//! the single call's compact answer, marker included, or for an error the single call's JSON
//! error body (`{"error":"…"}`), since errors are JSON in either format.

use serde::{Deserialize, Serialize};

use super::{read, write, Compact, MARKER};
use crate::batch::{check_status, count_error, error_answer, strict, ReadEntries};
use crate::batch::{BatchAnswer, BatchEntry, BatchRequest, BatchResponse};
use crate::bounded::{BoundedVec, Listed};
use crate::error::ProtocolError;
use crate::limits::MAX_BATCH_ENTRIES;
use crate::request::{ClaimRequest, CompleteRequest, LookupRequest, ReleaseRequest};
use crate::response::{ClaimAnswer, ErrorBody, FencedResponse, LookupResponse};

/// The `op` byte of each call, and of an error answer.
const CLAIM: u8 = 0;
const COMPLETE: u8 = 1;
const RELEASE: u8 = 2;
const LOOKUP: u8 = 3;
const ERROR: u8 = 4;

/// An entry or an answer: its `op` byte, (an answer's status,) and the single call's body.
#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    op: u8,
    #[serde(borrow)]
    body: &'a [u8],
}

impl Listed for Entry<'_> {
    const PLURAL: &'static str = "entries";
}

#[derive(Serialize, Deserialize)]
struct Answer<'a> {
    op: u8,
    status: u16,
    #[serde(borrow)]
    body: &'a [u8],
}

impl Listed for Answer<'_> {
    const PLURAL: &'static str = "answers";
}

/// Refuses a body whose declared count (the varint after the marker) is 0 or past the bound,
/// before anything else is read.
fn check_count(body: &[u8]) -> Result<(), ProtocolError> {
    let Some((&MARKER, rest)) = body.split_first() else {
        return Ok(());
    };
    match postcard::take_from_bytes::<u64>(rest) {
        Ok((n, _)) if n == 0 || n > MAX_BATCH_ENTRIES as u64 => Err(count_error()),
        _ => Ok(()),
    }
}

/// Reads a compact batch, keeping each entry's own result; the error is the envelope's.
pub fn read_entries(body: &[u8]) -> Result<ReadEntries, ProtocolError> {
    check_count(body)?;
    let entries: BoundedVec<Entry, MAX_BATCH_ENTRIES> = read(body, "batch")?;
    Ok(entries.0.iter().map(entry).collect())
}

fn entry(e: &Entry) -> Result<BatchEntry, ProtocolError> {
    match e.op {
        CLAIM => ClaimRequest::from_compact(e.body).map(BatchEntry::Claim),
        COMPLETE => CompleteRequest::from_compact(e.body).map(BatchEntry::Complete),
        RELEASE => ReleaseRequest::from_compact(e.body).map(BatchEntry::Release),
        LOOKUP => LookupRequest::from_compact(e.body).map(BatchEntry::Lookup),
        other => Err(ProtocolError::field(
            "op",
            format!("must be 0 (claim), 1 (complete), 2 (release) or 3 (lookup), got {other}"),
        )),
    }
}

impl Compact for BatchRequest {
    fn to_compact(&self) -> Vec<u8> {
        let bodies: Vec<(u8, Vec<u8>)> = self
            .entries
            .iter()
            .map(|e| match e {
                BatchEntry::Claim(r) => (CLAIM, r.to_compact()),
                BatchEntry::Complete(r) => (COMPLETE, r.to_compact()),
                BatchEntry::Release(r) => (RELEASE, r.to_compact()),
                BatchEntry::Lookup(r) => (LOOKUP, r.to_compact()),
            })
            .collect();
        let entries: Vec<Entry> = bodies
            .iter()
            .map(|(op, body)| Entry { op: *op, body })
            .collect();
        write(&entries)
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        strict(read_entries(body)?)
    }
}

impl Compact for BatchResponse {
    fn to_compact(&self) -> Vec<u8> {
        let bodies: Vec<(u8, u16, Vec<u8>)> = self
            .answers
            .iter()
            .map(|a| {
                let (op, body) = match a {
                    BatchAnswer::Claim(c) => (CLAIM, c.to_compact()),
                    BatchAnswer::Complete(f) => (COMPLETE, f.to_compact()),
                    BatchAnswer::Release(f) => (RELEASE, f.to_compact()),
                    BatchAnswer::Lookup(l) => (LOOKUP, l.to_compact()),
                    BatchAnswer::Error { error, .. } => (
                        ERROR,
                        crate::json::encode(&ErrorBody {
                            error: error.clone(),
                        }),
                    ),
                };
                (op, a.status(), body)
            })
            .collect();
        let answers: Vec<Answer> = bodies
            .iter()
            .map(|(op, status, body)| Answer {
                op: *op,
                status: *status,
                body,
            })
            .collect();
        write(&answers)
    }

    fn from_compact(body: &[u8]) -> Result<Self, ProtocolError> {
        let answers: BoundedVec<Answer, MAX_BATCH_ENTRIES> = read(body, "batch answer")?;
        let answers = answers
            .0
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let named = |e: ProtocolError| {
                    ProtocolError::field(format!("answers[{i}].body"), e.to_string())
                };
                let answer = match a.op {
                    CLAIM => BatchAnswer::Claim(ClaimAnswer::from_compact(a.body).map_err(named)?),
                    COMPLETE => {
                        BatchAnswer::Complete(FencedResponse::from_compact(a.body).map_err(named)?)
                    }
                    RELEASE => {
                        BatchAnswer::Release(FencedResponse::from_compact(a.body).map_err(named)?)
                    }
                    LOOKUP => {
                        BatchAnswer::Lookup(LookupResponse::from_compact(a.body).map_err(named)?)
                    }
                    ERROR => {
                        let e: ErrorBody = crate::json::decode(a.body).map_err(named)?;
                        error_answer(a.status, e.error)
                            .map_err(|p| ProtocolError::field(format!("answers[{i}].status"), p))?
                    }
                    other => {
                        return Err(ProtocolError::field(
                            format!("answers[{i}].op"),
                            format!("must be 0 to 4, got {other}"),
                        ))
                    }
                };
                check_status(&answer, a.status, i)?;
                Ok(answer)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { answers })
    }
}
