//! The JSON body format (`content-type: application/json`).

use crate::error::ProtocolError;
use crate::request::Request;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parses and validates a request body; the error names the field at fault (`body` when the body
/// is not a JSON object at all).
pub fn decode_request<R: Request>(body: &[u8]) -> Result<R, ProtocolError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ProtocolError::body("must be a JSON object"));
    }
    R::from_wire(decode(body)?)
}

/// Parses a body into any protocol type, naming the field at fault. Replies are taken as they
/// come: a reply's consumer decides what else it requires of it.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    de.end()
        .map_err(|e| ProtocolError::body(format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// Writes a protocol value as JSON.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // The protocol's types have string keys and no floats, the only things serde_json refuses.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ProtocolError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if !inner.is_data() {
        return ProtocolError::body(format!("invalid JSON: {inner}"));
    }
    // The position only repeats what the field name says better.
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    let text = inner.to_string();
    let problem = text.strip_suffix(&position).unwrap_or(&text).to_owned();
    match path.as_str() {
        "." | "" => ProtocolError::body(problem),
        field => ProtocolError::field(field, problem),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
