use super::*;

fn sample() -> Record {
    Record {
        fingerprint: [7; 32],
        created_ms: 1,
        expires_ms: 2,
        outcome: Outcome::Replayable(StoredResponse {
            status: 201,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("x-bin".into(), vec![0xff, 0x00, 0x80]),
                ("set-cookie".into(), b"a=1".to_vec()),
                ("set-cookie".into(), b"b=2".to_vec()),
            ],
            body: vec![0, 159, 146, 150, b'{', b'}'],
            ..StoredResponse::default()
        }),
    }
}

/// A unary gRPC answer: a length-prefixed message, then trailers with binary metadata.
fn sample_grpc(trailers_only: bool) -> Record {
    let trailers = vec![
        ("grpc-status".into(), b"0".to_vec()),
        ("grpc-message".into(), Vec::new()),
        ("x-trailer-meta".into(), b"t1".to_vec()),
        ("x-bin-bin".into(), b"AAEC".to_vec()),
    ];
    let (headers, body, trailers) = if trailers_only {
        let mut headers = vec![("content-type".into(), b"application/grpc".to_vec())];
        headers.extend(trailers);
        (headers, Vec::new(), Vec::new())
    } else {
        let headers = vec![("content-type".into(), b"application/grpc".to_vec())];
        (headers, b"\0\0\0\0\x02hi".to_vec(), trailers)
    };
    Record {
        outcome: Outcome::Replayable(StoredResponse {
            status: 200,
            headers,
            body,
            trailers,
            trailers_only,
        }),
        ..sample()
    }
}

#[test]
fn round_trip_is_byte_exact() {
    let r = sample();
    assert_eq!(Record::decode(&r.encode()), Ok(r));
    for outcome in [
        Outcome::NotReplayable,
        Outcome::Unknown { hold_until_ms: 9 },
    ] {
        let r = Record {
            outcome,
            ..sample()
        };
        assert_eq!(Record::decode(&r.encode()), Ok(r));
    }
    for r in [sample_grpc(false), sample_grpc(true)] {
        assert_eq!(Record::decode(&r.encode()), Ok(r.clone()));
        let key = RecordKey([3; 32]);
        assert_eq!(
            Record::open(&r.seal(&key, b"s"), &key, &secrets(&[b"s"])),
            Ok(r)
        );
    }
}

/// The version-2 layout as the filter before trailers wrote it (field order is the layout).
#[derive(Serialize)]
struct ResponseV2<'a> {
    status: u16,
    headers: &'a [(String, Vec<u8>)],
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

#[derive(Serialize)]
enum OutcomeV2<'a> {
    Replayable(ResponseV2<'a>),
    NotReplayable,
    Unknown { hold_until_ms: u64 },
}

#[derive(Serialize)]
struct RecordV2<'a> {
    fingerprint: Fingerprint,
    created_ms: u64,
    expires_ms: u64,
    outcome: OutcomeV2<'a>,
}

#[test]
fn version_2_records_still_decode_and_open() {
    let r = sample();
    let Outcome::Replayable(response) = &r.outcome else {
        unreachable!()
    };
    let v2 = |outcome| RecordV2 {
        fingerprint: r.fingerprint,
        created_ms: r.created_ms,
        expires_ms: r.expires_ms,
        outcome,
    };
    let replayable = OutcomeV2::Replayable(ResponseV2 {
        status: response.status,
        headers: &response.headers,
        body: &response.body,
    });
    for (old, expected) in [
        (v2(replayable), r.outcome.clone()),
        (v2(OutcomeV2::NotReplayable), Outcome::NotReplayable),
        (
            v2(OutcomeV2::Unknown { hold_until_ms: 9 }),
            Outcome::Unknown { hold_until_ms: 9 },
        ),
    ] {
        let payload = postcard::to_allocvec(&old).unwrap();
        let mut unsealed = vec![VERSION_2];
        unsealed.extend_from_slice(&payload);
        let decoded = Record::decode(&unsealed).unwrap();
        assert_eq!(decoded.outcome, expected);
        assert_eq!((decoded.created_ms, decoded.expires_ms), (1, 2));
        // Sealed by the filter before trailers: `[3] ++ payload ++ MAC` under the same domain.
        let key = RecordKey([4; 32]);
        let mut sealed = vec![SEALED_2];
        sealed.extend_from_slice(&payload);
        let mac = mac_of(b"old", &key, SEALED_2, &payload).unwrap();
        sealed.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(
            Record::open(&sealed, &key, &secrets(&[b"old"])).map(|r| r.outcome),
            Ok(expected)
        );
        // A version-2 payload cannot pass for a version-4 one under the same MAC.
        sealed[0] = SEALED;
        assert!(Record::open(&sealed, &key, &secrets(&[b"old"])).is_err());
    }
}

/// A version-2 record as bytes, frozen: the layout cannot drift with the types above.
#[test]
fn a_frozen_version_2_record_decodes() {
    // fingerprint [7; 32], created 1, expires 2, Replayable 201, one header a: b, body "x".
    let mut bytes = vec![VERSION_2];
    bytes.extend_from_slice(&[7; 32]);
    bytes.extend_from_slice(&[1, 2, 0, 0xc9, 0x01, 1, 1, b'a', 1, b'b', 1, b'x']);
    let expected = Outcome::Replayable(StoredResponse {
        status: 201,
        headers: vec![("a".into(), b"b".to_vec())],
        body: b"x".to_vec(),
        ..StoredResponse::default()
    });
    assert_eq!(Record::decode(&bytes).map(|r| r.outcome), Ok(expected));
}

