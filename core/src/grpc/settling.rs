//! How the settlement rule reads a gRPC answer. A gRPC service answers HTTP `200` whatever
//! happened and says the outcome in `grpc-status` (in the trailers, or in the one header block of
//! a trailers-only answer). The rule decides on HTTP statuses (a `5xx` frees the key unless
//! `store_5xx`), so a gRPC answer is settled as the HTTP status gRPC's own HTTP mapping gives its
//! code: `UNAVAILABLE` is a `503` and frees the key as a service's `503` does, `INVALID_ARGUMENT`
//! a `400` and is kept. Two codes are kept whatever their mapping says: `DEADLINE_EXCEEDED` and
//! `CANCELLED` from a service mean it stopped at a deadline or a cancel it was handed, possibly
//! after the work was done, so freeing the key could run it twice; their answer is replayed. The
//! stored and replayed answer is unchanged (HTTP `200`, the trailers).

use crate::host::Headers;

/// The status the settlement rule sees for an answer of `status`, `headers` and `trailers`: the
/// HTTP equivalent of its `grpc-status` when it is a gRPC answer (`200`, gRPC `content-type`),
/// else `status` itself.
pub fn settling_status(status: u16, headers: &Headers, trailers: &Headers) -> u16 {
    if status != 200 {
        return status;
    }
    let grpc = headers
        .iter()
        .any(|(name, value)| name.eq_ignore_ascii_case("content-type") && super::is_grpc(value));
    if !grpc {
        return status;
    }
    let code = trailers
        .iter()
        .chain(headers.iter())
        .find(|(name, _)| name.eq_ignore_ascii_case("grpc-status"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .and_then(|text| text.trim().parse::<u32>().ok());
    match code {
        // Stopped at a deadline or cancel, maybe after the work: kept, as answered.
        Some(1 | 4) => status,
        Some(code) => http_equivalent(code),
        // No status at all: a broken answer, as gRPC clients read it (`UNKNOWN`).
        None => 500,
    }
}

/// Makes a gRPC answer that ended in `trailers` a trailers-only one: the trailers (its
/// `grpc-status`, `grpc-message`, trailing metadata) join `headers` and the message is dropped.
/// For a released answer sent as a local reply, which Envoy sends a gRPC caller trailers-only:
/// without this the client would get `UNKNOWN` with the message's bytes as its text instead of
/// the service's status. A gRPC client drops the message of an answer that ends in an error
/// status, so it loses nothing. Answers without `grpc-status` in `trailers` are left as they are.
pub fn into_trailers_only(headers: &mut Headers, body: &mut Vec<u8>, trailers: &Headers) {
    if !trailers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("grpc-status"))
    {
        return;
    }
    headers.extend(trailers.iter().cloned());
    body.clear();
}

/// gRPC's mapping of a status code to an HTTP status (the one grpc-gateway and Envoy's gRPC
/// bridges use). An unknown code is `UNKNOWN`, a `500`.
pub fn http_equivalent(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_grpc_answer_settles_as_its_status_http_equivalent() {
        let grpc = h(&[(":status", "200"), ("content-type", "application/grpc")]);
        let cases = [
            ("0", 200),
            ("14", 503),
            ("13", 500),
            ("2", 500),
            ("3", 400),
            ("9", 400),
            ("4", 200),
            ("1", 200),
        ];
        for (code, want) in cases {
            let trailers = h(&[("grpc-status", code)]);
            assert_eq!(
                settling_status(200, &grpc, &trailers),
                want,
                "trailers {code}"
            );
            // Trailers-only: the status is in the one header block.
            let mut only = grpc.clone();
            only.extend(trailers);
            assert_eq!(
                settling_status(200, &only, &Vec::new()),
                want,
                "headers {code}"
            );
        }
        assert_eq!(settling_status(200, &grpc, &Vec::new()), 500, "no status");
        assert_eq!(
            settling_status(200, &grpc, &h(&[("grpc-status", "x")])),
            500,
            "unreadable status"
        );
    }

    #[test]
    fn trailers_join_the_headers_of_a_trailers_only_answer() {
        let mut headers = h(&[("content-type", "application/grpc")]);
        let mut body = b"\0\0\0\0\x01m".to_vec();
        let trailers = h(&[("grpc-status", "14"), ("x-why", "w")]);
        into_trailers_only(&mut headers, &mut body, &trailers);
        assert_eq!(
            headers,
            h(&[
                ("content-type", "application/grpc"),
                ("grpc-status", "14"),
                ("x-why", "w")
            ])
        );
        assert!(body.is_empty());
        // Already trailers-only (no trailers): unchanged.
        let mut body = b"x".to_vec();
        into_trailers_only(&mut headers, &mut body, &Vec::new());
        assert_eq!(headers.len(), 3);
        assert_eq!(body, b"x");
    }

    #[test]
    fn other_answers_settle_as_their_http_status() {
        let json = h(&[("content-type", "application/json")]);
        let trailers = h(&[("grpc-status", "14")]);
        assert_eq!(settling_status(200, &json, &trailers), 200);
        let grpc = h(&[("content-type", "application/grpc")]);
        assert_eq!(settling_status(502, &grpc, &trailers), 502);
    }
}
