use super::*;
use crate::response::{
    ClaimAnswer, ClaimResponse, ErrorBody, FencedResponse, LookupResponse, RenewBatchResponse,
    RenewOutcome,
};
use crate::{
    AbandonedPolicy, ClaimRequest, CompleteRequest, Hex64, LookupRequest, ReleaseRequest,
    RenewBatchRequest, RenewRequest, MAX_LEASE_MS, MAX_RETENTION_MS, MAX_WAIT_MS,
};
use std::fmt::Debug;

const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn hex() -> Hex64 {
    Hex64::parse(H).unwrap()
}

/// Encodes, checks the text, decodes and checks the value is back.
fn round_trip<R: Request + PartialEq + Debug>(req: R, text: &str) {
    assert_eq!(String::from_utf8(encode(&req)).unwrap(), text);
    assert_eq!(decode_request::<R>(text.as_bytes()).unwrap(), req);
}

#[test]
fn requests_round_trip_in_their_documented_form() {
    round_trip(
        ClaimRequest {
            key: hex(),
            fingerprint: hex(),
            lease_ms: 5,
            wait_ms: 0,
            token: None,
            abandoned: None,
            retention_ms: None,
        },
        &format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5}}"#),
    );
    round_trip(
        ClaimRequest {
            key: hex(),
            fingerprint: hex(),
            lease_ms: MAX_LEASE_MS,
            wait_ms: MAX_WAIT_MS,
            token: Some("t".into()),
            abandoned: None,
            retention_ms: None,
        },
        &format!(
            r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":86400000,"wait_ms":60000,"token":"t"}}"#
        ),
    );
    round_trip(
        LookupRequest {
            key: hex(),
            fingerprint: hex(),
            abandoned: None,
        },
        &format!(r#"{{"key":"{H}","fingerprint":"{H}"}}"#),
    );
    round_trip(
        CompleteRequest {
            key: hex(),
            token: "t".into(),
            record: b"rec".to_vec(),
            retention_ms: MAX_RETENTION_MS,
        },
        &format!(r#"{{"key":"{H}","token":"t","record":"cmVj","retention_ms":31536000000}}"#),
    );
    round_trip(
        ReleaseRequest {
            key: hex(),
            token: "t".into(),
        },
        &format!(r#"{{"key":"{H}","token":"t"}}"#),
    );
    round_trip(
        RenewRequest {
            key: hex(),
            token: "t".into(),
            lease_ms: 1,
        },
        &format!(r#"{{"key":"{H}","token":"t","lease_ms":1}}"#),
    );
    round_trip(
        ClaimRequest {
            key: hex(),
            fingerprint: hex(),
            lease_ms: 5,
            wait_ms: 0,
            token: None,
            abandoned: Some(AbandonedPolicy::TakeOver),
            retention_ms: Some(60_000),
        },
        &format!(
            r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5,"abandoned":"take_over","retention_ms":60000}}"#
        ),
    );
    round_trip(
        LookupRequest {
            key: hex(),
            fingerprint: hex(),
            abandoned: Some(AbandonedPolicy::Report),
        },
        &format!(r#"{{"key":"{H}","fingerprint":"{H}","abandoned":"report"}}"#),
    );
    assert_eq!(Hex64::from_bytes(&[0xab; 32]).as_str(), "ab".repeat(32));
}

#[test]
fn abandoned_answers_and_bad_policies() {
    let answer = ClaimAnswer {
        response: ClaimResponse::Abandoned {
            lease_ended_ms_ago: 1500,
        },
        waited: false,
    };
    let text = r#"{"outcome":"abandoned","lease_ended_ms_ago":1500}"#;
    assert_eq!(String::from_utf8(encode(&answer)).unwrap(), text);
    assert_eq!(decode::<ClaimAnswer>(text.as_bytes()).unwrap(), answer);
    let lookup = LookupResponse::Abandoned {
        lease_ended_ms_ago: 2,
    };
    let text = r#"{"outcome":"abandoned","lease_ended_ms_ago":2}"#;
    assert_eq!(String::from_utf8(encode(&lookup)).unwrap(), text);
    assert_eq!(decode::<LookupResponse>(text.as_bytes()).unwrap(), lookup);
    for (body, error) in [
        (
            format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5,"abandoned":"steal"}}"#),
            r#"abandoned: must be "report" or "take_over""#,
        ),
        (
            format!(r#"{{"key":"{H}","fingerprint":"{H}","lease_ms":5,"retention_ms":0}}"#),
            "retention_ms: must be an integer from 1 to 31536000000",
        ),
    ] {
        let e = decode_request::<ClaimRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), error);
    }
}

