use super::*;
use crate::compact::{Compact, MARKER};
use crate::response::ClaimResponse;
use crate::{body, json, AbandonedPolicy, Format, Hex64};

const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The key store's reading of a batch body in `format`.
fn read_entries(format: Format, body: &[u8]) -> Result<ReadEntries, ProtocolError> {
    format.read_entries(body)
}

fn hex64() -> Hex64 {
    Hex64::parse(H).unwrap()
}

fn every_call() -> BatchRequest {
    BatchRequest {
        entries: vec![
            BatchEntry::Claim(ClaimRequest {
                key: hex64(),
                fingerprint: hex64(),
                lease_ms: 30_000,
                wait_ms: 0,
                token: Some("t".repeat(32)),
                abandoned: Some(AbandonedPolicy::Report),
                retention_ms: Some(86_400_000),
            }),
            BatchEntry::Claim(ClaimRequest {
                key: hex64(),
                fingerprint: hex64(),
                lease_ms: 1,
                wait_ms: 5,
                token: None,
                abandoned: None,
                retention_ms: None,
            }),
            BatchEntry::Complete(CompleteRequest {
                key: hex64(),
                token: "tok".into(),
                record: (0..=255).collect(),
                retention_ms: 1000,
            }),
            BatchEntry::Release(ReleaseRequest {
                key: hex64(),
                token: "tok".into(),
            }),
            BatchEntry::Lookup(LookupRequest {
                key: hex64(),
                fingerprint: hex64(),
                abandoned: Some(AbandonedPolicy::TakeOver),
            }),
            BatchEntry::Lookup(LookupRequest {
                key: hex64(),
                fingerprint: hex64(),
                abandoned: None,
            }),
        ],
    }
}

fn every_answer() -> BatchResponse {
    BatchResponse {
        answers: vec![
            BatchAnswer::Claim(ClaimAnswer {
                response: ClaimResponse::Claimed { token: "t".into() },
                waited: false,
            }),
            BatchAnswer::Claim(ClaimAnswer {
                response: ClaimResponse::Completed {
                    record: vec![0, 1, 255],
                },
                waited: true,
            }),
            BatchAnswer::Claim(ClaimAnswer {
                response: ClaimResponse::Abandoned {
                    lease_ended_ms_ago: 7,
                },
                waited: false,
            }),
            BatchAnswer::Complete(FencedResponse::Stored),
            BatchAnswer::Complete(FencedResponse::Stale),
            BatchAnswer::Release(FencedResponse::Released),
            BatchAnswer::Release(FencedResponse::Stale),
            BatchAnswer::Lookup(LookupResponse::Absent),
            BatchAnswer::Lookup(LookupResponse::InFlight { retry_after_ms: 3 }),
            BatchAnswer::Error {
                status: 400,
                error: "key: must be 64 lowercase hex characters".into(),
            },
            BatchAnswer::Error {
                status: 503,
                error: "backend unavailable: timed out after 5 ms".into(),
            },
        ],
    }
}

#[test]
fn a_batch_round_trips_in_both_formats() {
    let req = every_call();
    let compact = req.to_compact();
    assert_eq!(compact.first(), Some(&MARKER));
    assert_eq!(BatchRequest::from_compact(&compact).unwrap(), req);
    assert_eq!(body::decode_request::<BatchRequest>(&compact).unwrap(), req);
    let text = json::encode(&req);
    assert_eq!(json::decode_request::<BatchRequest>(&text).unwrap(), req);
    assert_eq!(body::decode_request::<BatchRequest>(&text).unwrap(), req);
    // The key store's reader gets every entry, each valid.
    let read = read_entries(Format::Compact, &compact).unwrap();
    assert_eq!(
        read,
        req.entries.iter().cloned().map(Ok).collect::<Vec<_>>()
    );
    assert_eq!(read_entries(Format::Json, &text).unwrap(), read);
}

