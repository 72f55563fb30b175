//! How a record's bytes are written: standard padded base64 in text formats such as JSON, plain
//! bytes in binary ones. Records are opaque to the key store (the filter seals them).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::Visitor;
use serde::{Deserializer, Serializer};
use std::fmt;

/// What a record field that does not decode is told.
pub const NOT_BASE64: &str = "must be standard padded base64";

/// Serializes record bytes (`#[serde(with = "record_bytes")]`).
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&BASE64.encode(bytes))
    } else {
        s.serialize_bytes(bytes)
    }
}

/// Deserializes record bytes (`#[serde(with = "record_bytes")]`).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    if d.is_human_readable() {
        d.deserialize_str(Base64Visitor)
    } else {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

struct Base64Visitor;

impl Visitor<'_> for Base64Visitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a standard padded base64 string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vec<u8>, E> {
        BASE64.decode(s).map_err(|_| E::custom(NOT_BASE64))
    }
}

struct BytesVisitor;

impl Visitor<'_> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("record bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Vec<u8>, E> {
        Ok(b.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, b: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(b)
    }
}

/// The same, for an optional field (`#[serde(default, with = "record_bytes::option")]`).
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes optional record bytes; `None` is skipped by the caller's attributes.
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    /// Deserializes optional record bytes: absent or null is `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super")] Vec<u8>);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(b)| b))
    }
}
