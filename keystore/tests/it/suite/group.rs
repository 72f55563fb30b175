//! Mixed calls in one batch (`/v1/batch`, the filter's group commit): each entry answered exactly
//! as its single call would be, in order, with its status; a malformed entry is its own 400 and
//! the others still run; a malformed envelope runs nothing; the entries run concurrently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::Backend;
use idempotency_protocol::compact::{CONTENT_TYPE, MARKER};
use idempotency_protocol::{
    BatchAnswer, BatchEntry, BatchRequest, BatchResponse, ClaimRequest, ClaimResponse, Compact,
    FencedResponse, Hex64, LookupRequest, LookupResponse, ReleaseRequest, MAX_BATCH_ENTRIES,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::open;
use crate::common::{b64, hex64, unb64, Keystore};

/// Posts a JSON batch of `entries`; the status and the answers.
async fn batch(ks: &Keystore, entries: Vec<Value>) -> (StatusCode, Value) {
    let (status, body) = ks.post("/v1/batch", json!({ "entries": entries })).await;
    (status, body["answers"].clone())
}

/// The body of the single call `path` answers to `body`, with its status.
async fn single(ks: &Keystore, path: &str, mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("op");
    let (status, body) = ks.post(path, body).await;
    json!({"status": status.as_u16(), "body": body})
}

pub async fn batch_answers_each_entry_as_its_single_call(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let (fp, other_fp) = (hex64(), hex64());
    let (new, held, done, to_complete, to_release) = (hex64(), hex64(), hex64(), hex64(), hex64());
    ks.claim_ok(&held, &fp, 30_000).await;
    let t_done = ks.claim_ok(&done, &fp, 30_000).await;
    let record: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    assert_eq!(
        ks.complete(&done, &t_done, &record, 60_000).await.0,
        StatusCode::OK
    );
    let t_complete = ks.claim_ok(&to_complete, &fp, 30_000).await;
    let t_release = ks.claim_ok(&to_release, &fp, 30_000).await;
    let too_large = vec![7u8; 3 * 1024 * 1024 + 1];
    let entries = vec![
        json!({"op": "claim", "key": new, "fingerprint": fp, "lease_ms": 30_000,
               "token": "proposed-by-the-caller"}),
        json!({"op": "claim", "key": held, "fingerprint": other_fp, "lease_ms": 30_000}),
        json!({"op": "complete", "key": to_complete, "token": t_complete,
               "record": b64(b"answer"), "retention_ms": 60_000}),
        json!({"op": "complete", "key": held, "token": "wrong", "record": b64(b"x"),
               "retention_ms": 60_000}),
        json!({"op": "release", "key": to_release, "token": t_release}),
        json!({"op": "release", "key": hex64(), "token": "nobody"}),
        json!({"op": "lookup", "key": done, "fingerprint": fp}),
        json!({"op": "lookup", "key": hex64(), "fingerprint": fp}),
        json!({"op": "claim", "key": "nothex", "fingerprint": fp, "lease_ms": 30_000}),
        json!({"op": "renew", "key": held, "token": "t", "lease_ms": 5}),
        json!({"op": "complete", "key": hex64(), "token": "t", "record": b64(&too_large),
               "retention_ms": 60_000}),
    ];
    let (status, answers) = batch(&ks, entries.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answers}");
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), entries.len());
    let summary: Vec<(String, u64, String)> = answers
        .iter()
        .map(|a| {
            let body = &a["body"];
            let what = body["outcome"].as_str().or(body["error"].as_str()).unwrap();
            (
                a["op"].as_str().unwrap().to_owned(),
                a["status"].as_u64().unwrap(),
                what.to_owned(),
            )
        })
        .collect();
    let expected = [
        ("claim", 200, "claimed"),
        ("claim", 200, "mismatch"),
        ("complete", 200, "stored"),
        ("complete", 409, "stale"),
        ("release", 200, "released"),
        ("release", 409, "stale"),
        ("lookup", 200, "completed"),
        ("lookup", 200, "absent"),
        ("error", 400, "key: must be 64 lowercase hex characters"),
        (
            "error",
            400,
            "op: must be \"claim\", \"complete\", \"release\" or \"lookup\"",
        ),
        (
            "error",
            413,
            "record: 3145729 bytes, over the key store's --max-record-bytes 3145728",
        ),
    ];
    let expected: Vec<(String, u64, String)> = expected
        .iter()
        .map(|(o, s, w)| (o.to_string(), *s, w.to_string()))
        .collect();
    assert_eq!(summary, expected);
    assert_eq!(answers[0]["body"]["token"], "proposed-by-the-caller");
    assert_eq!(unb64(&answers[6]["body"]["record"]), record);
    let (_, metrics) = ks.get("/metrics").await;
    for line in [
        "keystore_batches_total 1",
        "keystore_batch_entries_count 1",
        "keystore_batch_entries_sum 11",
        r#"keystore_batch_entries_bucket{le="8"} 0"#,
        r#"keystore_batch_entries_bucket{le="16"} 1"#,
        r#"keystore_requests_total{op="batch",outcome="answered"} 1"#,
        r#"keystore_requests_total{op="batch",outcome="bad_entry"} 2"#,
        r#"keystore_requests_total{op="complete",outcome="too_large"} 1"#,
        r#"keystore_requests_total{op="lookup",outcome="absent"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    // What the batch did is what the single calls do: the same answers to the same calls now.
    for i in [1, 3, 5, 6, 7, 8, 10] {
        let path = match entries[i]["op"].as_str().unwrap() {
            "claim" => "/v1/claim",
            "complete" => "/v1/complete",
            "release" => "/v1/release",
            _ => "/v1/lookup",
        };
        let mut answer = answers[i].clone();
        answer.as_object_mut().unwrap().remove("op");
        assert_eq!(
            single(&ks, path, entries[i].clone()).await,
            answer,
            "entry {i}"
        );
    }
    // And its changes took: the proposed token holds `new`, `to_complete` replays, `to_release`
    // is free.
    assert_eq!(
        ks.release(&new, "proposed-by-the-caller").await.0,
        StatusCode::OK
    );
    let (_, found) = ks.lookup(&to_complete, &fp, None).await;
    assert_eq!(unb64(&found["record"]), b"answer");
    ks.claim_ok(&to_release, &fp, 30_000).await;
}

