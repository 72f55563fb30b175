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

/// Version 1 kept only `Option<StoredResponse>`; version 2 says how the attempt ended.
const VERSION_1: u8 = 1;
const VERSION: u8 = 2;
/// A sealed version-2 record: `[3] ++ encoded record without its version byte ++ MAC (32 bytes)`.
const SEALED: u8 = 3;
const MAC_LEN: usize = 32;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus the
/// length, which Envoy recomputes.
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
const RECOMPUTED: [&str; 3] = ["date", "server", "x-envoy-upstream-service-time"];

/// A response as the client first received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    /// Every field, in order, repeated names kept; values are bytes (they need not be UTF-8).
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
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

/// The version 1 layout, read so that records stored before an upgrade keep answering.
#[derive(Deserialize)]
struct RecordV1 {
    fingerprint: Fingerprint,
    created_ms: u64,
    expires_ms: u64,
    response: Option<StoredResponse>,
}

impl From<RecordV1> for Record {
    fn from(v1: RecordV1) -> Record {
        Record {
            fingerprint: v1.fingerprint,
            created_ms: v1.created_ms,
            expires_ms: v1.expires_ms,
            outcome: v1
                .response
                .map_or(Outcome::NotReplayable, Outcome::Replayable),
        }
    }
}

/// The whole blob must be one value: trailing bytes mean a torn or spliced value.
fn decode_exact<'a, T: Deserialize<'a>>(rest: &'a [u8]) -> Result<T, DecodeError> {
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

fn mac_of(secret: &[u8], key: &RecordKey, payload: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(b"idempotency-record-seal-v1");
    mac.update(&key.0);
    mac.update(&[SEALED]);
    mac.update(payload);
    Some(mac)
}

impl Record {
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
            Some((&VERSION_1, rest)) => decode_exact::<RecordV1>(rest).map(Record::from),
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
        if let Some(mac) = mac_of(secret, key, &payload) {
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
        let Some((&SEALED, rest)) = bytes.split_first() else {
            return Err(OpenError::Unverified);
        };
        let Some(split) = rest.len().checked_sub(MAC_LEN) else {
            return Err(OpenError::Unverified);
        };
        let (payload, tag) = rest.split_at(split);
        let Some(index) = secrets.all().position(|secret| {
            mac_of(secret, key, payload).is_some_and(|mac| mac.verify_slice(tag).is_ok())
        }) else {
            return Err(OpenError::Unverified);
        };
        decode_exact::<Record>(payload)
            .map(|record| (record, index))
            .map_err(|e| OpenError::Malformed(e.0))
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }
}

/// Keeps the headers a replay may carry: no pseudo-headers, nothing hop-by-hop or recomputed,
/// and only what `policy` lets through (by default, no `set-cookie` and no credentials).
pub fn storable_headers(
    headers: Vec<(String, Vec<u8>)>,
    policy: &ReplayHeaders,
) -> Vec<(String, Vec<u8>)> {
    message_headers(headers)
        .into_iter()
        .filter(|(name, _)| policy.keeps(&name.to_ascii_lowercase()))
        .collect()
}

/// The headers of a response as its own client gets it (the first answer, not a replay): all of
/// them but pseudo-headers and those Envoy sets itself for the connection.
pub fn message_headers(headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers
        .into_iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !lower.starts_with(':')
                && !HOP_BY_HOP.contains(&lower.as_str())
                && !RECOMPUTED.contains(&lower.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            fingerprint: [7; 32],
            created_ms: 1,
            expires_ms: 2,
            outcome: Outcome::Replayable(StoredResponse {
                status: 201,
                headers: vec![
                    ("content-type".into(), b"application/json".to_vec()),
                    ("x-bin".into(), vec![0xff, 0x00, 0x80]),
                    ("set-cookie".into(), b"a=1".to_vec()),
                    ("set-cookie".into(), b"b=2".to_vec()),
                ],
                body: vec![0, 159, 146, 150, b'{', b'}'],
            }),
        }
    }

    #[test]
    fn round_trip_is_byte_exact() {
        let r = sample();
        assert_eq!(Record::decode(&r.encode()), Ok(r));
        for outcome in [
            Outcome::NotReplayable,
            Outcome::Unknown { hold_until_ms: 9 },
        ] {
            let r = Record {
                outcome,
                ..sample()
            };
            assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn version_1_records_still_decode() {
        #[derive(Serialize)]
        struct V1<'a> {
            fingerprint: Fingerprint,
            created_ms: u64,
            expires_ms: u64,
            response: Option<&'a StoredResponse>,
        }
        let r = sample();
        let Outcome::Replayable(response) = &r.outcome else {
            unreachable!()
        };
        for (kept, expected) in [
            (Some(response), r.outcome.clone()),
            (None, Outcome::NotReplayable),
        ] {
            let mut v1 = vec![VERSION_1];
            v1.extend(
                postcard::to_allocvec(&V1 {
                    fingerprint: r.fingerprint,
                    created_ms: 1,
                    expires_ms: 2,
                    response: kept,
                })
                .unwrap(),
            );
            assert_eq!(Record::decode(&v1).unwrap().outcome, expected);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Record::decode(b"").is_err());
        assert!(Record::decode(b"\x09abc").is_err());
        // Seen while writing the codec fuzz target: a valid record followed by anything decoded.
        let mut spliced = sample().encode();
        spliced.extend_from_slice(b"junk");
        assert!(Record::decode(&spliced).is_err());
        let enc = sample().encode();
        for cut in 0..enc.len() {
            assert!(
                Record::decode(&enc[..cut]).is_err(),
                "truncated at {cut} decoded"
            );
        }
    }

    fn default_policy() -> ReplayHeaders {
        ReplayHeaders::Deny(
            crate::config::DEFAULT_REPLAY_DENY
                .iter()
                .map(|h| (*h).to_string())
                .collect(),
        )
    }

    #[test]
    fn drops_hop_by_hop_pseudo_and_credential_headers() {
        let response = vec![
            (":status".into(), b"200".to_vec()),
            ("Connection".into(), b"close".to_vec()),
            ("content-length".into(), b"2".to_vec()),
            ("content-type".into(), b"text/plain".to_vec()),
            ("Set-Cookie".into(), b"session=abc".to_vec()),
            ("www-authenticate".into(), b"Bearer".to_vec()),
        ];
        assert_eq!(
            storable_headers(response.clone(), &default_policy()),
            vec![("content-type".to_string(), b"text/plain".to_vec())]
        );
        // An allowlist cannot bring back what is hop-by-hop.
        let allow = ReplayHeaders::Allow(vec!["set-cookie".into(), "connection".into()]);
        assert_eq!(
            storable_headers(response, &allow),
            vec![("Set-Cookie".to_string(), b"session=abc".to_vec())]
        );
    }

    fn secrets(list: &[&[u8]]) -> Secrets {
        Secrets::from_bytes(list.iter().map(|s| s.to_vec()).collect())
    }

    #[test]
    fn a_sealed_record_opens_only_under_its_key_and_a_known_secret() {
        let key = RecordKey([1; 32]);
        let r = sample();
        let sealed = r.seal(&key, b"current");
        assert_eq!(
            Record::open(&sealed, &key, &secrets(&[b"current"])),
            Ok(r.clone())
        );
        // Rotation: sealed under a secret that is now second in the list.
        assert_eq!(
            Record::open(&sealed, &key, &secrets(&[b"newer", b"current"])),
            Ok(r.clone())
        );
        assert_eq!(
            Record::open_with_secret(&sealed, &key, &secrets(&[b"newer", b"current"])),
            Ok((r.clone(), 1))
        );
        for (what, bytes, k, s) in [
            ("unknown secret", sealed.clone(), key, secrets(&[b"other"])),
            (
                "other key",
                sealed.clone(),
                RecordKey([2; 32]),
                secrets(&[b"current"]),
            ),
            ("unsealed", r.encode(), key, secrets(&[b"current"])),
            ("empty", Vec::new(), key, secrets(&[b"current"])),
            ("short", vec![SEALED, 1, 2], key, secrets(&[b"current"])),
        ] {
            assert_eq!(
                Record::open(&bytes, &k, &s),
                Err(OpenError::Unverified),
                "{what}"
            );
        }
        // Every single changed byte (status, header, body, fingerprint, seal) is refused.
        for i in 0..sealed.len() {
            let mut forged = sealed.clone();
            forged[i] ^= 0x01;
            assert_eq!(
                Record::open(&forged, &key, &secrets(&[b"current"])),
                Err(OpenError::Unverified),
                "byte {i} changed"
            );
        }
        // A record re-sealed under the right key but a guessed secret is refused too.
        let mut altered = r;
        altered.fingerprint = [9; 32];
        assert_eq!(
            Record::open(&altered.seal(&key, b"guess"), &key, &secrets(&[b"current"])),
            Err(OpenError::Unverified)
        );
    }
}