#[test]
fn version_1_records_still_decode() {
    #[derive(Serialize)]
    struct V1<'a> {
        fingerprint: Fingerprint,
        created_ms: u64,
        expires_ms: u64,
        response: Option<ResponseV2<'a>>,
    }
    let r = sample();
    let Outcome::Replayable(response) = &r.outcome else {
        unreachable!()
    };
    for (kept, expected) in [
        (Some(response), r.outcome.clone()),
        (None, Outcome::NotReplayable),
    ] {
        let mut v1 = vec![VERSION_1];
        v1.extend(
            postcard::to_allocvec(&V1 {
                fingerprint: r.fingerprint,
                created_ms: 1,
                expires_ms: 2,
                response: kept.map(|r| ResponseV2 {
                    status: r.status,
                    headers: &r.headers,
                    body: &r.body,
                }),
            })
            .unwrap(),
        );
        assert_eq!(Record::decode(&v1).unwrap().outcome, expected);
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(Record::decode(b"").is_err());
    assert!(Record::decode(b"\x09abc").is_err());
    // Seen while writing the codec fuzz target: a valid record followed by anything decoded.
    let mut spliced = sample().encode();
    spliced.extend_from_slice(b"junk");
    assert!(Record::decode(&spliced).is_err());
    let enc = sample().encode();
    for cut in 0..enc.len() {
        assert!(
            Record::decode(&enc[..cut]).is_err(),
            "truncated at {cut} decoded"
        );
    }
}

fn default_policy() -> ReplayHeaders {
    ReplayHeaders::Deny(
        crate::config::DEFAULT_REPLAY_DENY
            .iter()
            .map(|h| (*h).to_string())
            .collect(),
    )
}

#[test]
fn drops_hop_by_hop_pseudo_and_credential_headers() {
    let response = vec![
        (":status".into(), b"200".to_vec()),
        ("Connection".into(), b"close".to_vec()),
        ("content-length".into(), b"2".to_vec()),
        ("content-type".into(), b"text/plain".to_vec()),
        ("Set-Cookie".into(), b"session=abc".to_vec()),
        ("www-authenticate".into(), b"Bearer".to_vec()),
    ];
    // `content-length` stays where it was (Envoy sets a local reply's length in place), whatever
    // the policy says: it is framing, not content.
    assert_eq!(
        storable_headers(response.clone(), &default_policy()),
        vec![
            ("content-length".to_string(), b"2".to_vec()),
            ("content-type".to_string(), b"text/plain".to_vec())
        ]
    );
    // An allowlist cannot bring back what is hop-by-hop.
    let allow = ReplayHeaders::Allow(vec!["set-cookie".into(), "connection".into()]);
    assert_eq!(
        storable_headers(response, &allow),
        vec![
            ("content-length".to_string(), b"2".to_vec()),
            ("Set-Cookie".to_string(), b"session=abc".to_vec())
        ]
    );
}

fn secrets(list: &[&[u8]]) -> Secrets {
    Secrets::from_bytes(list.iter().map(|s| s.to_vec()).collect())
}

#[test]
fn a_sealed_record_opens_only_under_its_key_and_a_known_secret() {
    let key = RecordKey([1; 32]);
    let r = sample();
    let sealed = r.seal(&key, b"current");
    assert_eq!(
        Record::open(&sealed, &key, &secrets(&[b"current"])),
        Ok(r.clone())
    );
    // Rotation: sealed under a secret that is now second in the list.
    assert_eq!(
        Record::open(&sealed, &key, &secrets(&[b"newer", b"current"])),
        Ok(r.clone())
    );
    assert_eq!(
        Record::open_with_secret(&sealed, &key, &secrets(&[b"newer", b"current"])),
        Ok((r.clone(), 1))
    );
    for (what, bytes, k, s) in [
        ("unknown secret", sealed.clone(), key, secrets(&[b"other"])),
        (
            "other key",
            sealed.clone(),
            RecordKey([2; 32]),
            secrets(&[b"current"]),
        ),
        ("unsealed", r.encode(), key, secrets(&[b"current"])),
        ("empty", Vec::new(), key, secrets(&[b"current"])),
        ("short", vec![SEALED, 1, 2], key, secrets(&[b"current"])),
    ] {
        assert_eq!(
            Record::open(&bytes, &k, &s),
            Err(OpenError::Unverified),
            "{what}"
        );
    }
    // Every single changed byte (status, header, body, fingerprint, seal) is refused.
    for i in 0..sealed.len() {
        let mut forged = sealed.clone();
        forged[i] ^= 0x01;
        assert_eq!(
            Record::open(&forged, &key, &secrets(&[b"current"])),
            Err(OpenError::Unverified),
            "byte {i} changed"
        );
    }
    // A record re-sealed under the right key but a guessed secret is refused too.
    let mut altered = r;
    altered.fingerprint = [9; 32];
    assert_eq!(
        Record::open(&altered.seal(&key, b"guess"), &key, &secrets(&[b"current"])),
        Err(OpenError::Unverified)
    );
}
