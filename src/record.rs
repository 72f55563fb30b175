//! The record codec: what is stored for a key, in L1 shared data and (as an opaque blob) in the
//! key store. A version byte leads, so a future layout can be told apart from garbage.

use crate::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;

/// Response headers that describe the connection or are recomputed by Envoy on replay.
const NOT_STORED_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "date",
    "server",
    "x-envoy-upstream-service-time",
];

/// A response as the client first received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    /// Every field, in order, repeated names kept; values are bytes (they need not be UTF-8).
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A completed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: Fingerprint,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// `None`: the request ran but its response was too large to keep; a retry must not run it again.
    pub response: Option<StoredResponse>,
}

/// A blob that does not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

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
            // The whole blob is the record: trailing bytes mean a torn or spliced value.
            Some((&VERSION, rest)) => match postcard::take_from_bytes::<Record>(rest) {
                Ok((record, [])) => Ok(record),
                Ok((_, extra)) => Err(DecodeError(format!(
                    "record has {} trailing bytes",
                    extra.len()
                ))),
                Err(e) => Err(DecodeError(format!("record does not decode: {e}"))),
            },
            Some((v, _)) => Err(DecodeError(format!("unknown record version {v}"))),
            None => Err(DecodeError("empty record".to_string())),
        }
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }
}

/// Keeps the headers a replay should carry: no pseudo-headers, nothing hop-by-hop or recomputed.
pub fn storable_headers(headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers
        .into_iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !lower.starts_with(':') && !NOT_STORED_HEADERS.contains(&lower.as_str())
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
            response: Some(StoredResponse {
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
        let gone = Record {
            response: None,
            ..sample()
        };
        assert_eq!(Record::decode(&gone.encode()), Ok(gone));
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

    #[test]
    fn drops_hop_by_hop_and_pseudo_headers() {
        let kept = storable_headers(vec![
            (":status".into(), b"200".to_vec()),
            ("Connection".into(), b"close".to_vec()),
            ("content-length".into(), b"2".to_vec()),
            ("content-type".into(), b"text/plain".to_vec()),
        ]);
        assert_eq!(
            kept,
            vec![("content-type".to_string(), b"text/plain".to_vec())]
        );
    }
}
