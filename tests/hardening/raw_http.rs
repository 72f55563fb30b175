//! A raw HTTP/1.1 client, for requests no well-behaved client library would send.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::find;

/// A response read by [`raw_http`].
#[derive(Clone, Debug)]
pub struct RawResp {
    pub status: u16,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    pub fn is_problem(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| v.starts_with("application/problem+json"))
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// Sends `request` (raw bytes) on a new connection and reads one response (content-length,
/// chunked, or to EOF; none for `HEAD`). A write error (Envoy may answer and close before the request is all
/// written) is not fatal: the answer is still read. `Err` if no response arrives.
pub async fn raw_http(port: u16, request: &[u8]) -> Result<RawResp, String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let write = conn.write_all(request).await;
    let head_request = request.starts_with(b"HEAD ");
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(resp) = parse_response(&buf, false, head_request) {
            return Ok(resp);
        }
        let mut chunk = [0u8; 16384];
        let read = tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => {
                return parse_response(&buf, true, head_request).ok_or_else(|| {
                    format!(
                        "connection closed without a complete response (write: {write:?}): {:?}",
                        String::from_utf8_lossy(&buf)
                    )
                })
            }
            Err(_) => return Err("no response within 15 s".to_owned()),
        }
    }
}

fn parse_response(buf: &[u8], eof: bool, head_request: bool) -> Option<RawResp> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    let rest = &buf[head_end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if head_request {
        Vec::new()
    } else if let Some(length) = get("content-length") {
        let length: usize = length.parse().ok()?;
        rest.get(..length)?.to_vec()
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if eof || status == 204 || status == 304 {
        rest.to_vec()
    } else {
        return None;
    };
    Some(RawResp {
        status,
        headers,
        body,
    })
}

/// A complete chunked body, or `None` if more bytes are needed.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            find(rest, b"\r\n")?;
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
