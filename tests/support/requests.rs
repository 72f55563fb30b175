//! Clients and requests: HTTP/1.1, h2c and h2c with trailers, `POST /payments` as a caller with
//! a key, and a response read to the end.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::envoy::Envoy;

/// A response read to the end: status, headers, body bytes.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// A header as text (`None` if absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether `Idempotent-Replayed: true` is present.
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// An HTTP/1.1 client (no connection reuse between tests; each test makes its own).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// An HTTP/1.1 client that gives up after `timeout`, as a client library with a timeout does.
pub fn impatient(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// A payment from a client that gives up after `timeout` while the upstream works `delay_ms` on it
/// (and, like a real server, finishes the work anyway); asserts that the client gave up.
pub async fn abandon_payment(
    envoy: &Envoy,
    caller: &str,
    key: &str,
    body: &str,
    delay_ms: u64,
    timeout: Duration,
) {
    let gone = post_payment(&impatient(timeout), envoy, caller, Some(key), body)
        .header("x-demo-delay-ms", delay_ms.to_string())
        .send()
        .await;
    assert!(gone.is_err(), "the client should have timed out: {gone:?}");
}
/// An h2c client (HTTP/2 with prior knowledge, no TLS).
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest h2c client")
}

/// Sends a request and reads the whole response.
pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    let resp = req.send().await.expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("response body");
    Resp {
        status,
        headers,
        body,
    }
}

/// A fresh idempotency key.
pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `POST /payments` with a JSON body, the caller in `authorization` and (if given) the key.
pub fn post_payment(
    client: &reqwest::Client,
    envoy: &Envoy,
    caller: &str,
    key: Option<&str>,
    body: &str,
) -> reqwest::RequestBuilder {
    let mut req = client
        .post(envoy.url("/payments"))
        .header("content-type", "application/json")
        .header("authorization", caller)
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req
}

/// `POST /payments` as [`post_payment`] builds it, sent and read to the end.
pub async fn send_payment(
    client: &reqwest::Client,
    envoy: &Envoy,
    caller: &str,
    key: Option<&str>,
    body: &str,
) -> Resp {
    send(post_payment(client, envoy, caller, key, body)).await
}

/// Request trailers as an HTTP/2 header map (names and values as the test wrote them).
pub fn trailer_map(trailers: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in trailers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("trailer name"),
            HeaderValue::from_str(value).expect("trailer value"),
        );
    }
    map
}

/// An h2c request with a body split in two DATA frames and request trailers, read to the end.
pub async fn h2c_with_trailers(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    trailers: &[(&str, &str)],
) -> Resp {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(()).expect("request");
    let mut client = client.ready().await.expect("h2 ready");
    let (response, mut stream) = client.send_request(request, false).expect("send request");
    let (first, second) = body.split_at(body.len() / 2);
    stream
        .send_data(Bytes::copy_from_slice(first), false)
        .expect("send data");
    stream
        .send_data(Bytes::copy_from_slice(second), false)
        .expect("send data");
    stream
        .send_trailers(trailer_map(trailers))
        .expect("send trailers");

    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("h2 response timed out")
        .expect("h2 response");
    let (parts, mut recv) = response.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: Bytes::from(body),
    }
}