fn key(s: &str) -> Hex64 {
    Hex64::parse(s).unwrap()
}

pub async fn batch_compact_and_a_malformed_envelope(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let fp = hex64();
    let (a, b) = (hex64(), hex64());
    let claim = |k: &str| {
        BatchEntry::Claim(ClaimRequest {
            key: key(k),
            fingerprint: key(&fp),
            lease_ms: 30_000,
            wait_ms: 0,
            token: Some(format!("tok-{}", &k[..8])),
            abandoned: None,
            retention_ms: None,
        })
    };
    let request = BatchRequest {
        entries: vec![
            claim(&a),
            BatchEntry::Lookup(LookupRequest {
                key: key(&b),
                fingerprint: key(&fp),
                abandoned: None,
            }),
            BatchEntry::Release(ReleaseRequest {
                key: key(&b),
                token: "nobody".into(),
            }),
        ],
    };
    // A fourth entry that is not a claim's layout: its own 400, the first three still run.
    let mut body = request.to_compact();
    body[1] = 4;
    body.extend([0, 3, MARKER, 1, 2]);
    let (status, content_type, bytes) = ks.post_raw("/v1/batch", CONTENT_TYPE, None, body).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, CONTENT_TYPE)
    );
    let answers = BatchResponse::from_compact(&bytes).unwrap().answers;
    assert_eq!(answers.len(), 4);
    assert!(matches!(
        &answers[0],
        BatchAnswer::Claim(c) if c.response == ClaimResponse::Claimed { token: format!("tok-{}", &a[..8]) }
    ));
    assert_eq!(answers[1], BatchAnswer::Lookup(LookupResponse::Absent));
    assert_eq!(answers[2], BatchAnswer::Release(FencedResponse::Stale));
    assert!(
        matches!(&answers[3], BatchAnswer::Error { status: 400, error } if error.starts_with("body: not a compact claim")),
        "{:?}",
        answers[3]
    );
    // A compact batch answered in JSON when `accept` says so.
    let (status, _, json_answer) = ks
        .post_raw(
            "/v1/batch",
            CONTENT_TYPE,
            Some("application/json"),
            request.to_compact(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&json_answer).unwrap();
    assert_eq!(v["answers"][0]["body"]["outcome"], "in_flight", "{v}");

    // Envelopes that fail the whole batch, and run none of its entries.
    let fresh = hex64();
    let one = json!({"op": "claim", "key": fresh, "fingerprint": fp, "lease_ms": 30_000});
    let many = vec![one.clone(); MAX_BATCH_ENTRIES + 1];
    for (body, error) in [
        (
            json!({ "entries": many }),
            "entries: must hold 1 to 256 entries",
        ),
        (
            json!({ "entries": [] }),
            "entries: must hold 1 to 256 entries",
        ),
        (json!({ "entry": [one] }), "entries: missing"),
        (
            json!({ "entries": one }),
            "entries: invalid type: map, expected a list of at most 256 entries",
        ),
    ] {
        assert_eq!(
            ks.post("/v1/batch", body).await,
            (StatusCode::BAD_REQUEST, json!({ "error": error }))
        );
    }
    let (status, _, bytes) = ks
        .post_raw("/v1/batch", CONTENT_TYPE, None, vec![MARKER, 0])
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(ks.lookup(&fresh, &fp, None).await.1["outcome"], "absent");
    let (_, metrics) = ks.get("/metrics").await;
    assert!(
        metrics.contains(r#"keystore_requests_total{op="batch",outcome="bad_request"} 5"#),
        "{metrics}"
    );
}

/// The entries run together, not one after another: a claim waiting on a key and the release of
/// that key in one batch end with the claim granted (in order, the claim would wait its 5 s out);
/// a full batch of claims on fresh keys is answered whole.
pub async fn batch_entries_run_concurrently(backend: Arc<dyn Backend>) {
    let ks = open(backend).await;
    let fp = hex64();
    let k = hex64();
    let token = ks.claim_ok(&k, &fp, 30_000).await;
    let started = Instant::now();
    let (status, answers) = batch(
        &ks,
        vec![
            json!({"op": "claim", "key": k, "fingerprint": fp, "lease_ms": 30_000,
                   "wait_ms": 5_000}),
            json!({"op": "release", "key": k, "token": token}),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answers}");
    assert_eq!(answers[0]["body"]["outcome"], "claimed", "{answers}");
    assert_eq!(answers[0]["body"]["waited"], true, "{answers}");
    assert_eq!(answers[1]["body"]["outcome"], "released", "{answers}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let keys: Vec<String> = (0..MAX_BATCH_ENTRIES).map(|_| hex64()).collect();
    let claims = keys
        .iter()
        .map(|k| json!({"op": "claim", "key": k, "fingerprint": fp, "lease_ms": 30_000}))
        .collect();
    let started = Instant::now();
    let (status, answers) = batch(&ks, claims).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{answers}");
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), MAX_BATCH_ENTRIES);
    assert!(
        answers.iter().all(|a| a["body"]["outcome"] == "claimed"),
        "{answers:?}"
    );
    for (k, a) in keys.iter().zip(answers).step_by(37) {
        let token = a["body"]["token"].as_str().unwrap();
        assert_eq!(ks.release(k, token).await.0, StatusCode::OK);
    }
    eprintln!("a batch of {MAX_BATCH_ENTRIES} claims answered in {took:?}");
}
