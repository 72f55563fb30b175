//! The choice between the body formats: [`json`](crate::json), for people and older filters, and
//! [`compact`](crate::compact), the filter's. The key store reads a request in the format its
//! `content-type` names and answers in the one `accept` names (else the request's); errors stay
//! JSON. A reader that has no header to go by tells the two apart by the first byte.

use crate::batch::{self, BatchRequest, ReadEntries};
use crate::compact::{self, Compact};
use crate::error::ProtocolError;
use crate::json;
use crate::request::Request;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `application/json`.
    #[default]
    Json,
    /// `application/vnd.idempotency.v1+postcard`.
    Compact,
}

impl Format {
    /// The format a media type names (parameters and case ignored), if it names one.
    pub fn of_media_type(value: &[u8]) -> Option<Self> {
        let essence = value.split(|&b| b == b';').next().unwrap_or_default();
        let essence = essence.trim_ascii();
        if essence.eq_ignore_ascii_case(compact::CONTENT_TYPE.as_bytes()) {
            Some(Self::Compact)
        } else if essence.eq_ignore_ascii_case(b"application/json") {
            Some(Self::Json)
        } else {
            None
        }
    }

    /// The format of a body, by its first byte: compact bodies start with [`compact::MARKER`].
    pub fn of_body(body: &[u8]) -> Self {
        if body.first() == Some(&compact::MARKER) {
            Self::Compact
        } else {
            Self::Json
        }
    }

    /// The media type to send in `content-type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Compact => compact::CONTENT_TYPE,
        }
    }

    /// Parses and validates a request body in this format.
    pub fn decode_request<R: Request + Compact>(self, body: &[u8]) -> Result<R, ProtocolError> {
        match self {
            Self::Json => json::decode_request(body),
            Self::Compact => R::from_compact(body),
        }
    }

    /// Parses a reply body in this format.
    pub fn decode<T: DeserializeOwned + Compact>(self, body: &[u8]) -> Result<T, ProtocolError> {
        match self {
            Self::Json => json::decode(body),
            Self::Compact => T::from_compact(body),
        }
    }

    /// Reads a batch body (`/v1/batch`) in this format, keeping each entry's own validation
    /// result (the key store's reading; [`crate::batch`]).
    pub fn read_entries(self, body: &[u8]) -> Result<ReadEntries, ProtocolError> {
        match self {
            Self::Json => batch::read_json(body),
            Self::Compact => compact::batch::read_entries(body),
        }
    }

    /// Writes a message in this format.
    pub fn encode<T: Serialize + Compact>(self, value: &T) -> Vec<u8> {
        match self {
            Self::Json => json::encode(value),
            Self::Compact => value.to_compact(),
        }
    }
}

/// Parses and validates a request body in whichever format it is in.
pub fn decode_request<R: Request + Compact>(body: &[u8]) -> Result<R, ProtocolError> {
    Format::of_body(body).decode_request(body)
}

/// Parses a reply body in whichever format it is in.
pub fn decode<T: DeserializeOwned + Compact>(body: &[u8]) -> Result<T, ProtocolError> {
    Format::of_body(body).decode(body)
}

/// A request body of `endpoint` (`claim`, `lookup`, `complete`, `release`, `renew`,
/// `renew-batch`, `batch`), in whichever
/// format it is in, as JSON text: what a person reads in a test failure or a capture.
pub fn request_as_json(endpoint: &str, body: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    use crate::request::{
        ClaimRequest, CompleteRequest, LookupRequest, ReleaseRequest, RenewBatchRequest,
        RenewRequest,
    };
    Ok(match endpoint {
        "claim" => json::encode(&decode_request::<ClaimRequest>(body)?),
        "lookup" => json::encode(&decode_request::<LookupRequest>(body)?),
        "complete" => json::encode(&decode_request::<CompleteRequest>(body)?),
        "release" => json::encode(&decode_request::<ReleaseRequest>(body)?),
        "renew" => json::encode(&decode_request::<RenewRequest>(body)?),
        "renew-batch" => json::encode(&decode_request::<RenewBatchRequest>(body)?),
        "batch" => json::encode(&decode_request::<BatchRequest>(body)?),
        other => return Err(ProtocolError::body(format!("no request body on /{other}"))),
    })
}
