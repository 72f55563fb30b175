//! What the filter needs to know about gRPC to answer a gRPC caller in its own terms: whether a
//! request is gRPC (its `content-type`), the status codes it answers with, and the trailers-only
//! form of such an answer (`grpc-status`, percent-encoded `grpc-message`, server pushback).
//! Envoy sends every local reply to a gRPC request trailers-only (docs/design.md, "gRPC"), so a
//! status of 200 with these headers and no body is the whole answer. Which problem maps to which
//! code, and why, is the README's "gRPC" section; the mapping itself is `Problem::grpc`.

pub mod settling;
pub mod wire;

use crate::host::Headers;

/// The gRPC status codes the filter answers with (numbers from gRPC's status code list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// Whether a request's `content-type` makes it a gRPC request: `application/grpc`, optionally
/// followed by `+format` or parameters. gRPC-Web (`application/grpc-web...`) is not gRPC here.
pub fn is_grpc(content_type: &[u8]) -> bool {
    const BASE: &[u8] = b"application/grpc";
    match content_type.get(..BASE.len()) {
        Some(head) if head.eq_ignore_ascii_case(BASE) => {}
        _ => return false,
    }
    matches!(content_type.get(BASE.len()), None | Some(b'+') | Some(b';'))
}

/// The headers of a trailers-only gRPC answer: content type, status, message and, when the caller
/// may retry after a wait, `grpc-retry-pushback-ms`.
pub fn trailers_only(code: Code, message: &str, pushback_ms: Option<u64>) -> Headers {
    let mut headers = vec![
        ("content-type".to_string(), b"application/grpc".to_vec()),
        (
            "grpc-status".to_string(),
            (code as u8).to_string().into_bytes(),
        ),
        (
            "grpc-message".to_string(),
            percent_encode(message).into_bytes(),
        ),
    ];
    if let Some(ms) = pushback_ms {
        headers.push((
            "grpc-retry-pushback-ms".to_string(),
            ms.to_string().into_bytes(),
        ));
    }
    headers
}

/// `grpc-message` encoding: bytes from space to `~` except `%` stay as they are, every other
/// byte of the UTF-8 text becomes `%XX` (upper-case hex).
pub fn percent_encode(message: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            // Writing to a `String` cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_recognised() {
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(is_grpc(b"Application/GRPC+json"));
        assert!(is_grpc(b"application/grpc;charset=utf-8"));
        assert!(!is_grpc(b"application/grpc-web"));
        assert!(!is_grpc(b"application/grpc-web+proto"));
        assert!(!is_grpc(b"application/json"));
        assert!(!is_grpc(b"application/grp"));
        assert!(!is_grpc(b""));
    }

    #[test]
    fn messages_are_percent_encoded_as_grpc_says() {
        assert_eq!(percent_encode("plain text: ok"), "plain text: ok");
        assert_eq!(percent_encode("100% sure"), "100%25 sure");
        assert_eq!(percent_encode("line\nbreak"), "line%0Abreak");
        assert_eq!(percent_encode("caf\u{e9}"), "caf%C3%A9");
    }

    #[test]
    fn trailers_only_carries_status_message_and_pushback() {
        let headers = trailers_only(Code::Unavailable, "in flight", Some(1500));
        assert_eq!(
            headers,
            vec![
                ("content-type".to_string(), b"application/grpc".to_vec()),
                ("grpc-status".to_string(), b"14".to_vec()),
                ("grpc-message".to_string(), b"in flight".to_vec()),
                ("grpc-retry-pushback-ms".to_string(), b"1500".to_vec()),
            ]
        );
        let headers = trailers_only(Code::InvalidArgument, "no key", None);
        assert!(!headers.iter().any(|(n, _)| n == "grpc-retry-pushback-ms"));
    }
}
