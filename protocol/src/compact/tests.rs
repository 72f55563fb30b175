use super::*;
use crate::response::{
    ClaimAnswer, ClaimResponse, FencedResponse, LookupResponse, RenewBatchResponse, RenewOutcome,
};
use crate::{body, json, MAX_LEASE_MS, MAX_RETENTION_MS, MAX_WAIT_MS};
use std::fmt::Debug;

const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn hex64() -> Hex64 {
    Hex64::parse(H).unwrap()
}

fn round_trip<T: Compact + Serialize + serde::de::DeserializeOwned + PartialEq + Debug>(
    value: T,
) -> Vec<u8> {
    let bytes = value.to_compact();
    assert_eq!(bytes.first(), Some(&MARKER));
    assert_eq!(T::from_compact(&bytes).unwrap(), value);
    // Whoever reads by the first byte gets the same value from either format.
    assert_eq!(body::decode::<T>(&bytes).unwrap(), value);
    assert_eq!(body::decode::<T>(&json::encode(&value)).unwrap(), value);
    bytes
}

fn request_round_trip<R: Request + Compact + PartialEq + Debug>(req: R) -> Vec<u8> {
    let bytes = req.to_compact();
    assert_eq!(R::from_compact(&bytes).unwrap(), req);
    assert_eq!(body::decode_request::<R>(&bytes).unwrap(), req);
    assert_eq!(body::decode_request::<R>(&json::encode(&req)).unwrap(), req);
    bytes
}

#[test]
fn requests_round_trip_and_are_small() {
    let claim = request_round_trip(ClaimRequest {
        key: hex64(),
        fingerprint: hex64(),
        lease_ms: MAX_LEASE_MS,
        wait_ms: MAX_WAIT_MS,
        token: Some("t".repeat(32)),
        abandoned: None,
        retention_ms: None,
    });
    let as_json = json::encode(&ClaimRequest::from_compact(&claim).unwrap());
    assert!(
        claim.len() < 110 && as_json.len() > 200,
        "{} vs {}",
        claim.len(),
        as_json.len()
    );
    request_round_trip(ClaimRequest {
        key: hex64(),
        fingerprint: hex64(),
        lease_ms: 1,
        wait_ms: 0,
        token: None,
        abandoned: None,
        retention_ms: None,
    });
    request_round_trip(LookupRequest {
        key: hex64(),
        fingerprint: hex64(),
        abandoned: None,
    });
    let record: Vec<u8> = (0..=255).collect();
    let complete = request_round_trip(CompleteRequest {
        key: hex64(),
        token: "t".into(),
        record: record.clone(),
        retention_ms: MAX_RETENTION_MS,
    });
    // The record travels as itself, not as base64.
    assert!(complete.windows(record.len()).any(|w| w == record));
    request_round_trip(ReleaseRequest {
        key: hex64(),
        token: "t".into(),
    });
    request_round_trip(RenewRequest {
        key: hex64(),
        token: "t".into(),
        lease_ms: 5,
    });
    let one = RenewRequest {
        key: hex64(),
        token: "t".repeat(32),
        lease_ms: 600,
    };
    let batch = request_round_trip(RenewBatchRequest {
        renewals: vec![one.clone(); 3],
    });
    // The count, then each renewal as a single renew writes it (without its marker).
    let single = one.to_compact();
    assert_eq!(batch.len(), 2 + 3 * (single.len() - 1));
}

#[test]
fn replies_round_trip() {
    for (response, waited) in [
        (ClaimResponse::Claimed { token: "t".into() }, false),
        (ClaimResponse::InFlight { retry_after_ms: 7 }, true),
        (
            ClaimResponse::Completed {
                record: vec![0, 1, 0x7b, 255],
            },
            true,
        ),
        (ClaimResponse::Completed { record: vec![] }, false),
        (ClaimResponse::Mismatch, false),
        (
            ClaimResponse::Abandoned {
                lease_ended_ms_ago: 300,
            },
            false,
        ),
    ] {
        round_trip(ClaimAnswer { response, waited });
    }
    for answer in [
        LookupResponse::Absent,
        LookupResponse::InFlight { retry_after_ms: 1 },
        LookupResponse::Completed { record: vec![9; 3] },
        LookupResponse::Mismatch,
        LookupResponse::Abandoned {
            lease_ended_ms_ago: 0,
        },
    ] {
        round_trip(answer);
    }
    let outcomes = vec![
        RenewOutcome::Renewed,
        RenewOutcome::Stale,
        RenewOutcome::Renewed,
    ];
    assert_eq!(
        round_trip(RenewBatchResponse { outcomes }),
        [MARKER, 3, 0, 1, 0]
    );
    for answer in [
        FencedResponse::Stored,
        FencedResponse::Released,
        FencedResponse::Renewed,
        FencedResponse::Stale,
    ] {
        assert_eq!(round_trip(answer).len(), 2);
    }
}

