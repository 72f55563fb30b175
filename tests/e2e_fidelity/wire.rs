//! The client side, in raw bytes: an HTTP/1.1 connection that writes exactly the bytes a row
//! gives and reads answers (interim `1xx`, the head's fields in order with their raw bytes, the
//! body de-framed, trailers, when each body byte arrived), and an h2c client that keeps the same.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header or trailer fields in the order they came, names and values as raw bytes.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One answer as the client got it.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// Interim statuses (`100`) before the final one.
    pub interim: Vec<u16>,
    pub status: u16,
    pub headers: Fields,
    pub body: Vec<u8>,
    pub trailers: Fields,
    /// `length`, `chunked`, `close` or `none` (HTTP/1.1); `h2` for HTTP/2.
    pub framing: &'static str,
    /// After each read: the time since the request was written and the body bytes received so far.
    pub arrivals: Vec<(Duration, usize)>,
}

impl Answer {
    /// When the body first held at least `len` bytes.
    pub fn arrival_of(&self, len: usize) -> Option<Duration> {
        self.arrivals
            .iter()
            .find(|(_, seen)| *seen >= len)
            .map(|(at, _)| *at)
    }
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `name: value` lines (CRLF separated) into fields; names lowercased, values trimmed.
pub fn parse_fields(block: &[u8]) -> Fields {
    block
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            Some((
                line[..colon].to_ascii_lowercase(),
                line[colon + 1..].trim_ascii().to_vec(),
            ))
        })
        .collect()
}

/// A complete chunked body at the start of `buf`: the body, the trailers and the bytes used;
/// `None` while more bytes are needed.
pub fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, Fields, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&buf[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            let end = at + find(&buf[at..], b"\r\n")?;
            if end == at {
                return Some((body, Vec::new(), end + 2));
            }
            let end = at + find(&buf[at..], b"\r\n\r\n")?;
            return Some((body, parse_fields(&buf[at..end]), end + 4));
        }
        body.extend_from_slice(buf.get(at..at + size)?);
        at += size + 2;
        if buf.len() < at {
            return None;
        }
    }
}

/// An HTTP/1.1 connection to a gateway, with what has been read and not yet used.
pub struct H1 {
    conn: TcpStream,
    buf: Vec<u8>,
    sent_at: Instant,
}

impl H1 {
    pub async fn connect(port: u16) -> H1 {
        let conn = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the gateway");
        H1 {
            conn,
            buf: Vec::new(),
            sent_at: Instant::now(),
        }
    }

