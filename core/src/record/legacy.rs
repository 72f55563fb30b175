//! Record layouts of earlier filter versions, read so that records stored before an upgrade (in
//! L1, which outlives a VM reload, and in the key store) keep answering. Nothing writes them.

use super::{decode_exact, DecodeError, Outcome, Record, StoredResponse};
use crate::fingerprint::Fingerprint;
use serde::Deserialize;

/// A response before trailers were kept: versions 1 and 2.
#[derive(Deserialize)]
struct ResponseV2 {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

impl From<ResponseV2> for StoredResponse {
    fn from(v2: ResponseV2) -> StoredResponse {
        StoredResponse {
            status: v2.status,
            headers: v2.headers,
            body: v2.body,
            trailers: Vec::new(),
            trailers_only: false,
        }
    }
}

/// Version 1 kept only the response, if any.
#[derive(Deserialize)]
struct RecordV1 {
    fingerprint: Fingerprint,
    created_ms: u64,
    expires_ms: u64,
    response: Option<ResponseV2>,
}

/// Version 2: how the attempt ended, responses without trailers. The variants keep the order of
/// [`Outcome`]'s (postcard encodes a variant by its index).
#[derive(Deserialize)]
enum OutcomeV2 {
    Replayable(ResponseV2),
    NotReplayable,
    Unknown { hold_until_ms: u64 },
}

#[derive(Deserialize)]
struct RecordV2 {
    fingerprint: Fingerprint,
    created_ms: u64,
    expires_ms: u64,
    outcome: OutcomeV2,
}

/// A version-1 record without its version byte.
pub(super) fn decode_v1(rest: &[u8]) -> Result<Record, DecodeError> {
    let v1 = decode_exact::<RecordV1>(rest)?;
    Ok(Record {
        fingerprint: v1.fingerprint,
        created_ms: v1.created_ms,
        expires_ms: v1.expires_ms,
        outcome: v1.response.map_or(Outcome::NotReplayable, |response| {
            Outcome::Replayable(response.into())
        }),
    })
}

/// A version-2 record without its version byte (also what a version-2 seal covers).
pub(super) fn decode_v2(rest: &[u8]) -> Result<Record, DecodeError> {
    let v2 = decode_exact::<RecordV2>(rest)?;
    Ok(Record {
        fingerprint: v2.fingerprint,
        created_ms: v2.created_ms,
        expires_ms: v2.expires_ms,
        outcome: match v2.outcome {
            OutcomeV2::Replayable(response) => Outcome::Replayable(response.into()),
            OutcomeV2::NotReplayable => Outcome::NotReplayable,
            OutcomeV2::Unknown { hold_until_ms } => Outcome::Unknown { hold_until_ms },
        },
    })
}