#[test]
fn an_entry_is_exactly_the_single_call() {
    let req = every_call();
    let text: serde_json::Value = serde_json::from_slice(&json::encode(&req)).unwrap();
    for (entry, value) in req.entries.iter().zip(text["entries"].as_array().unwrap()) {
        let mut single = value.clone();
        assert_eq!(single["op"], entry.op());
        single.as_object_mut().unwrap().remove("op");
        let alone = match entry {
            BatchEntry::Claim(r) => json::encode(r),
            BatchEntry::Complete(r) => json::encode(r),
            BatchEntry::Release(r) => json::encode(r),
            BatchEntry::Lookup(r) => json::encode(r),
        };
        assert_eq!(
            single,
            serde_json::from_slice::<serde_json::Value>(&alone).unwrap()
        );
    }
    // In compact: op byte, length, the single call's body.
    let BatchEntry::Release(release) = &req.entries[3] else {
        unreachable!()
    };
    let one = BatchRequest {
        entries: vec![BatchEntry::Release(release.clone())],
    };
    let alone = release.to_compact();
    let mut expected = vec![MARKER, 1, 2, alone.len() as u8];
    expected.extend(&alone);
    assert_eq!(one.to_compact(), expected);
}

#[test]
fn answers_round_trip_in_both_formats_with_their_status() {
    let answers = every_answer();
    let compact = answers.to_compact();
    assert_eq!(BatchResponse::from_compact(&compact).unwrap(), answers);
    assert_eq!(body::decode::<BatchResponse>(&compact).unwrap(), answers);
    let text = json::encode(&answers);
    assert_eq!(json::decode::<BatchResponse>(&text).unwrap(), answers);
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(
        v["answers"][0],
        serde_json::json!({"op":"claim","status":200,"body":{"outcome":"claimed","token":"t"}})
    );
    assert_eq!(
        v["answers"][4],
        serde_json::json!({"op":"complete","status":409,"body":{"outcome":"stale"}})
    );
    assert_eq!(
        v["answers"][9],
        serde_json::json!({"op":"error","status":400,
            "body":{"error":"key: must be 64 lowercase hex characters"}})
    );
    let statuses: Vec<u16> = answers.answers.iter().map(BatchAnswer::status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 409, 200, 409, 200, 200, 400, 503]
    );
}

#[test]
fn an_answer_whose_status_does_not_go_with_its_body_is_refused() {
    let bad = br#"{"answers":[{"op":"complete","status":200,"body":{"outcome":"stale"}}]}"#;
    let e = json::decode::<BatchResponse>(bad).unwrap_err();
    assert!(e.to_string().contains("answers[0].status"), "{e}");
    let bad = br#"{"answers":[{"op":"error","status":200,"body":{"error":"x"}}]}"#;
    assert!(json::decode::<BatchResponse>(bad).is_err());
    let bad = br#"{"answers":[{"op":"renew","status":200,"body":{"outcome":"renewed"}}]}"#;
    assert!(json::decode::<BatchResponse>(bad).is_err());
    // Compact: a claim answer's body under the complete op.
    let mut compact = vec![MARKER, 1, 1, 200, 1];
    let claim = ClaimAnswer {
        response: ClaimResponse::Mismatch,
        waited: false,
    }
    .to_compact();
    compact.push(claim.len() as u8);
    compact.extend(claim);
    assert!(BatchResponse::from_compact(&compact).is_err());
}

#[test]
fn a_malformed_entry_is_its_own_error_and_the_others_still_read() {
    let key = H;
    let text = format!(
        r#"{{"entries":[
            {{"op":"release","key":"{key}","token":"a"}},
            {{"op":"release","key":"nothex","token":"a"}},
            {{"op":"renew","key":"{key}","token":"a","lease_ms":5}},
            7,
            {{"key":"{key}","token":"a"}},
            {{"op":"complete","key":"{key}","token":"a","record":"!!","retention_ms":5}},
            {{"op":"lookup","key":"{key}","fingerprint":5}},
            {{"op":"claim","key":"{key}","fingerprint":"{key}","lease_ms":0}}
        ]}}"#
    );
    let read = read_entries(Format::Json, text.as_bytes()).unwrap();
    let problems: Vec<String> = read
        .iter()
        .map(|r| match r {
            Ok(e) => e.op().to_owned(),
            Err(e) => e.to_string(),
        })
        .collect();
    assert_eq!(
        problems,
        [
            "release",
            "key: must be 64 lowercase hex characters",
            "op: must be \"claim\", \"complete\", \"release\" or \"lookup\"",
            "body: must be a JSON object",
            "op: must be \"claim\", \"complete\", \"release\" or \"lookup\"",
            "record: must be standard padded base64",
            "fingerprint: invalid type: integer `5`, expected a string",
            "lease_ms: must be an integer from 1 to 86400000",
        ]
    );
    // Strictly read, the first bad entry fails the batch, named by its place.
    let e = json::decode_request::<BatchRequest>(text.as_bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "entries[1].key: must be 64 lowercase hex characters"
    );

    // Compact: a good release, an unknown op, a truncated claim, a lookup with a bad policy.
    let release = ReleaseRequest {
        key: hex64(),
        token: "a".into(),
    }
    .to_compact();
    let mut body = vec![MARKER, 4];
    for (op, bytes) in [
        (2u8, release.clone()),
        (9, release.clone()),
        (0, release[..10].to_vec()),
        (3, {
            let mut l = vec![MARKER];
            l.extend([7u8; 64]);
            l.push(5);
            l
        }),
    ] {
        body.push(op);
        body.push(bytes.len() as u8);
        body.extend(bytes);
    }
    let read = read_entries(Format::Compact, &body).unwrap();
    assert!(matches!(read[0], Ok(BatchEntry::Release(_))));
    assert_eq!(read[1].as_ref().unwrap_err().field, "op");
    assert_eq!(read[2].as_ref().unwrap_err().field, "body");
    assert_eq!(read[3].as_ref().unwrap_err().field, "abandoned");
}

