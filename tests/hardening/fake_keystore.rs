//! A stand-in key store that misbehaves on demand: slow, erring, garbled or cut answers, or a
//! `complete` that fails; it records what it received.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::find;

/// How the fake key store answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Speaks the v1 protocol of a key store from before group commit: every claim is granted (a
    /// fresh token), complete and release succeed, `/v1/batch` is `404`.
    Healthy = 0,
    /// Waits 3 s before answering (past the filter's callout timeout).
    Slow = 1,
    /// `500` with a JSON error body.
    Error500 = 2,
    /// `200` with a body that is not JSON.
    Garbage = 3,
    /// Starts a `200` answer (headers and part of the body), then closes the connection.
    Cut = 4,
    /// Claims succeed; `complete` answers `500`.
    CompleteFails = 5,
}

/// One request the fake key store received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lowercased names.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// An HTTP/1.1 server on a picked port that plays the key store, in a [`Mode`] the test switches
/// at will, recording every request. The real key store cannot be made to stall, err, answer
/// garbage or cut its answers, so these faults need a stand-in.
pub struct FakeKeystore {
    pub port: u16,
    mode: Arc<AtomicU8>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKeystore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKeystore {
    pub async fn start() -> FakeKeystore {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(Mode::Healthy as u8));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::new(AtomicU64::new(0));
        let task = {
            let (mode, recorded) = (mode.clone(), recorded.clone());
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let (mode, recorded, tokens) = (mode.clone(), recorded.clone(), tokens.clone());
                    tokio::spawn(serve_fake(conn, mode, recorded, tokens));
                }
            })
        };
        FakeKeystore {
            port,
            mode,
            recorded,
            task,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Every request received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn mode_of(value: u8) -> Mode {
    match value {
        1 => Mode::Slow,
        2 => Mode::Error500,
        3 => Mode::Garbage,
        4 => Mode::Cut,
        5 => Mode::CompleteFails,
        _ => Mode::Healthy,
    }
}

fn http_answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve_fake(
    mut conn: TcpStream,
    mode: Arc<AtomicU8>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    tokens: Arc<AtomicU64>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut conn, &mut buf).await else {
            return;
        };
        let path = request.path.clone();
        recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
        let mode = mode_of(mode.load(Ordering::SeqCst));
        let healthy = || {
            if path.ends_with("/claim") {
                let token = tokens.fetch_add(1, Ordering::SeqCst);
                http_answer(
                    "200 OK",
                    &format!(r#"{{"outcome":"claimed","token":"fake-{token}"}}"#),
                )
            } else if path.ends_with("/complete") {
                http_answer("200 OK", r#"{"outcome":"stored"}"#)
            } else if path.ends_with("/batch") {
                // A key store from before group commit: no such endpoint.
                http_answer("404 Not Found", r#"{"error":"not found"}"#)
            } else {
                http_answer("200 OK", r#"{"outcome":"released"}"#)
            }
        };
        let answer = match mode {
            Mode::Healthy => healthy(),
            Mode::CompleteFails if path.ends_with("/complete") => {
                http_answer("500 Internal Server Error", r#"{"error":"injected"}"#)
            }
            Mode::CompleteFails => healthy(),
            Mode::Slow => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                healthy()
            }
            Mode::Error500 => http_answer("500 Internal Server Error", r#"{"error":"injected"}"#),
            Mode::Garbage => http_answer("200 OK", "<html>this is not the key store</html>"),
            Mode::Cut => {
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 120\r\n\r\n{\"outcome\":\"cla",
                    )
                    .await;
                let _ = conn.flush().await;
                let _ = conn.shutdown().await;
                return;
            }
        };
        if conn.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 request (headers, then a `content-length` body) from `conn`; `buf` keeps
/// bytes of the next request. `None` at EOF or on an error.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Recorded> {
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
    };
    let head = String::from_utf8_lossy(buf.get(..head_end)?).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((
                name.trim().to_ascii_lowercase(),
                value.trim().as_bytes().to_vec(),
            ))
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
    }
    let body = buf.get(body_start..body_start + length)?.to_vec();
    buf.drain(..body_start + length);
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}
