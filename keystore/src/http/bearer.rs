//! Bearer-token checks shared by the v1 API and the admin API, each with its own token.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;

use super::error;

/// Compares without an early exit, so response time does not leak how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `req` carries `Authorization: Bearer <expected>`. The scheme is case-insensitive
/// (RFC 9110 §11.1); the token is compared exactly, in constant time.
pub(super) fn bearer_matches(req: &Request, expected: &[u8]) -> bool {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.as_bytes())
        .unwrap_or_default();
    constant_time_eq(given, expected)
}

/// The 401 of a missing or wrong bearer token.
pub(super) fn unauthorized() -> Response {
    let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}
