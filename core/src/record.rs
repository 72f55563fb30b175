//! The record codec: what is stored for a key, in L1 shared data and (as an opaque blob) in the
//! key store. A version byte leads, so a future layout can be told apart from garbage, and a
//! gateway that runs a newer filter still reads what an older one stored.
//!
//! What goes to the key store is sealed ([`Record::seal`]): the encoded record followed by an
//! HMAC-SHA-256 under the plugin's secret over the record key and the encoded record, so a record
//! written into the store by anyone else, or moved to another key, fails [`Record::open`] and is
//! never replayed. L1 lives inside the Envoy process and keeps records unsealed.

use crate::config::{ReplayHeaders, Secrets};
use crate::fingerprint::Fingerprint;
use crate::scope::RecordKey;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

mod legacy;

/// Version 1 kept only `Option<StoredResponse>`; version 2 says how the attempt ended; version 4
/// adds the response's trailers and whether it was trailers-only (a gRPC error answer).
const VERSION_1: u8 = 1;
const VERSION_2: u8 = 2;
const VERSION: u8 = 4;
/// A sealed version-2 record: `[3] ++ encoded record without its version byte ++ MAC (32 bytes)`.
const SEALED_2: u8 = 3;
/// A sealed version-4 record, laid out as [`SEALED_2`].
const SEALED: u8 = 5;
const MAC_LEN: usize = 32;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus the
/// length, which Envoy recomputes (a record keeps it only to mark its place: `message_headers`).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
];

/// Response headers Envoy sets anew on every answer, so a replay carries its own.
/// `x-envoy-upstream-service-time` is not one of them: the router adds it only to answers from an
/// upstream, never to a local reply, so a replay carries the stored one and reads as its first
/// answer did (docs/fidelity.md).
const RECOMPUTED: [&str; 2] = ["date", "server"];

/// A response as the client first received it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    /// Every field, in order, repeated names kept; values are bytes (they need not be UTF-8).
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The response's trailers in order (HTTP/2 trailers, gRPC's `grpc-status` and trailing
    /// metadata); empty when it had none.
    pub trailers: Vec<(String, Vec<u8>)>,
    /// The answer was one header block ending the stream with a `grpc-status` in it (a gRPC
    /// "trailers-only" answer, how gRPC servers send errors): a replay must be the same.
    pub trailers_only: bool,
}

/// How the one attempt of a key ended. None of them lets the key execute again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The upstream answered and the answer was kept: retries replay it.
    Replayable(StoredResponse),
    /// The upstream answered, but the answer was too large to keep.
    NotReplayable,
    /// The request reached, or may have reached, the upstream and no complete answer came back
    /// (client gone, route timeout, reset, body cut). Until `hold_until_ms` the upstream may still
    /// be working, so retries are told to come back; after it, they get the terminal answer.
    Unknown { hold_until_ms: u64 },
}

/// A completed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: Fingerprint,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub outcome: Outcome,
}

/// The whole blob must be one value: trailing bytes mean a torn or spliced value.
pub(crate) fn decode_exact<'a, T: Deserialize<'a>>(rest: &'a [u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(rest) {
        Ok((value, [])) => Ok(value),
        Ok((_, extra)) => Err(DecodeError(format!(
            "record has {} trailing bytes",
            extra.len()
        ))),
        Err(e) => Err(DecodeError(format!("record does not decode: {e}"))),
    }
}

/// A blob that does not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Why a blob from the key store is not replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Not sealed, or sealed under no configured secret or for another record key: written or
    /// changed by someone who does not hold the secret. Never replayed.
    Unverified,
    /// The seal holds, but what it covers does not decode (a filter bug, not an attack).
    Malformed(String),
}

/// The seal of `payload` under `secret` for `key`; `tag` is the sealed layout's leading byte, so a
/// payload cannot be passed off as another version's.
fn mac_of(secret: &[u8], key: &RecordKey, tag: u8, payload: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = crate::mac::keyed(secret)?;
    mac.update(b"idempotency-record-seal-v1");
    mac.update(&key.0);
    mac.update(&[tag]);
    mac.update(payload);
    Some(mac)
}