#[test]
fn a_malformed_envelope_fails_the_batch() {
    for (body, problem) in [
        (&b"[]"[..], "body: must be a JSON object"),
        (b"{}", "entries: missing"),
        (b"{\"entries\":[]}", "entries: must hold 1 to 256 entries"),
        (
            b"{\"entries\":{}}",
            "entries: invalid type: map, expected a list of at most 256 entries",
        ),
        (
            b"{\"entries\":[{}",
            "body: invalid JSON: EOF while parsing a list at line 1 column 14",
        ),
    ] {
        let e = read_entries(Format::Json, body).unwrap_err();
        assert_eq!(e.to_string(), problem);
    }
    // Compact: no marker, no count, a count of 0, a truncated entry, trailing bytes.
    for body in [
        &[0x02, 1][..],
        &[MARKER],
        &[MARKER, 0],
        &[MARKER, 1, 2, 5, 1],
        &[MARKER, 1, 2, 0, 0],
    ] {
        let e = read_entries(Format::Compact, body).unwrap_err();
        assert!(e.field == "body" || e.field == "entries", "{e}");
    }
}

#[test]
fn a_hostile_count_is_refused_before_the_entries_are_read() {
    // A compact batch declaring a million entries, with nothing behind the count.
    let mut compact = vec![MARKER];
    compact.extend(postcard::to_allocvec(&1_000_000u64).unwrap());
    let e = read_entries(Format::Compact, &compact).unwrap_err();
    assert_eq!(e.to_string(), "entries: must hold 1 to 256 entries");
    // One past the bound, every entry present.
    let mut compact = vec![MARKER];
    compact.extend(postcard::to_allocvec(&(MAX_BATCH_ENTRIES as u64 + 1)).unwrap());
    for _ in 0..=MAX_BATCH_ENTRIES {
        compact.extend([2, 0]);
    }
    assert_eq!(
        read_entries(Format::Compact, &compact).unwrap_err(),
        count_error()
    );
    // 4 MiB of empty JSON entries: refused at entry 257, quickly.
    let mut body = b"{\"entries\":[".to_vec();
    while body.len() < 4 * 1024 * 1024 {
        body.extend_from_slice(b"{},");
    }
    body.extend_from_slice(b"{}]}");
    let start = std::time::Instant::now();
    let e = read_entries(Format::Json, &body).unwrap_err();
    assert_eq!(e.to_string(), "entries: must hold 1 to 256 entries");
    assert!(start.elapsed() < std::time::Duration::from_millis(100));
    // Exactly the bound reads.
    let full = BatchRequest {
        entries: vec![every_call().entries[3].clone(); MAX_BATCH_ENTRIES],
    };
    assert_eq!(
        BatchRequest::from_compact(&full.to_compact()).unwrap(),
        full
    );
    // An answer list past the bound is refused too.
    let many = BatchResponse {
        answers: vec![BatchAnswer::Lookup(LookupResponse::Absent); MAX_BATCH_ENTRIES + 1],
    };
    assert!(BatchResponse::from_compact(&many.to_compact()).is_err());
    assert!(json::decode::<BatchResponse>(&json::encode(&many)).is_err());
}
