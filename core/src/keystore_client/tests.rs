use super::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

fn cfg() -> KeystoreConfig {
    KeystoreConfig {
        cluster: "ks".into(),
        authority: "keystore.internal".into(),
        timeout_ms: 250,
        token: Some("t0k".into()),
        path_prefix: "/v1".into(),
        max_record_bytes: 3 << 20,
        body_format: idempotency_protocol::Format::Json,
        secrets: crate::config::Secrets::from_bytes(vec![b"s".repeat(32)]),
        batch_max_entries: 0,
        batches_in_flight: 2,
    }
}

fn terms(wait_ms: u64) -> ClaimTerms {
    ClaimTerms {
        lease_ms: 3000,
        wait_ms,
        abandoned: AbandonedPolicy::Report,
        retention_ms: 86_400_000,
    }
}

#[test]
fn claim_request_carries_only_hashes() {
    let c = claim(&cfg(), &RecordKey([0xab; 32]), &[1; 32], "t1", &terms(0));
    assert_eq!(c.cluster, "ks");
    assert_eq!(c.timeout_ms, 250);
    assert!(c.headers.contains(&(":path".into(), "/v1/claim".into())));
    assert!(c
        .headers
        .contains(&(":authority".into(), "keystore.internal".into())));
    assert!(c
        .headers
        .contains(&("authorization".into(), "Bearer t0k".into())));
    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["key"], "ab".repeat(32));
    assert_eq!(v["fingerprint"], "01".repeat(32));
    assert_eq!(v["lease_ms"], 3000);
    assert_eq!(v["token"], "t1");
    assert!(v.get("wait_ms").is_none());
    assert_eq!(v["abandoned"], "report");
    assert_eq!(v["retention_ms"], 86_400_000);
    let take_over = ClaimTerms {
        abandoned: AbandonedPolicy::TakeOver,
        ..terms(0)
    };
    let t = claim(&cfg(), &RecordKey([0xab; 32]), &[1; 32], "t1", &take_over);
    let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(v["abandoned"], "take_over");
    let w = claim(&cfg(), &RecordKey([0xab; 32]), &[1; 32], "t1", &terms(2000));
    assert_eq!(w.timeout_ms, 2250, "the wait plus the usual timeout");
    let v: serde_json::Value = serde_json::from_slice(&w.body).unwrap();
    assert_eq!(v["wait_ms"], 2000);
    assert!(claim_waited(
        br#"{"outcome":"completed","record":"","waited":true}"#
    ));
    assert!(!claim_waited(
        br#"{"outcome":"in_flight","retry_after_ms":1}"#
    ));
}

#[test]
fn compact_callouts_say_so_and_read_either_reply_format() {
    use idempotency_protocol::{compact, ClaimAnswer, Format};
    let ks = KeystoreConfig {
        body_format: Format::Compact,
        ..cfg()
    };
    let key = RecordKey([0xab; 32]);
    let c = claim(&ks, &key, &[1; 32], "t1", &terms(0));
    assert!(c
        .headers
        .contains(&("content-type".into(), compact::CONTENT_TYPE.into())));
    let sent = ClaimRequest::from_compact(&c.body).unwrap();
    assert_eq!(sent.key.as_str(), "ab".repeat(32));
    assert_eq!(sent.token.as_deref(), Some("t1"));
    let reply = |response| {
        ClaimAnswer {
            response,
            waited: true,
        }
        .to_compact()
    };
    let granted = reply(ClaimResponse::Claimed { token: "x".into() });
    assert_eq!(
        parse_claim(&ks, &key, Some(200), &granted),
        Ok(Found::Claimed {
            token: Some("x".into())
        })
    );
    assert!(claim_waited(&granted));
    let rec = Record {
        fingerprint: [1; 32],
        created_ms: 1,
        expires_ms: 2,
        outcome: crate::record::Outcome::NotReplayable,
    };
    let stored = reply(ClaimResponse::Completed {
        record: rec.seal(&key, &b"s".repeat(32)),
    });
    assert_eq!(
        parse_claim(&ks, &key, Some(200), &stored),
        Ok(Found::Completed(rec))
    );
    assert_eq!(
        parse_ack(Some(409), &FencedResponse::Stale.to_compact()),
        Ok(AckReply::Stale)
    );
    let complete_body = complete(&ks, &key, "t1", &parse_record(), 60_000).body;
    let sent = CompleteRequest::from_compact(&complete_body).unwrap();
    assert_eq!(
        Record::open(&sent.record, &key, &ks.secrets),
        Ok(parse_record())
    );
}

fn parse_record() -> Record {
    Record {
        fingerprint: [2; 32],
        created_ms: 1,
        expires_ms: 2,
        outcome: crate::record::Outcome::NotReplayable,
    }
}

