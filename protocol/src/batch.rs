//! `POST /v1/batch`: several key-store calls of any kind (claim, complete, release, lookup) in
//! one request, answered in one reply, so a filter sends the calls of all its streams together
//! (group commit).
//!
//! The contract:
//! - A batch holds 1 to [`MAX_BATCH_ENTRIES`] entries. Each entry is exactly the body of the
//!   single call it names (README, "Key-store API"), validated as that call validates it.
//! - The answer holds one [`BatchAnswer`] per entry, in the request's order: exactly what the
//!   single call would have answered, its HTTP status included (a claim or lookup 200, a complete
//!   or release 200 or 409 `stale`, a 400 naming the entry's field at fault, a 413 record over
//!   `--max-record-bytes`, a 503 backend failure, each with its problem text).
//! - One entry's failure never fails the others: a malformed entry among good ones is that
//!   entry's 400. Only the envelope fails the whole batch (a 400 for a body that is not a batch,
//!   or with 0 or more than [`MAX_BATCH_ENTRIES`] entries; 401; 413 for a body over
//!   `--max-body-bytes`), and then no entry ran.
//! - The entries run concurrently, with no order among them: two entries on one key race as two
//!   single calls would. The answer comes when the last entry is answered (a claim with
//!   `wait_ms` holds the whole answer, so a caller sends waiting claims on their own).
//!
//! JSON (`application/json`): `{"entries":[{"op":"claim", …the claim's fields}, {"op":"complete",
//! …}, …]}` answered by `{"answers":[{"op":"claim","status":200,"body":{"outcome":"claimed",
//! "token":"…"}}, {"op":"error","status":400,"body":{"error":"key: must be …"}}, …]}`: `op` is
//! the entry's call (`error` for an answer that is an error), `body` the single call's JSON body.
//! The compact layout is in [`crate::compact`]'s `batch` module.

use serde::{Deserialize, Serialize};

use crate::bounded::{too_many, BoundedVec, Listed};
use crate::error::ProtocolError;
use crate::limits::MAX_BATCH_ENTRIES;
use crate::request::{ClaimRequest, CompleteRequest, LookupRequest, ReleaseRequest, Request};
use crate::response::{ClaimAnswer, ErrorBody, FencedResponse, LookupResponse};
use crate::wire;

/// One call of a batch: the single call's request, as it would be sent on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum BatchEntry {
    Claim(ClaimRequest),
    Complete(CompleteRequest),
    Release(ReleaseRequest),
    Lookup(LookupRequest),
}

impl BatchEntry {
    /// The call's name, as in its path and in `op`.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Claim(_) => "claim",
            Self::Complete(_) => "complete",
            Self::Release(_) => "release",
            Self::Lookup(_) => "lookup",
        }
    }
}

/// `POST /v1/batch` as a caller writes it: 1 to [`MAX_BATCH_ENTRIES`] valid entries. Read
/// strictly (the first bad entry fails the read, named `entries[i].field`) by
/// [`Request::from_wire`] and [`Compact::from_compact`]; the key store reads with
/// `Format::read_entries` (the `body` module), which keeps every entry's own result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchRequest {
    pub entries: Vec<BatchEntry>,
}

/// A batch as the key store reads it: the envelope is valid (else the error), each entry is its
/// request or the 400 the single call would answer.
pub type ReadEntries = Vec<Result<BatchEntry, ProtocolError>>;

/// The refusal of a batch with no entries or too many, in either format.
pub(crate) fn count_error() -> ProtocolError {
    ProtocolError::field("entries", too_many(MAX_BATCH_ENTRIES, "entries"))
}

/// Reads a JSON batch, keeping each entry's own result; the error is the envelope's.
pub(crate) fn read_json(body: &[u8]) -> Result<ReadEntries, ProtocolError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ProtocolError::body("must be a JSON object"));
    }
    let w: wire::Batch = crate::json::decode(body)?;
    Ok(json_entries(w)?.collect())
}

/// The entries of a JSON batch, each read as its call; the error is the envelope's (no `entries`,
/// or none in it).
fn json_entries(
    w: wire::Batch,
) -> Result<impl Iterator<Item = Result<BatchEntry, ProtocolError>>, ProtocolError> {
    let entries = w
        .entries
        .ok_or_else(|| ProtocolError::field("entries", "missing"))?
        .into_inner();
    if entries.is_empty() {
        return Err(count_error());
    }
    Ok(entries.into_iter().map(|e| json_entry(e.0)))
}

/// Reads one JSON entry as the call its `op` names; the error is the single call's.
fn json_entry(value: serde_json::Value) -> Result<BatchEntry, ProtocolError> {
    fn call<R: Request>(value: serde_json::Value) -> Result<R, ProtocolError> {
        let w = serde_path_to_error::deserialize(value).map_err(crate::json::path_error)?;
        R::from_wire(w)
    }
    if !value.is_object() {
        return Err(ProtocolError::body("must be a JSON object"));
    }
    let op = value.get("op").and_then(serde_json::Value::as_str);
    match op {
        Some("claim") => call(value).map(BatchEntry::Claim),
        Some("complete") => call(value).map(BatchEntry::Complete),
        Some("release") => call(value).map(BatchEntry::Release),
        Some("lookup") => call(value).map(BatchEntry::Lookup),
        _ => Err(ProtocolError::field(
            "op",
            "must be \"claim\", \"complete\", \"release\" or \"lookup\"",
        )),
    }
}

