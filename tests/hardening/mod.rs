//! Helpers shared by the hardening tests (`e2e_faults`, `e2e_hostile`, `e2e_isolation`):
//! stand-ins for misbehaving peers that the real processes cannot imitate (a key store that
//! stalls, errs, talks garbage or cuts its answer; an upstream that resets), a raw HTTP/1.1
//! client for requests no well-behaved client library would send, and the health checks every
//! fault run ends with (Envoy alive, `/ready` LIVE, no panic or critical line in its log).

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::Envoy;

// ---------------------------------------------------------------------------------------------
// Health of an Envoy after a fault
// ---------------------------------------------------------------------------------------------

/// Asserts Envoy survived: the process runs, admin `/ready` answers `LIVE`, and its log holds no
/// panic and no critical line (the filter's panic hook logs at critical level).
pub async fn assert_envoy_healthy(envoy: &mut Envoy, what: &str) {
    assert!(envoy.process_alive(), "{what}: Envoy exited");
    let ready = envoy.admin_ready().await;
    assert_eq!(
        ready,
        Ok((200, "LIVE".to_owned())),
        "{what}: Envoy /ready is not LIVE"
    );
    assert_clean_log(envoy, what);
}

/// Asserts Envoy's log has no `panicked` and no `[critical]` line.
pub fn assert_clean_log(envoy: &Envoy, what: &str) {
    let log = envoy.full_log();
    for line in log.lines() {
        assert!(
            !line.contains("panicked") && !line.contains("[critical]"),
            "{what}: Envoy logged a panic or a critical line: {line}"
        );
    }
}

/// The filter's metric, 0 when Envoy has not created it yet.
pub async fn metric(envoy: &Envoy, name: &str) -> u64 {
    envoy.metric(name).await.unwrap_or(0)
}

/// The filter's metrics of interest (one admin call), for before/after comparisons.
pub async fn metrics(envoy: &Envoy) -> HashMap<&'static str, u64> {
    let stats = envoy.stats().await;
    let mut out = HashMap::new();
    for name in [
        "executed",
        "replayed",
        "conflict",
        "mismatch",
        "missing_key",
        "invalid_key",
        "too_large",
        "store_error",
        "fail_open",
        "released",
        "not_covered",
        "not_replayable",
        "unauthenticated",
        "unknown_outcome",
        "unknown_outcome_answered",
        "renewal_refused",
        "unverified_record",
    ] {
        let suffix = format!("idempotency.{name}");
        let value = stats
            .iter()
            .find(|(stat, _)| **stat == suffix || stat.ends_with(&format!(".{suffix}")))
            .map_or(0, |(_, value)| *value);
        out.insert(name, value);
    }
    out
}

/// The metrics that changed between `before` and `after`, as `name+N` (sorted by name).
pub fn counted(
    before: &HashMap<&'static str, u64>,
    after: &HashMap<&'static str, u64>,
) -> Vec<String> {
    let mut names: Vec<&&str> = after.keys().collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let delta = after[*name].saturating_sub(*before.get(*name).unwrap_or(&0));
            (delta > 0).then(|| format!("{name}+{delta}"))
        })
        .collect()
}

/// The delta of one metric.
pub fn delta(
    before: &HashMap<&'static str, u64>,
    after: &HashMap<&'static str, u64>,
    name: &str,
) -> u64 {
    after
        .get(name)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(name).copied().unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// A stand-in key store that misbehaves on demand
// ---------------------------------------------------------------------------------------------

/// How the fake key store answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Speaks the v1 protocol: every claim is granted (a fresh token), complete and release succeed.
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `needle` occurs in `haystack` (bytes).
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    find(haystack, needle.as_bytes()).is_some()
}

// ---------------------------------------------------------------------------------------------
// A stand-in upstream that resets every connection
// ---------------------------------------------------------------------------------------------

/// A raw TCP server on a picked port that reads the start of each request, then resets the
/// connection (SO_LINGER 0): an upstream that dies mid-request. Counts the requests it saw.
pub struct ResettingUpstream {
    pub port: u16,
    seen: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResettingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResettingUpstream {
    pub async fn start() -> ResettingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(AtomicU64::new(0));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        if matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        // A zero linger never blocks: close sends RST at once.
                        #[allow(deprecated)]
                        let _ = conn.set_linger(Some(Duration::ZERO));
                        drop(conn);
                    });
                }
            })
        };
        ResettingUpstream { port, seen, task }
    }

    /// How many requests reached it.
    pub fn requests(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

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
