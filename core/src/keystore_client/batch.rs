//! `POST /v1/batch` from the filter's side (README, "Key-store API"): the calls of several streams
//! in one callout (`background/batch/`), and its reply read back as what each call's own endpoint
//! would have answered, so each stream reads its answer with the same parser as a single call's.

use super::{callout, ClaimError};
use crate::config::KeystoreConfig;
use crate::host::Callout;
use idempotency_protocol::{body, BatchAnswer, BatchEntry, BatchRequest, BatchResponse, ErrorBody};

/// One entry's answer as its own endpoint would have given it: the status (`None`: no reply) and
/// the body.
pub type EntryReply = (Option<u16>, Vec<u8>);

/// Whether a call may wait behind others for a batch: a claim that waits for a key in flight
/// (`wait_ms`) holds its callout for that long (and a batch's answer until it ends), so it keeps
/// a callout of its own.
pub fn batchable(call: &BatchEntry) -> bool {
    !matches!(call, BatchEntry::Claim(c) if c.wait_ms > 0)
}

/// One callout carrying `calls`, in their order.
pub fn batch(cfg: &KeystoreConfig, calls: &[&BatchEntry]) -> Callout {
    let body = BatchRequest {
        entries: calls.iter().map(|c| (*c).clone()).collect(),
    };
    callout(cfg, "batch", &body)
}

/// Reads the reply to a batch of `ops` (each entry's call, in order): each entry's status and
/// body as its own endpoint would have answered them (in the configured format). A batch that
/// failed as a whole, or whose answers do not match its entries, is an error.
pub fn parse_batch(
    cfg: &KeystoreConfig,
    status: Option<u16>,
    reply: &[u8],
    ops: &[&'static str],
) -> Result<Vec<EntryReply>, String> {
    super::expect_200("batch", status).map_err(|e| match e {
        ClaimError::Failed(e) => e,
        ClaimError::Unverified => "unverified".to_string(),
    })?;
    let answer: BatchResponse =
        body::decode(reply).map_err(|e| format!("unparsable batch reply: {e}"))?;
    if answer.answers.len() != ops.len() {
        return Err(format!(
            "batch reply has {} answers for {} entries",
            answer.answers.len(),
            ops.len()
        ));
    }
    let format = cfg.body_format;
    answer
        .answers
        .into_iter()
        .zip(ops)
        .enumerate()
        .map(|(i, (a, op))| {
            if !matches!(a, BatchAnswer::Error { .. }) && a.op() != *op {
                return Err(format!("batch answer {i} is a {} answer to a {op}", a.op()));
            }
            let status = Some(a.status());
            let body = match a {
                BatchAnswer::Claim(c) => format.encode(&c),
                BatchAnswer::Complete(f) | BatchAnswer::Release(f) => format.encode(&f),
                BatchAnswer::Lookup(l) => format.encode(&l),
                BatchAnswer::Error { error, .. } => {
                    idempotency_protocol::json::encode(&ErrorBody { error })
                }
            };
            Ok((status, body))
        })
        .collect()
}