#[test]
fn null_unknown_fields_and_whitespace_are_accepted() {
    for (wait, expected) in [("null", 0), ("0", 0), ("60000", 60_000)] {
        let body = format!(
            r#" {{"key":"{H}","fingerprint":"{H}","lease_ms":5,"wait_ms":{wait},"token":null,"x":[1]}}"#
        );
        let c = decode_request::<ClaimRequest>(body.as_bytes()).unwrap();
        assert_eq!((c.wait_ms, c.token), (expected, None));
    }
}

#[test]
fn errors_name_the_field() {
    let upper = H.to_uppercase();
    let claim = |rest: &str| format!(r#"{{"key":"{H}","fingerprint":"{H}"{rest}}}"#);
    for (body, field) in [
        (format!(r#"{{"fingerprint":"{H}","lease_ms":5}}"#), "key"),
        (
            format!(r#"{{"key":null,"fingerprint":"{H}","lease_ms":5}}"#),
            "key",
        ),
        (
            format!(r#"{{"key":"{upper}","fingerprint":"{H}","lease_ms":5}}"#),
            "key",
        ),
        (
            format!(r#"{{"key":7,"fingerprint":"{H}","lease_ms":5}}"#),
            "key",
        ),
        (
            format!(r#"{{"key":"{H}","fingerprint":"ab","lease_ms":5}}"#),
            "fingerprint",
        ),
        (claim(""), "lease_ms"),
        (claim(r#","lease_ms":0"#), "lease_ms"),
        (claim(r#","lease_ms":86400001"#), "lease_ms"),
        (claim(r#","lease_ms":-5"#), "lease_ms"),
        (claim(r#","lease_ms":1.5"#), "lease_ms"),
        (claim(r#","lease_ms":"5""#), "lease_ms"),
        (claim(r#","lease_ms":5,"wait_ms":60001"#), "wait_ms"),
        (claim(r#","lease_ms":5,"wait_ms":-1"#), "wait_ms"),
        (claim(r#","lease_ms":5,"wait_ms":"9""#), "wait_ms"),
        (claim(r#","lease_ms":5,"token":"""#), "token"),
        (claim(r#","lease_ms":5,"key":"{H}""#), "body"),
        ("[1]".to_owned(), "body"),
        ("{not json".to_owned(), "body"),
        (claim(r#","lease_ms":5} x"#), "body"),
    ] {
        let e = decode_request::<ClaimRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{body}: {e}");
        assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
    }
    let e = decode_request::<ClaimRequest>(claim(r#","lease_ms":"5""#).as_bytes()).unwrap_err();
    assert!(
        !e.problem.contains("line"),
        "no position after a field name: {e}"
    );
    for (body, field) in [
        (
            format!(r#"{{"key":"{H}","token":"t","record":"@@","retention_ms":1}}"#),
            "record",
        ),
        (
            format!(r#"{{"key":"{H}","token":"t","record":"YQ","retention_ms":1}}"#),
            "record",
        ),
        (
            format!(r#"{{"key":"{H}","token":"t","record":7,"retention_ms":1}}"#),
            "record",
        ),
        (
            format!(r#"{{"key":"{H}","token":"t","retention_ms":1}}"#),
            "record",
        ),
        (
            format!(r#"{{"key":"{H}","record":"YQ==","retention_ms":1}}"#),
            "token",
        ),
        (
            format!(r#"{{"key":"{H}","token":"t","record":"YQ=="}}"#),
            "retention_ms",
        ),
        (
            r#"{"token":"t","record":"YQ==","retention_ms":1}"#.to_owned(),
            "key",
        ),
    ] {
        let e = decode_request::<CompleteRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{body}: {e}");
    }
    let e = decode_request::<CompleteRequest>(
        format!(r#"{{"key":"{H}","token":"t","record":"@@","retention_ms":1}}"#).as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "record: must be standard padded base64");
    for (body, field) in [
        (format!(r#"{{"key":"{H}","token":""}}"#), "token"),
        (format!(r#"{{"key":"{H}","token":7}}"#), "token"),
        (
            format!(r#"{{"key":"{H}","token":"{}"}}"#, "t".repeat(257)),
            "token",
        ),
        (r#"{"token":"t"}"#.to_owned(), "key"),
        (format!(r#"["{H}","t"]"#), "body"),
    ] {
        let e = decode_request::<ReleaseRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{body}: {e}");
    }
    for (body, field) in [
        (format!(r#"{{"key":"{H}","lease_ms":5}}"#), "token"),
        (format!(r#"{{"key":"{H}","token":"t"}}"#), "lease_ms"),
        (
            format!(r#"{{"key":"{H}","token":"t","lease_ms":0}}"#),
            "lease_ms",
        ),
        (r#"{"token":"t","lease_ms":5}"#.to_owned(), "key"),
        (r#""x""#.to_owned(), "body"),
    ] {
        let e = decode_request::<RenewRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{body}: {e}");
    }
    let e = decode_request::<LookupRequest>(format!(r#"{{"key":"{H}"}}"#).as_bytes());
    assert_eq!(e.unwrap_err().to_string(), "fingerprint: missing");
}

#[test]
fn renew_batches_round_trip_and_name_the_entry_at_fault() {
    use crate::MAX_RENEW_BATCH;
    let renew = |token: &str, lease_ms| RenewRequest {
        key: hex(),
        token: token.into(),
        lease_ms,
    };
    round_trip(
        RenewBatchRequest {
            renewals: vec![renew("a", 1), renew("b", MAX_LEASE_MS)],
        },
        &format!(
            r#"{{"renewals":[{{"key":"{H}","token":"a","lease_ms":1}},{{"key":"{H}","token":"b","lease_ms":86400000}}]}}"#
        ),
    );
    let entry = |token: &str| format!(r#"{{"key":"{H}","token":"{token}","lease_ms":5}}"#);
    let batch = |entries: &[String]| format!(r#"{{"renewals":[{}]}}"#, entries.join(","));
    let ok = entry("t");
    let full = vec![ok.clone(); MAX_RENEW_BATCH];
    assert_eq!(
        decode_request::<RenewBatchRequest>(batch(&full).as_bytes())
            .unwrap()
            .renewals
            .len(),
        MAX_RENEW_BATCH
    );
    let over = vec![ok.clone(); MAX_RENEW_BATCH + 1];
    for (body, message) in [
        (
            batch(&[ok.clone(), ok.clone(), ok.clone(), entry("")]),
            "renewals[3].token: must be 1 to 256 characters",
        ),
        (
            batch(&[ok.clone(), format!(r#"{{"key":"{H}","token":"t"}}"#)]),
            "renewals[1].lease_ms: missing",
        ),
        (
            batch(&[r#"{"token":"t","lease_ms":5}"#.to_owned()]),
            "renewals[0].key: missing",
        ),
        (batch(&[]), "renewals: must hold 1 to 256 renewals"),
        (batch(&over), "renewals: must hold 1 to 256 renewals"),
        ("{}".to_owned(), "renewals: missing"),
    ] {
        let e = decode_request::<RenewBatchRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), message);
    }
    // A type error inside an entry is named by its path, index included.
    let e = decode_request::<RenewBatchRequest>(
        batch(&[ok, format!(r#"{{"key":"{H}","token":"t","lease_ms":"5"}}"#)]).as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.field, "renewals[1].lease_ms", "{e}");
}

#[test]
fn responses_round_trip_as_documented() {
    fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T, text: &str) {
        assert_eq!(String::from_utf8(encode(&value)).unwrap(), text);
        assert_eq!(decode::<T>(text.as_bytes()).unwrap(), value);
    }
    let answer = |response, waited| ClaimAnswer { response, waited };
    check(
        answer(ClaimResponse::Claimed { token: "t".into() }, false),
        r#"{"outcome":"claimed","token":"t"}"#,
    );
    check(
        answer(ClaimResponse::InFlight { retry_after_ms: 7 }, false),
        r#"{"outcome":"in_flight","retry_after_ms":7}"#,
    );
    check(
        answer(
            ClaimResponse::Completed {
                record: b"rec".to_vec(),
            },
            true,
        ),
        r#"{"outcome":"completed","record":"cmVj","waited":true}"#,
    );
    check(
        answer(ClaimResponse::Mismatch, false),
        r#"{"outcome":"mismatch"}"#,
    );
    check(LookupResponse::Absent, r#"{"outcome":"absent"}"#);
    check(
        LookupResponse::Completed { record: vec![] },
        r#"{"outcome":"completed","record":""}"#,
    );
    check(FencedResponse::Stored, r#"{"outcome":"stored"}"#);
    check(FencedResponse::Released, r#"{"outcome":"released"}"#);
    check(FencedResponse::Renewed, r#"{"outcome":"renewed"}"#);
    check(FencedResponse::Stale, r#"{"outcome":"stale"}"#);
    check(
        RenewBatchResponse {
            outcomes: vec![RenewOutcome::Renewed, RenewOutcome::Stale],
        },
        r#"{"outcomes":["renewed","stale"]}"#,
    );
    check(
        ErrorBody {
            error: "key: missing".into(),
        },
        r#"{"error":"key: missing"}"#,
    );
}

#[test]
fn malformed_replies_are_errors() {
    for body in [
        &br#"{"outcome":"claimed"}"#[..],
        br#"{"outcome":"completed","record":"%%%"}"#,
        br#"{"outcome":"weird"}"#,
        br#"{"outcome":"in_flight","retry_after_ms":-1}"#,
        b"<html>oops</html>",
        b"",
    ] {
        assert!(decode::<ClaimAnswer>(body).is_err(), "{body:?}");
    }
    assert!(decode::<FencedResponse>(br#"{"outcome":"claimed","token":"t"}"#).is_err());
}

#[test]
fn admin_replies_round_trip_as_documented() {
    use crate::admin::{EntryKind, PurgeResponse, RecordState};
    fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T, text: &str) {
        assert_eq!(String::from_utf8(encode(&value)).unwrap(), text);
        assert_eq!(decode::<T>(text.as_bytes()).unwrap(), value);
    }
    check(RecordState::Absent, r#"{"state":"absent"}"#);
    check(
        RecordState::InFlight {
            fingerprint: hex(),
            lease_left_ms: 7,
        },
        &format!(r#"{{"state":"in_flight","fingerprint":"{H}","lease_left_ms":7}}"#),
    );
    check(
        RecordState::Completed {
            fingerprint: hex(),
            record: b"rec".to_vec(),
            stored_at_ms: Some(5),
            expires_in_ms: 9,
        },
        &format!(
            r#"{{"state":"completed","fingerprint":"{H}","record":"cmVj","stored_at_ms":5,"expires_in_ms":9}}"#
        ),
    );
    check(
        PurgeResponse {
            removed: RecordState::Expired {
                fingerprint: hex(),
                was: EntryKind::Completed,
                expired_ms_ago: 3,
            },
        },
        &format!(
            r#"{{"removed":{{"state":"expired","fingerprint":"{H}","was":"completed","expired_ms_ago":3}}}}"#
        ),
    );
    // A backend that does not know when a record was stored leaves the field out.
    let text =
        format!(r#"{{"state":"completed","fingerprint":"{H}","record":"","expires_in_ms":1}}"#);
    assert!(matches!(
        decode::<RecordState>(text.as_bytes()).unwrap(),
        RecordState::Completed {
            stored_at_ms: None,
            ..
        }
    ));
}