    /// Writes bytes as they are; the arrival clock starts here.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.sent_at = Instant::now();
        self.conn.write_all(bytes).await.expect("write the request");
    }

    /// Waits up to `patience` for an interim `1xx` head; true if one came (it stays buffered).
    pub async fn interim_within(&mut self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if self.buf.starts_with(b"HTTP/1.1 1") && find(&self.buf, b"\r\n\r\n").is_some() {
                return true;
            }
            if !self.fill(Some(deadline)).await {
                return false;
            }
        }
    }

    /// Reads until the bytes received so far contain `needle`; returns them (they stay buffered).
    pub async fn read_until(&mut self, needle: &[u8]) -> Vec<u8> {
        while find(&self.buf, needle).is_none() {
            assert!(self.fill(None).await, "connection ended before {needle:?}");
        }
        self.buf.clone()
    }

    /// Reads one answer (after any interim ones); `head_only`: the request was `HEAD`.
    pub async fn answer(&mut self, head_only: bool) -> Answer {
        let mut answer = Answer::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let head_end = loop {
                if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                    break end;
                }
                assert!(
                    self.fill(Some(deadline)).await,
                    "no complete head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            };
            let head: Vec<u8> = self.buf.drain(..head_end + 4).collect();
            let line_end = find(&head, b"\r\n").unwrap_or(head_end);
            let status: u16 = String::from_utf8_lossy(&head[..line_end])
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status code");
            if (100..200).contains(&status) {
                answer.interim.push(status);
                continue;
            }
            answer.status = status;
            answer.headers = parse_fields(&head[line_end..head_end]);
            break;
        }
        let get = |name: &[u8]| {
            answer
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let start = self.sent_at;
        if head_only || answer.status == 204 || answer.status == 304 {
            answer.framing = "none";
        } else if let Some(length) = get(b"content-length") {
            answer.framing = "length";
            let length: usize = String::from_utf8_lossy(&length).parse().expect("length");
            answer
                .arrivals
                .push((start.elapsed(), self.buf.len().min(length)));
            while self.buf.len() < length {
                assert!(self.fill(Some(deadline)).await, "body cut short");
                answer
                    .arrivals
                    .push((start.elapsed(), self.buf.len().min(length)));
            }
            answer.body = self.buf.drain(..length).collect();
        } else if get(b"transfer-encoding").is_some() {
            answer.framing = "chunked";
            loop {
                let so_far = dechunk_prefix(&self.buf);
                answer.arrivals.push((start.elapsed(), so_far));
                if let Some((body, trailers, used)) = dechunk(&self.buf) {
                    self.buf.drain(..used);
                    answer.body = body;
                    answer.trailers = trailers;
                    break;
                }
                assert!(self.fill(Some(deadline)).await, "chunked body cut short");
            }
        } else {
            answer.framing = "close";
            while self.fill(Some(deadline)).await {
                answer.arrivals.push((start.elapsed(), self.buf.len()));
            }
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }

    async fn fill(&mut self, deadline: Option<tokio::time::Instant>) -> bool {
        let mut chunk = [0u8; 16384];
        let deadline =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(20));
        match tokio::time::timeout_at(deadline, self.conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }
}

/// How many body bytes the complete chunks at the start of `buf` hold.
fn dechunk_prefix(buf: &[u8]) -> usize {
    let (mut at, mut total) = (0, 0);
    while let Some(line) = find(&buf[at..], b"\r\n") {
        let text = String::from_utf8_lossy(&buf[at..at + line]).into_owned();
        let Ok(size) = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 || buf.len() < at + line + 2 + size {
            break;
        }
        total += size;
        at += line + 2 + size + 2;
        if buf.len() < at {
            break;
        }
    }
    total
}

/// An h2c request (prior knowledge): headers, the body in one DATA frame (if any), trailers (if
/// any); the answer with its headers in the order the client library keeps them.
pub async fn h2_exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    trailers: &[(&str, &str)],
) -> Answer {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://fidelity.test{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, HeaderValue::from_bytes(value).expect("value"));
    }
    let request = builder.body(()).expect("request");
    let mut client = client.ready().await.expect("h2 ready");
    let no_body = body.is_empty() && trailers.is_empty();
    let sent_at = Instant::now();
    let (response, mut stream) = client.send_request(request, no_body).expect("send");
    if !no_body {
        stream
            .send_data(Bytes::copy_from_slice(body), trailers.is_empty())
            .expect("send data");
    }
    if !trailers.is_empty() {
        stream
            .send_trailers(crate::support::trailer_map(trailers))
            .expect("send trailers");
    }
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("h2 answer in time")
        .expect("h2 answer");
    let (parts, mut recv) = response.into_parts();
    let mut answer = Answer {
        status: parts.status.as_u16(),
        headers: fields_of(&parts.headers),
        framing: "h2",
        ..Answer::default()
    };
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = recv.flow_control().release_capacity(chunk.len());
        answer.body.extend_from_slice(&chunk);
        answer.arrivals.push((sent_at.elapsed(), answer.body.len()));
    }
    if let Ok(Some(trailers)) = recv.trailers().await {
        answer.trailers = fields_of(&trailers);
    }
    answer
}

fn fields_of(map: &HeaderMap) -> Fields {
    map.iter()
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}
