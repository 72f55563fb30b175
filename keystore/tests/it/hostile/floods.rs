//! Connections that stall: headers a byte at a time, huge unfinished headers, bodies that stop
//! short, answers never read, and more connections than the cap.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};

use super::{alone, closed_within, exchange, hex64, read_answer, start, TOKEN};

/// 300 connections sending headers a byte every 50 ms, and 50 holding 200 KB of an unfinished
/// header: every one is closed (or answered 431) within the header timeout and a tick, RSS stays
/// low, and `/readyz` answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_at_the_header_timeout() {
    let _alone = alone().await;
    let ks = start(&["--header-timeout-ms", "400"]).await;
    let base = ks.rss_mib();
    let mut dribblers = Vec::new();
    for _ in 0..300 {
        let addr = ks.addr;
        dribblers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"POST /v1/claim HTTP/1.1\r\nhost: k\r\nx-slow: ")
                .await
                .unwrap();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if s.write_all(b"a").await.is_err() {
                    return Some(start.elapsed());
                }
                if closed_within(&mut s, Duration::from_millis(50))
                    .await
                    .is_some()
                {
                    return Some(start.elapsed());
                }
            }
            None
        }));
    }
    let mut hoarders = Vec::new();
    for _ in 0..50 {
        let addr = ks.addr;
        hoarders.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut head = b"POST /v1/claim HTTP/1.1\r\nhost: k\r\nx-big: ".to_vec();
            head.resize(200_000, b'a');
            // The server may close before taking it all.
            let _ = s.write_all(&head).await;
            closed_within(&mut s, Duration::from_secs(5)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = ks.rss_mib();
    ks.assert_ready().await;
    let mut slowest = Duration::ZERO;
    for d in dribblers.into_iter().chain(hoarders) {
        let took = d
            .await
            .unwrap()
            .expect("a stalled connection was held past 5 s");
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    let header_timeouts = ks.metric("keystore_timeouts_total{kind=\"header\"}").await;
    assert!(header_timeouts >= 300.0, "{header_timeouts}");
    ks.assert_ready().await;
    eprintln!(
        "slowloris: RSS {base:.1} MiB before, {during:.1} MiB under 350 stalled headers; \
         all closed within {slowest:?}"
    );
    assert!(during - base < 64.0, "{base} -> {during}");
}

fn complete_head(len: usize) -> String {
    format!(
        "POST /v1/complete HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
}

/// 40 authenticated connections stall 1 MiB into a 4 MB body: the 16 that fit in
/// `--max-body-memory` 64 MiB get 408 at the body timeout, the others 503 at once; an
/// unauthenticated one gets 401 before its body is read; a small call's body past its own bound
/// gets 413 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_get_408_at_the_body_timeout() {
    let _alone = alone().await;
    let ks = start(&[
        "--body-timeout-ms",
        "500",
        "--max-body-memory",
        &(64 << 20).to_string(),
    ])
    .await;
    let base = ks.rss_mib();
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let addr = ks.addr;
        stalled.push(tokio::spawn(async move {
            let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
            let start = Instant::now();
            // The answer is read while the body is written: the key store may answer (503 at
            // once, or 408 at its body timeout when writing 1 MiB takes long on a loaded
            // machine) and close while the client still writes, so a failed write is the
            // server's choice, and its answer is what counts. The write half is handed back
            // and kept until the answer is in: dropping it would end the body early (FIN).
            let writer = tokio::spawn(async move {
                let head = complete_head(4_000_000);
                if wr.write_all(head.as_bytes()).await.is_ok() {
                    let _ = wr.write_all(&vec![b'a'; 1 << 20]).await;
                }
                wr
            });
            let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut rd))
                .await
                .expect("no answer to a stalled body within 5 s");
            let took = start.elapsed();
            drop(writer.await);
            (answer, took)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = ks.rss_mib();
    ks.assert_ready().await;
    let mut slowest = Duration::ZERO;
    let (mut timed_out, mut refused) = (0, 0);
    for s in stalled {
        let (answer, took) = s.await.unwrap();
        let (status, body) = answer.unwrap();
        match status {
            408 => {
                assert!(body.contains("--body-timeout-ms 500"), "{body}");
                timed_out += 1;
            }
            503 => {
                assert!(body.contains("--max-body-memory"), "{body}");
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
        slowest = slowest.max(took);
    }
    assert_eq!((timed_out, refused), (16, 24));
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    // Without the token, the body is never read.
    let unauthenticated =
        "POST /v1/complete HTTP/1.1\r\nhost: k\r\ncontent-length: 4000000\r\n\r\n";
    let (status, _) = exchange(ks.addr, unauthenticated.as_bytes(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(status, 401);
    // A claim's body is small: 100 KB is refused on its declared length.
    let head = format!(
        "POST /v1/claim HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: 100000\r\n\r\n"
    );
    let (status, body) = exchange(ks.addr, head.as_bytes(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(status, 413, "{body}");
    ks.assert_ready().await;
    eprintln!(
        "stalled bodies: RSS {base:.1} MiB before, {during:.1} MiB with 40 bodies stalled at \
         1 MiB; 16 answered 408, 24 503, all within {slowest:?}"
    );
    assert!(during - base < 64.0, "{base} -> {during}");
}

/// 32 clients that ask twice for a 3 MiB record and read nothing (192 MiB of answers if each were
/// held): the answers that fit in `--max-body-memory` (10 MiB) are held until the write timeout
/// cuts their connections, the others are refused with 503 at once; RSS grows by well under half
/// of what holding them all would take (about 45 MiB measured: the held answers, their encoding
/// and the allocator's slack), and every connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_cut_at_the_write_timeout() {
    let _alone = alone().await;
    let ks = start(&[
        "--write-timeout-ms",
        "500",
        "--idle-timeout-ms",
        "1000",
        "--max-body-memory",
        &(10 << 20).to_string(),
    ])
    .await;
    let (key, fp) = (hex64(1), hex64(2));
    let claim = format!(r#"{{"key":"{key}","fingerprint":"{fp}","lease_ms":60000}}"#);
    let post = |path: &str, body: &str| {
        format!(
            "POST /v1/{path} HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (status, body) = exchange(
        ks.addr,
        post("claim", &claim).as_bytes(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let record = "A".repeat(4 * 1024 * 1024);
    let complete = format!(
        r#"{{"key":"{key}","token":"{}","record":"{record}","retention_ms":60000}}"#,
        token["token"].as_str().unwrap()
    );
    let (status, body) = exchange(
        ks.addr,
        post("complete", &complete).as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let base = ks.rss_mib();
    const DEAF_CLIENTS: usize = 32;
    let mut deaf = Vec::new();
    // Each answer is the 3 MiB record, raw in the compact format.
    let asks = post("claim", &claim)
        .replacen(
            "content-type: application/json\r\n",
            "content-type: application/json\r\naccept: application/vnd.idempotency.v1+postcard\r\n",
            1,
        )
        .repeat(2);
    for _ in 0..DEAF_CLIENTS {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(ks.addr).await.unwrap();
        s.write_all(asks.as_bytes()).await.unwrap();
        deaf.push(s);
    }
    let cut = ks
        .metric_reaches(
            "keystore_timeouts_total{kind=\"write\"}",
            3.0,
            Duration::from_secs(20),
        )
        .await;
    let refused = ks
        .metric("keystore_requests_total{op=\"claim\",outcome=\"body_memory_full\"}")
        .await;
    assert!(refused >= 4.0, "{refused} answers refused");
    let peak = ks.rss_mib();
    // The rest end at the write or the idle timeout.
    let start = Instant::now();
    loop {
        let open = ks.metric("keystore_connections_open").await;
        if open <= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{open} connections still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ks.assert_ready().await;
    eprintln!(
        "non-reading clients: RSS {base:.1} MiB before, {peak:.1} MiB when {cut} write \
         timeouts had fired; {refused} answers refused"
    );
    assert!(peak - base < 96.0, "{base} -> {peak}");
    drop(deaf);
}

/// Past `--max-connections` a connection gets a 503 naming the cap; the health listener still
/// answers `/readyz`; closing some frees room on the data port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_cap_is_refused_and_readyz_answers() {
    let _alone = alone().await;
    let ks = start(&["--max-connections", "100", "--health-listen", "127.0.0.1:0"]).await;
    let base = ks.rss_mib();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(ks.addr).await.unwrap());
    }
    ks.metric_reaches(
        "keystore_connections_open{listener=\"data\"}",
        100.0,
        Duration::from_secs(2),
    )
    .await;
    for _ in 0..50 {
        let mut s = TcpStream::connect(ks.addr).await.unwrap();
        let (status, body) = tokio::time::timeout(Duration::from_secs(1), read_answer(&mut s))
            .await
            .expect("a refused connection is answered at once")
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("--max-connections 100"), "{body}");
    }
    ks.assert_ready().await;
    let refused = ks
        .metric("keystore_connections_refused_total{listener=\"data\",reason=\"max_connections\"}")
        .await;
    assert_eq!(refused, 50.0);
    let during = ks.rss_mib();
    held.truncate(10);
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = exchange(
            ks.addr,
            b"GET /readyz HTTP/1.1\r\nhost: k\r\n\r\n",
            Duration::from_secs(1),
        )
        .await
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "data port still full"
        );
    }
    eprintln!("connection flood: RSS {base:.1} MiB before, {during:.1} MiB at the cap");
    assert!(during - base < 32.0, "{base} -> {during}");
}