impl Record {
    /// Whether a retry gets this record's response (not a problem).
    pub fn is_replayable(&self) -> bool {
        matches!(self.outcome, Outcome::Replayable(_))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Serializing plain owned data into a Vec cannot fail; an empty body would only decode as an error.
        if let Ok(bytes) = postcard::to_allocvec(self) {
            out.extend_from_slice(&bytes);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => decode_exact::<Record>(rest),
            Some((&VERSION_2, rest)) => legacy::decode_v2(rest),
            Some((&VERSION_1, rest)) => legacy::decode_v1(rest),
            Some((v, _)) => Err(DecodeError(format!("unknown record version {v}"))),
            None => Err(DecodeError("empty record".to_string())),
        }
    }

    /// The record as it goes to the key store, sealed for `key` under `secret` (the current one).
    pub fn seal(&self, key: &RecordKey, secret: &[u8]) -> Vec<u8> {
        let payload = postcard::to_allocvec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + payload.len() + MAC_LEN);
        out.push(SEALED);
        out.extend_from_slice(&payload);
        if let Some(mac) = mac_of(secret, key, SEALED, &payload) {
            out.extend_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    /// Opens a sealed record stored under `key`: the seal must hold under one of `secrets`, and
    /// is checked (in constant time) before anything of the record is decoded.
    pub fn open(bytes: &[u8], key: &RecordKey, secrets: &Secrets) -> Result<Record, OpenError> {
        Record::open_with_secret(bytes, key, secrets).map(|(record, _)| record)
    }

    /// [`Record::open`], also saying under which of `secrets` the seal holds (its position in the
    /// list, 0 for the current one): what an operator's tool reports.
    pub fn open_with_secret(
        bytes: &[u8],
        key: &RecordKey,
        secrets: &Secrets,
    ) -> Result<(Record, usize), OpenError> {
        let (tag, rest) = match bytes.split_first() {
            Some((&tag, rest)) if tag == SEALED || tag == SEALED_2 => (tag, rest),
            _ => return Err(OpenError::Unverified),
        };
        let Some(split) = rest.len().checked_sub(MAC_LEN) else {
            return Err(OpenError::Unverified);
        };
        let (payload, seal) = rest.split_at(split);
        let Some(index) = secrets.all().position(|secret| {
            mac_of(secret, key, tag, payload).is_some_and(|mac| mac.verify_slice(seal).is_ok())
        }) else {
            return Err(OpenError::Unverified);
        };
        let record = if tag == SEALED {
            decode_exact::<Record>(payload)
        } else {
            legacy::decode_v2(payload)
        };
        record
            .map(|record| (record, index))
            .map_err(|e| OpenError::Malformed(e.0))
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }
}

/// Keeps the headers a replay may carry: no pseudo-headers, nothing hop-by-hop or recomputed,
/// and only what `policy` lets through (by default, no `set-cookie` and no credentials), plus
/// `content-length` where the answer had it.
pub fn storable_headers(
    headers: Vec<(String, Vec<u8>)>,
    policy: &ReplayHeaders,
) -> Vec<(String, Vec<u8>)> {
    message_headers(headers)
        .into_iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            lower == "content-length" || policy.keeps(&lower)
        })
        .collect()
}

/// The headers of a response as its own client gets it (the first answer, not a replay): all of
/// them but pseudo-headers and those Envoy sets itself for the connection. `content-length`
/// stays in its place: a local reply (a replay, a detached answer) that carries it gets its
/// length set there, where one without it gets it appended after every other field (and so
/// after `x-envoy-upstream-service-time`, which the router puts after the upstream's fields).
pub fn message_headers(headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers
        .into_iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !lower.starts_with(':')
                && (lower == "content-length" || !HOP_BY_HOP.contains(&lower.as_str()))
                && !RECOMPUTED.contains(&lower.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests;
