//! Batch amplification: renew-batch and batch bodies built to cost the server far more than the
//! client; and a batch whose entries are hostile one by one, which costs only those entries.

use std::time::{Duration, Instant};

use super::{exchange, hex64, start, TOKEN};

fn renew_batch(content_type: &str, body: &[u8], declare_length: bool) -> Vec<u8> {
    post("/v1/renew-batch", content_type, body, declare_length)
}

fn post(path: &str, content_type: &str, body: &[u8], declare_length: bool) -> Vec<u8> {
    let length = if declare_length {
        format!("content-length: {}\r\n", body.len())
    } else {
        "transfer-encoding: chunked\r\n".to_owned()
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: {content_type}\r\n{length}connection: close\r\n\r\n"
    )
    .into_bytes();
    if declare_length {
        request.extend_from_slice(body);
    } else {
        request.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
        request.extend_from_slice(b"\r\n0\r\n\r\n");
    }
    request
}

/// 4 MiB of `{}` entries is refused on its length (declared or not) in milliseconds; a body
/// within the bound with 300 empty entries is refused at the 257th, naming the bound; a compact
/// body declaring a million renewals is refused on the count. Forty of them in a row leave RSS
/// and `/readyz` as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_batch_amplification_is_refused_before_parsing() {
    let ks = start(&[]).await;
    let base = ks.rss_mib();
    let mut empties = b"{\"renewals\":[".to_vec();
    while empties.len() < 4 * 1024 * 1024 {
        empties.extend_from_slice(b"{},");
    }
    empties.extend_from_slice(b"{}]}");
    let mut slowest = Duration::ZERO;
    for round in 0..40 {
        let start = Instant::now();
        let request = renew_batch("application/json", &empties, round % 2 == 0);
        let (status, body) = exchange(ks.addr, &request, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("limit of 524288 bytes"), "{body}");
        slowest = slowest.max(start.elapsed());
    }
    let after = ks.rss_mib();
    let few: Vec<&str> = vec!["{}"; 300];
    let body = format!("{{\"renewals\":[{}]}}", few.join(","));
    let (status, answer) = exchange(
        ks.addr,
        &renew_batch("application/json", body.as_bytes(), true),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("renewals: must hold 1 to 256 renewals"),
        "{answer}"
    );
    // The compact marker, then a varint count of 1,000,000.
    let compact = [0x01, 0xc0, 0x84, 0x3d];
    let (status, answer) = exchange(
        ks.addr,
        &renew_batch("application/vnd.idempotency.v1+postcard", &compact, true),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("renewals: must hold 1 to 256 renewals"),
        "{answer}"
    );
    ks.assert_ready().await;
    eprintln!(
        "renew-batch amplification: 40 bodies of 4 MiB of {{}} refused, slowest in \
         {slowest:?}; RSS {base:.1} MiB before, {after:.1} MiB after"
    );
    assert!(after - base < 48.0, "{base} -> {after}");
}

/// `/v1/batch`: a body past `--max-body-bytes` (its bound, since a batch carries records) is
/// refused on its length; 3 MiB of empty entries within it are refused at the 257th, as are 300;
/// a compact body declaring a million entries on the count. Forty rounds leave RSS as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_amplification_is_refused_before_parsing() {
    let ks = start(&[]).await;
    let base = ks.rss_mib();
    let empties = |size: usize| {
        let mut body = b"{\"entries\":[".to_vec();
        while body.len() < size {
            body.extend_from_slice(b"{},");
        }
        body.extend_from_slice(b"{}]}");
        body
    };
    // Past the body bound: refused on the length; within it: read, and refused at entry 257.
    let (over, within) = (empties(8 * 1024 * 1024), empties(3 * 1024 * 1024));
    let mut slowest = Duration::ZERO;
    for round in 0..40 {
        let request = post("/v1/batch", "application/json", &over, round % 2 == 0);
        let (status, body) = exchange(ks.addr, &request, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(status, 413, "{body}");
        let start = Instant::now();
        let request = post("/v1/batch", "application/json", &within, true);
        let (status, body) = exchange(ks.addr, &request, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("entries: must hold 1 to 256 entries"),
            "{body}"
        );
        slowest = slowest.max(start.elapsed());
    }
    let after = ks.rss_mib();
    let few: Vec<&str> = vec!["{}"; 300];
    let body = format!("{{\"entries\":[{}]}}", few.join(","));
    let request = post("/v1/batch", "application/json", body.as_bytes(), true);
    let (status, answer) = exchange(ks.addr, &request, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("entries: must hold 1 to 256 entries"),
        "{answer}"
    );
    let compact = [0x01, 0xc0, 0x84, 0x3d];
    let request = post(
        "/v1/batch",
        "application/vnd.idempotency.v1+postcard",
        &compact,
        true,
    );
    let (status, answer) = exchange(ks.addr, &request, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("entries: must hold 1 to 256 entries"),
        "{answer}"
    );
    ks.assert_ready().await;
    eprintln!(
        "batch amplification: 40 bodies of 8 MiB refused (413) and 40 of 3 MiB of {{}} (400, \
         slowest {slowest:?}); RSS {base:.1} MiB before, {after:.1} MiB after"
    );
    assert!(after - base < 48.0, "{base} -> {after}");
}

/// Hostile entries among good ones (deep nesting, a wrong type, an unknown call, a huge token,
/// a string where an entry should be): each is its own 400 and the good entries are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_entries_are_their_own_errors() {
    let ks = start(&[]).await;
    let key = hex64(1);
    let good = format!(r#"{{"op":"lookup","key":"{key}","fingerprint":"{key}"}}"#);
    let deep = format!(
        r#"{{"op":"claim","key":{}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let entries = [
        good.clone(),
        deep,
        format!(r#"{{"op":"lookup","key":"{key}","fingerprint":7}}"#),
        r#"{"op":"purge"}"#.to_owned(),
        format!(
            r#"{{"op":"release","key":"{key}","token":"{}"}}"#,
            "t".repeat(100_000)
        ),
        r#""claim""#.to_owned(),
        good,
    ];
    let body = format!("{{\"entries\":[{}]}}", entries.join(","));
    let request = post("/v1/batch", "application/json", body.as_bytes(), true);
    let (status, answer) = exchange(ks.addr, &request, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let statuses: Vec<u64> = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 400, 400, 400, 400, 400, 200], "{answer}");
    assert_eq!(
        v["answers"][4]["body"]["error"],
        "token: must be 1 to 256 characters"
    );
    // Nesting past serde_json's depth limit is not an entry at all: the envelope fails.
    let deeper = format!(r#"{{"entries":[{}1{}]}}"#, "[".repeat(200), "]".repeat(200));
    let request = post("/v1/batch", "application/json", deeper.as_bytes(), true);
    let (status, answer) = exchange(ks.addr, &request, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    ks.assert_ready().await;
}
