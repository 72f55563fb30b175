//! Batch amplification: renew-batch bodies built to cost the server far more than the client.

use std::time::{Duration, Instant};

use super::{exchange, start, TOKEN};

fn renew_batch(content_type: &str, body: &[u8], declare_length: bool) -> Vec<u8> {
    let length = if declare_length {
        format!("content-length: {}\r\n", body.len())
    } else {
        "transfer-encoding: chunked\r\n".to_owned()
    };
    let mut request = format!(
        "POST /v1/renew-batch HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOKEN}\r\n\
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
