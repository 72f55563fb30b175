//! SIGTERM while clients stall: one mid-headers (HTTP/1.1), one mid-body (HTTP/1.1), one HTTP/2
//! stream mid-body, one that never reads, and a claim waiting on a held key. The process exits
//! within `--shutdown-timeout-ms` whatever they do, and the waiter gets its answer.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::{alone, exchange, hex64, start, TOKEN};

fn post(path: &str, body: &str) -> String {
    format!(
        "POST /v1/{path} HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stalled_clients_exits_within_the_shutdown_timeout() {
    let _alone = alone().await;
    let mut ks = start(&["--shutdown-timeout-ms", "1500"]).await;
    let (key, fp) = (hex64(3), hex64(4));
    let claim = format!(r#"{{"key":"{key}","fingerprint":"{fp}","lease_ms":60000}}"#);
    let (status, body) = exchange(
        ks.addr,
        post("claim", &claim).as_bytes(),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let waiting =
        format!(r#"{{"key":"{key}","fingerprint":"{fp}","lease_ms":60000,"wait_ms":60000}}"#);
    let waiter = {
        let (addr, request) = (ks.addr, post("claim", &waiting));
        tokio::spawn(
            async move { exchange(addr, request.as_bytes(), Duration::from_secs(10)).await },
        )
    };
    let mut mid_headers = TcpStream::connect(ks.addr).await.unwrap();
    mid_headers
        .write_all(b"POST /v1/claim HTTP/1.1\r\nhost: k\r\nx-slow: a")
        .await
        .unwrap();
    let mut mid_body = TcpStream::connect(ks.addr).await.unwrap();
    let head = format!(
        "POST /v1/renew HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: 1000\r\n\r\n{{\"key\":"
    );
    mid_body.write_all(head.as_bytes()).await.unwrap();
    // An HTTP/2 stream whose body never ends.
    let tcp = TcpStream::connect(ks.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/v1/renew", ks.addr))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let (h2_answer, mut stream) = h2.send_request(request, false).unwrap();
    stream
        .send_data(bytes::Bytes::from_static(b"{\"key\":"), false)
        .unwrap();
    // Let every stalled request reach the server.
    super::super::common::eventually(Duration::from_secs(2), "the waiter is held", || async {
        (ks.metric("keystore_waiters ").await >= 1.0).then_some(())
    })
    .await;
    let signalled = Instant::now();
    let pid = ks.pid.to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(Duration::from_secs(5), ks.child.wait())
        .await
        .expect("the key store still runs 5 s after SIGTERM")
        .unwrap();
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let (status, body) = waiter.await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("in_flight"), "{body}");
    // The stalled ones got an answer or a closed connection, not silence.
    assert!(
        super::closed_within(&mut mid_headers, Duration::from_millis(100))
            .await
            .is_some()
    );
    assert!(
        super::closed_within(&mut mid_body, Duration::from_millis(100))
            .await
            .is_some()
    );
    if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_millis(100), h2_answer).await {
        assert_eq!(answer.status(), 503);
    }
    eprintln!("SIGTERM with 4 stalled clients and a waiter: exited in {took:?}");
}
