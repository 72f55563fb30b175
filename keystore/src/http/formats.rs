//! The formats of a `/v1` call (README, "Key-store API"): which one its body is written in, which
//! one its caller reads, and an answer written in the latter. Shared by the single calls
//! (`super::v1`) and the batch (`super::batch`).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::protocol::{Compact, Format};

/// The formats of a request body (its `content-type`; JSON when it names neither) and of the
/// answer (`accept`, when it names one, else the request's).
pub(super) fn formats(headers: &HeaderMap) -> (Format, Format) {
    let named = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| Format::of_media_type(v.as_bytes()))
    };
    let request = named(header::CONTENT_TYPE).unwrap_or_default();
    (request, named(header::ACCEPT).unwrap_or(request))
}

/// A 2xx or 409 answer in the format the caller reads.
pub(super) fn answer<T: Serialize + Compact>(
    format: Format,
    status: StatusCode,
    body: &T,
) -> Response {
    let content_type = HeaderValue::from_static(format.content_type());
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        format.encode(body),
    )
        .into_response()
}