#[test]
fn validation_is_the_json_one_and_names_the_field() {
    let claim = |lease_ms, wait_ms, token: Option<&str>| {
        write(&Claim {
            key: [1; 32],
            fingerprint: [2; 32],
            lease_ms,
            wait_ms,
            token,
        })
    };
    for (bytes, field) in [
        (claim(0, 0, None), "lease_ms"),
        (claim(MAX_LEASE_MS + 1, 0, None), "lease_ms"),
        (claim(5, MAX_WAIT_MS + 1, None), "wait_ms"),
        (claim(5, 0, Some("")), "token"),
        (claim(5, 0, Some(&"t".repeat(257))), "token"),
    ] {
        let e = ClaimRequest::from_compact(&bytes).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let ok = ClaimRequest::from_compact(&claim(5, MAX_WAIT_MS, Some("t"))).unwrap();
    assert_eq!(ok.key.as_str(), "01".repeat(32));
    assert_eq!(ok.fingerprint.as_str(), "02".repeat(32));
    let complete = |token: &str, retention_ms| {
        write(&Complete {
            key: [1; 32],
            token,
            record: b"r",
            retention_ms,
        })
    };
    for (bytes, field) in [
        (complete("", 1), "token"),
        (complete("t", 0), "retention_ms"),
        (complete("t", MAX_RETENTION_MS + 1), "retention_ms"),
    ] {
        let e = CompleteRequest::from_compact(&bytes).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let renew = write(&Renew {
        key: [1; 32],
        token: "t",
        lease_ms: 0,
    });
    assert_eq!(
        RenewRequest::from_compact(&renew).unwrap_err().field,
        "lease_ms"
    );
    let entry = |token, lease_ms| Renew {
        key: [1; 32],
        token,
        lease_ms,
    };
    let batch = |renewals| write(&RenewBatch { renewals });
    for (bytes, message) in [
        (
            batch(vec![entry("t", 5), entry("t", 5), entry("t", 0)]),
            "renewals[2].lease_ms: must be an integer from 1 to 86400000",
        ),
        (
            batch(vec![entry("", 5)]),
            "renewals[0].token: must be 1 to 256 characters",
        ),
        (batch(vec![]), "renewals: must hold 1 to 256 renewals"),
        (
            batch(
                (0..=crate::MAX_RENEW_BATCH)
                    .map(|_| entry("t", 5))
                    .collect(),
            ),
            "renewals: must hold 1 to 256 renewals",
        ),
    ] {
        let e = RenewBatchRequest::from_compact(&bytes).unwrap_err();
        assert_eq!(e.to_string(), message);
    }
    let release = write(&Release {
        key: [1; 32],
        token: "",
    });
    assert_eq!(
        ReleaseRequest::from_compact(&release).unwrap_err().field,
        "token"
    );
}

#[test]
fn malformed_bodies_are_body_errors() {
    let good = RenewRequest {
        key: hex64(),
        token: "t".into(),
        lease_ms: 5,
    }
    .to_compact();
    let mut trailing = good.clone();
    trailing.push(0);
    let mut unmarked = good.clone();
    unmarked[0] = 2;
    for bytes in [
        &b""[..],
        &[MARKER],
        &good[..good.len() - 1],
        &trailing,
        &unmarked,
        br#"{"key":"x"}"#,
    ] {
        let e = RenewRequest::from_compact(bytes).unwrap_err();
        assert_eq!(e.field, "body", "{bytes:?}: {e}");
    }
    for bytes in [&b""[..], &[MARKER], &[MARKER, 4], &[MARKER, 0, 0], b"{}"] {
        assert!(FencedResponse::from_compact(bytes).is_err(), "{bytes:?}");
    }
    // Fewer outcomes than counted, an unknown outcome, trailing bytes.
    for bytes in [&[MARKER, 2, 0][..], &[MARKER, 1, 2], &[MARKER, 1, 0, 0]] {
        assert!(
            RenewBatchResponse::from_compact(bytes).is_err(),
            "{bytes:?}"
        );
    }
    // An unknown outcome, or a claimed one without its token.
    for bytes in [&[MARKER, 9, 0][..], &[MARKER, 0]] {
        assert!(ClaimAnswer::from_compact(bytes).is_err(), "{bytes:?}");
    }
    // A token that is not UTF-8.
    assert!(ClaimAnswer::from_compact(&[MARKER, 0, 1, 0xff, 0]).is_err());
}

#[test]
fn media_types_name_formats() {
    use body::Format;
    for (value, format) in [
        (&b"application/json"[..], Some(Format::Json)),
        (b"Application/JSON; charset=utf-8", Some(Format::Json)),
        (CONTENT_TYPE.as_bytes(), Some(Format::Compact)),
        (
            b"application/vnd.idempotency.v1+postcard ; q=1",
            Some(Format::Compact),
        ),
        (b"text/plain", None),
        (b"", None),
    ] {
        assert_eq!(Format::of_media_type(value), format, "{value:?}");
    }
    assert_eq!(Format::of_body(&[MARKER]), Format::Compact);
    assert_eq!(Format::of_body(b" {"), Format::Json);
    assert_eq!(Format::of_body(b""), Format::Json);
}

#[test]
fn abandoned_fields_extend_the_first_layouts() {
    let old = ClaimRequest {
        key: hex64(),
        fingerprint: hex64(),
        lease_ms: 10,
        wait_ms: 0,
        token: None,
        abandoned: None,
        retention_ms: None,
    };
    let first = request_round_trip(old.clone());
    for (abandoned, retention_ms, tail) in [
        (
            Some(AbandonedPolicy::Report),
            Some(300),
            vec![1, 0xac, 0x02],
        ),
        (Some(AbandonedPolicy::TakeOver), None, vec![2, 0]),
        (None, Some(1), vec![0, 1]),
    ] {
        let new = request_round_trip(ClaimRequest {
            abandoned,
            retention_ms,
            ..old.clone()
        });
        // An older filter's claim is a prefix of a newer one's: the extension goes after it.
        assert_eq!(new.strip_prefix(first.as_slice()), Some(tail.as_slice()));
    }
    let mut bad = first.clone();
    bad.extend([3, 0]);
    assert_eq!(
        ClaimRequest::from_compact(&bad).unwrap_err().to_string(),
        "abandoned: must be \"report\" or \"take_over\""
    );
    bad.truncate(first.len() + 1);
    assert!(ClaimRequest::from_compact(&bad).is_err());
    bad = first.clone();
    bad.extend([1, 0, 0]);
    assert!(ClaimRequest::from_compact(&bad)
        .unwrap_err()
        .to_string()
        .contains("trailing bytes"));
    let lookup = LookupRequest {
        key: hex64(),
        fingerprint: hex64(),
        abandoned: None,
    };
    let first = request_round_trip(lookup.clone());
    let new = request_round_trip(LookupRequest {
        abandoned: Some(AbandonedPolicy::Report),
        ..lookup
    });
    assert_eq!(new.strip_prefix(first.as_slice()), Some([1u8].as_slice()));
    // The new outcomes take the next indexes, after the ones older filters know.
    let answer = ClaimAnswer {
        response: ClaimResponse::Abandoned {
            lease_ended_ms_ago: 5,
        },
        waited: false,
    };
    assert_eq!(answer.to_compact(), [MARKER, 4, 5, 0]);
    let answer = LookupResponse::Abandoned {
        lease_ended_ms_ago: 5,
    };
    assert_eq!(answer.to_compact(), [MARKER, 4, 5]);
}
