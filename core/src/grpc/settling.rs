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
    fn other_answers_settle_as_their_http_status() {
        let json = h(&[("content-type", "application/json")]);
        let trailers = h(&[("grpc-status", "14")]);
        assert_eq!(settling_status(200, &json, &trailers), 200);
        let grpc = h(&[("content-type", "application/grpc")]);
        assert_eq!(settling_status(502, &grpc, &trailers), 502);
    }
}
