//! A raw HTTP/1.1 upstream that records the exact request it receives (request line, header
//! fields in order with their raw bytes, the body de-framed, trailers, the framing) and answers
//! scripted bytes, part by part with pauses (an SSE stream). Like a real server, it answers
//! `100 Continue` to `Expect: 100-continue` before reading the body, keeps connections alive, and
//! serves pipelined requests in order. Everything runs in the test process on a loopback port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::{dechunk, find, parse_fields, Fields};

/// One request as the upstream read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// `POST /fid/x HTTP/1.1`.
    pub line: Vec<u8>,
    pub headers: Fields,
    pub body: Vec<u8>,
    pub trailers: Fields,
    /// False: the connection ended before the body did (e.g. Envoy reset the request after the
    /// head had gone upstream); recorded too, since the upstream saw that head.
    pub complete: bool,
}

/// What the upstream answers: the head (status line, fields, blank line) then body parts, each
/// sent after its pause. `close` closes the connection after the answer (a body delimited by EOF).
#[derive(Clone, Debug, Default)]
pub struct Script {
    pub head: Vec<u8>,
    pub parts: Vec<(Duration, Vec<u8>)>,
    pub close: bool,
}

/// Requests as they arrive: each is recorded as soon as its head is read (the upstream has seen
/// it, whatever follows) and completed when its body is.
type Seen = Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>;

/// The recording upstream: scripts by request path, the requests seen so far.
pub struct Recorder {
    pub port: u16,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Listens on a free loopback port; a path without a script gets `404`.
    pub async fn start(scripts: HashMap<String, Script>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let scripts = Arc::new(scripts);
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(serve(conn, scripts.clone(), seen.clone()));
                }
            })
        };
        Recorder { port, seen, task }
    }

    /// The requests recorded since the last call.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.seen.lock().expect("recorder lock"))
            .iter()
            .map(|r| r.lock().expect("record lock").clone())
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut conn: TcpStream, scripts: Arc<HashMap<String, Script>>, seen: Seen) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        };
        let head = buf[..head_end].to_vec();
        buf.drain(..head_end + 4);
        let line_end = find(&head, b"\r\n").unwrap_or(head.len());
        let line = head[..line_end].to_vec();
        let headers = parse_fields(head.get(line_end + 2..).unwrap_or_default());
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
        };
        let record = Arc::new(Mutex::new(Recorded {
            line: line.clone(),
            headers: headers.clone(),
            body: Vec::new(),
            trailers: Vec::new(),
            complete: false,
        }));
        seen.lock().expect("recorder lock").push(record.clone());
        if get("expect").as_deref() == Some("100-continue")
            && conn
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let (body, trailers) = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                if let Some((body, trailers, used)) = dechunk(&buf) {
                    buf.drain(..used);
                    break (body, trailers);
                }
                if !read_more(&mut conn, &mut buf).await {
                    return;
                }
            }
        } else {
            let length: usize = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < length {
                if !read_more(&mut conn, &mut buf).await {
                    return;
                }
            }
            (buf.drain(..length).collect(), Vec::new())
        };
        let path = String::from_utf8_lossy(&line)
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        {
            let mut record = record.lock().expect("record lock");
            record.body = body;
            record.trailers = trailers;
            record.complete = true;
        }
        let not_found = Script {
            head: b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
            ..Script::default()
        };
        let script = scripts.get(&path).unwrap_or(&not_found);
        if conn.write_all(&script.head).await.is_err() {
            return;
        }
        for (pause, part) in &script.parts {
            tokio::time::sleep(*pause).await;
            if conn.write_all(part).await.is_err() {
                return;
            }
        }
        if script.close {
            let _ = conn.shutdown().await;
            return;
        }
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match tokio::time::timeout(Duration::from_secs(30), conn.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}
