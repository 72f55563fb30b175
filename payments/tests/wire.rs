//! What a client sees on the wire from `payments_demo::serve`: work that outlives its caller,
//! the reset and body-cut knobs, keep-alive and a graceful stop. Raw TCP, so that a reset, a
//! close and a short body are told apart.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use payments_demo::{app_with_state, serve, Payments};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: std::net::SocketAddr,
    state: Arc<Payments>,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Payments::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, app_with_state(state.clone()), async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        state,
        stop: Some(stop),
        served,
    }
}

/// A `POST /payments` with extra header lines.
fn post(extra: &str) -> Vec<u8> {
    let body = r#"{"amount":100}"#;
    format!(
        "POST /payments HTTP/1.1\r\nhost: payments\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads until the peer closes or fails: the bytes read, and the error if it failed.
async fn read_all(stream: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Err(_) => panic!(
                "no close within 5 s; read {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) => return (got, None),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, Some(e)),
        }
    }
}

/// Splits a response into its head (up to the blank line) and what followed.
fn split(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4;
    (
        String::from_utf8_lossy(&bytes[..end]).into_owned(),
        &bytes[end..],
    )
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length")
}

async fn until_payments(state: &Payments, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while state.list().len() < n {
        assert!(Instant::now() < deadline, "{} payments", state.list().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_caller_that_leaves_during_the_delay_still_gets_its_payment() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&post("x-demo-delay-ms: 300\r\n"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.state.post_requests(), 1);
    assert!(server.state.list().is_empty(), "created before its delay");
    drop(stream);
    until_payments(&server.state, 1).await;
    assert_eq!(server.state.list()[0]["request"]["amount"], 100);
}

#[tokio::test]
async fn reset_after_work_creates_the_payment_and_answers_nothing() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&post("x-demo-reset: after-work\r\n"))
        .await
        .unwrap();
    let (got, err) = read_all(&mut stream).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(
        err.map(|e| e.kind()),
        Some(ErrorKind::ConnectionReset),
        "a reset, not a clean close"
    );
    // The payment existed before the reset.
    assert_eq!(server.state.list().len(), 1);
    assert_eq!(server.state.post_requests(), 1);
}

#[tokio::test]
async fn reset_after_a_delay_whose_caller_left_still_works() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&post(
            "x-demo-delay-ms: 200\r\nx-demo-reset: after-work\r\n",
        ))
        .await
        .unwrap();
    drop(stream);
    until_payments(&server.state, 1).await;
}

#[tokio::test]
async fn body_cut_sends_the_head_then_part_of_the_body() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&post("x-demo-body-cut: 10\r\n"))
        .await
        .unwrap();
    let (got, err) = read_all(&mut stream).await;
    // Closed (FIN) short of the Content-Length: an HTTP client reports an incomplete body.
    assert!(err.is_none(), "{err:?}");
    let (head, body) = split(&got);
    assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: /payments/pay_"),
        "{head}"
    );
    let full = content_length(&head);
    assert_eq!(body.len(), 10, "{:?}", String::from_utf8_lossy(body));
    assert!(full > 10, "{head}");
    assert!(
        body.starts_with(b"{\""),
        "{:?}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(server.state.list().len(), 1);

    // A cut past the end still keeps the last byte back; 0 sends the head alone.
    for (cut, expected) in [(100_000, full - 1), (0, 0)] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(&post(&format!("x-demo-body-cut: {cut}\r\n")))
            .await
            .unwrap();
        let (got, _) = read_all(&mut stream).await;
        let (head, body) = split(&got);
        assert!(head.starts_with("HTTP/1.1 201"), "{head}");
        // The ids differ in content, not in length, so every payment has the same size.
        assert_eq!(content_length(&head), full);
        assert_eq!(body.len(), expected, "cut {cut}");
    }
}

#[tokio::test]
async fn keep_alive_and_graceful_stop() {
    let mut server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Two requests on one connection, the second held by a delay while the server stops.
    stream.write_all(&post("")).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 201"));
    stream
        .write_all(&post("x-demo-delay-ms: 200\r\n"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop.take().unwrap().send(()).unwrap();
    let (got, err) = read_all(&mut stream).await;
    assert!(err.is_none(), "{err:?}");
    assert!(
        got.starts_with(b"HTTP/1.1 201"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    tokio::time::timeout(Duration::from_secs(5), server.served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(server.state.list().len(), 2);
    assert!(TcpStream::connect(server.addr).await.is_err());
}

/// What an HTTP client (hyper's) makes of the knobs: a reset fails the request itself; a cut body
/// gives a 201 whose body then fails.
#[tokio::test]
async fn an_http_client_sees_an_error_before_or_after_the_head() {
    let server = start().await;
    let send = |knob: (&'static str, &'static str)| async move {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post("/payments")
            .header("host", "payments")
            .header("content-type", "application/json")
            .header(knob.0, knob.1)
            .body(http_body_util::Full::new(hyper::body::Bytes::from("{}")))
            .unwrap();
        sender.send_request(req).await
    };
    let reset = send(("x-demo-reset", "after-work")).await;
    assert!(reset.is_err(), "{reset:?}");
    let cut = send(("x-demo-body-cut", "5")).await.unwrap();
    assert_eq!(cut.status(), 201);
    let body = cut.into_body().collect().await;
    assert!(body.is_err(), "{body:?}");
    assert_eq!(server.state.list().len(), 2);
}