/// The strict form: every entry valid, else the first bad one named `entries[i].field`.
pub(crate) fn strict(entries: ReadEntries) -> Result<BatchRequest, ProtocolError> {
    let entries = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            e.map_err(|e| ProtocolError::field(format!("entries[{i}].{}", e.field), e.problem))
        })
        .collect::<Result<_, _>>()?;
    Ok(BatchRequest { entries })
}

impl Request for BatchRequest {
    type Wire = wire::Batch;

    fn from_wire(w: wire::Batch) -> Result<Self, ProtocolError> {
        strict(json_entries(w)?.collect())
    }
}

/// One entry's answer: what the single call would have answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchAnswer {
    /// A claim's 200.
    Claim(ClaimAnswer),
    /// A complete's 200 `stored`, or 409 `stale`.
    Complete(FencedResponse),
    /// A release's 200 `released`, or 409 `stale`.
    Release(FencedResponse),
    /// A lookup's 200.
    Lookup(LookupResponse),
    /// An error the single call would have answered (400, 413, 503), with its problem text.
    Error { status: u16, error: String },
}

impl BatchAnswer {
    /// The HTTP status the single call would have answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Complete(FencedResponse::Stale) | Self::Release(FencedResponse::Stale) => 409,
            Self::Claim(_) | Self::Complete(_) | Self::Release(_) | Self::Lookup(_) => 200,
            Self::Error { status, .. } => *status,
        }
    }

    /// The name written in `op`: the entry's call, or `error`.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Claim(_) => "claim",
            Self::Complete(_) => "complete",
            Self::Release(_) => "release",
            Self::Lookup(_) => "lookup",
            Self::Error { .. } => "error",
        }
    }
}

/// The answer to a batch (200): one answer per entry, in the request's order. A reader takes at
/// most [`MAX_BATCH_ENTRIES`] of them, as the key store does entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "AnswersOut", try_from = "AnswersIn")]
pub struct BatchResponse {
    pub answers: Vec<BatchAnswer>,
}

/// An answer in JSON: the call, the status, the single call's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AnswerJson {
    op: String,
    status: u16,
    body: serde_json::Value,
}

impl Listed for AnswerJson {
    const PLURAL: &'static str = "answers";
}

/// The answers as written.
#[derive(Serialize)]
struct AnswersOut {
    answers: Vec<AnswerJson>,
}

/// The answers as read, their bound checked while reading.
#[derive(Deserialize)]
struct AnswersIn {
    answers: BoundedVec<AnswerJson, MAX_BATCH_ENTRIES>,
}

impl From<BatchResponse> for AnswersOut {
    fn from(r: BatchResponse) -> Self {
        let answers = r.answers.into_iter().map(|a| {
            let body = match &a {
                BatchAnswer::Claim(c) => serde_json::to_value(c),
                BatchAnswer::Complete(f) | BatchAnswer::Release(f) => serde_json::to_value(f),
                BatchAnswer::Lookup(l) => serde_json::to_value(l),
                BatchAnswer::Error { error, .. } => serde_json::to_value(ErrorBody {
                    error: error.clone(),
                }),
            };
            AnswerJson {
                op: a.op().to_owned(),
                status: a.status(),
                // The protocol's types always have a JSON form.
                body: body.unwrap_or_default(),
            }
        });
        Self {
            answers: answers.collect(),
        }
    }
}

impl TryFrom<AnswersIn> for BatchResponse {
    type Error = ProtocolError;

    fn try_from(w: AnswersIn) -> Result<Self, ProtocolError> {
        let answers = w
            .answers
            .into_inner()
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let named = |e: serde_json::Error| {
                    ProtocolError::field(format!("answers[{i}].body"), e.to_string())
                };
                let answer = match a.op.as_str() {
                    "claim" => BatchAnswer::Claim(serde_json::from_value(a.body).map_err(named)?),
                    "complete" => {
                        BatchAnswer::Complete(serde_json::from_value(a.body).map_err(named)?)
                    }
                    "release" => {
                        BatchAnswer::Release(serde_json::from_value(a.body).map_err(named)?)
                    }
                    "lookup" => BatchAnswer::Lookup(serde_json::from_value(a.body).map_err(named)?),
                    "error" => {
                        let e: ErrorBody = serde_json::from_value(a.body).map_err(named)?;
                        error_answer(a.status, e.error)
                            .map_err(|p| ProtocolError::field(format!("answers[{i}].status"), p))?
                    }
                    _ => {
                        return Err(ProtocolError::field(
                            format!("answers[{i}].op"),
                            "must be \"claim\", \"complete\", \"release\", \"lookup\" or \"error\"",
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

/// An error answer, whose status must be an error's (not 2xx, not 409, a valid HTTP status).
pub(crate) fn error_answer(status: u16, error: String) -> Result<BatchAnswer, String> {
    if (400..=599).contains(&status) && status != 409 {
        Ok(BatchAnswer::Error { status, error })
    } else {
        Err(format!(
            "an error's status must be 400 to 599 and not 409, got {status}"
        ))
    }
}

/// Refuses an answer whose status is not the one its body goes with.
pub(crate) fn check_status(
    answer: &BatchAnswer,
    status: u16,
    i: usize,
) -> Result<(), ProtocolError> {
    if answer.status() == status {
        Ok(())
    } else {
        Err(ProtocolError::field(
            format!("answers[{i}].status"),
            format!(
                "{status} does not go with that body (expected {})",
                answer.status()
            ),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