#[test]
fn parses_every_claim_outcome() {
    let rec = Record {
        fingerprint: [1; 32],
        created_ms: 1,
        expires_ms: 2,
        outcome: crate::record::Outcome::NotReplayable,
    };
    let key = RecordKey([3; 32]);
    let completed = |blob: Vec<u8>| {
        format!(
            r#"{{"outcome":"completed","record":"{}"}}"#,
            B64.encode(blob)
        )
    };
    let body = completed(rec.seal(&key, &b"s".repeat(32)));
    assert_eq!(
        parse_claim(&cfg(), &key, Some(200), body.as_bytes()),
        Ok(Found::Completed(rec.clone()))
    );
    // Unsealed, sealed for another key, or under an unknown secret: never a record.
    for blob in [
        rec.encode(),
        rec.seal(&RecordKey([4; 32]), &b"s".repeat(32)),
        rec.seal(&key, &b"x".repeat(32)),
    ] {
        assert_eq!(
            parse_claim(&cfg(), &key, Some(200), completed(blob).as_bytes()),
            Err(ClaimError::Unverified)
        );
    }
    let parse = |body: &[u8]| parse_claim(&cfg(), &key, Some(200), body);
    assert_eq!(
        parse(br#"{"outcome":"claimed","token":"x"}"#),
        Ok(Found::Claimed {
            token: Some("x".into())
        })
    );
    assert_eq!(
        parse(br#"{"outcome":"in_flight","retry_after_ms":5}"#),
        Ok(Found::InFlight { retry_after_ms: 5 })
    );
    assert_eq!(parse(br#"{"outcome":"mismatch"}"#), Ok(Found::Mismatch));
    assert_eq!(
        parse(br#"{"outcome":"abandoned","lease_ended_ms_ago":1500}"#),
        Ok(Found::Abandoned {
            lease_ended_ms_ago: 1500
        })
    );
    let looked_up = parse_lookup(
        &cfg(),
        &key,
        Some(200),
        br#"{"outcome":"abandoned","lease_ended_ms_ago":7}"#,
    );
    assert_eq!(
        looked_up,
        Ok(Found::Abandoned {
            lease_ended_ms_ago: 7
        })
    );
    // A lookup asks for the abandoned answer, so that the key store does not hide it.
    let l = lookup(&cfg(), &key, &[1; 32]);
    let v: serde_json::Value = serde_json::from_slice(&l.body).unwrap();
    assert_eq!(v["abandoned"], "report");
}

#[test]
fn renew_batches_carry_each_claim_and_read_each_answer() {
    use idempotency_protocol::Format;
    let claims = [
        (RecordKey([1; 32]), "T1".to_string()),
        (RecordKey([2; 32]), "T2".to_string()),
    ];
    let c = renew_batch(&cfg(), &claims, 600);
    assert!(c
        .headers
        .contains(&(":path".into(), "/v1/renew-batch".into())));
    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["renewals"][1]["key"], "02".repeat(32));
    assert_eq!(v["renewals"][1]["token"], "T2");
    assert_eq!(v["renewals"][0]["lease_ms"], 600);
    let ks = KeystoreConfig {
        body_format: Format::Compact,
        ..cfg()
    };
    let sent = RenewBatchRequest::from_compact(&renew_batch(&ks, &claims, 600).body).unwrap();
    assert_eq!(sent.renewals.len(), 2);
    assert_eq!(sent.renewals[0].token, "T1");
    let answer = RenewBatchResponse {
        outcomes: vec![RenewOutcome::Stale, RenewOutcome::Renewed],
    };
    for body in [
        answer.to_compact(),
        idempotency_protocol::json::encode(&answer),
    ] {
        assert_eq!(
            parse_renew_batch(Some(200), &body, 2),
            Ok(vec![AckReply::Stale, AckReply::Done])
        );
    }
    for (status, body, count) in [
        (Some(200), answer.to_compact(), 3),
        (
            Some(503),
            br#"{"error":"backend unavailable: x"}"#.to_vec(),
            2,
        ),
        (Some(404), Vec::new(), 2),
        (None, Vec::new(), 2),
        (Some(200), br#"{"outcome":"renewed"}"#.to_vec(), 1),
    ] {
        assert!(
            parse_renew_batch(status, &body, count).is_err(),
            "{status:?} {body:?}"
        );
    }
}

#[test]
fn garbage_replies_are_errors() {
    for (status, body) in [
        (Some(503), &b"upstream connect error"[..]),
        (Some(504), b""),
        (None, b""),
        (Some(200), b"not json"),
        (Some(200), br#"{"outcome":"claimed"}"#),
        (Some(200), br#"{"outcome":"claimed","token":""}"#),
        (Some(200), br#"{"outcome":"completed","record":"%%%"}"#),
        (Some(200), br#"{"outcome":"completed","record":"AAAA"}"#),
        (Some(200), br#"{"outcome":"weird"}"#),
    ] {
        assert!(
            parse_claim(&cfg(), &RecordKey([0; 32]), status, body).is_err(),
            "{status:?} {body:?}"
        );
    }
    assert_eq!(
        parse_ack(Some(409), br#"{"outcome":"stale"}"#),
        Ok(AckReply::Stale)
    );
    assert_eq!(
        parse_ack(Some(200), br#"{"outcome":"stored"}"#),
        Ok(AckReply::Done)
    );
    assert!(parse_ack(Some(500), b"").is_err());
    assert!(parse_ack(Some(200), b"{").is_err());
}
