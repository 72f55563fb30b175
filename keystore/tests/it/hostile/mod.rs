//! Hostile clients against the real binary (memory backend, loopback): slowloris headers, stalled
//! bodies, clients that never read, a connection flood past the cap, batch amplification, and
//! SIGTERM with stalled clients. Each test ends with a clear answer to the attacker (a status or
//! a closed connection within a bound), the process's RSS (`/proc/PID/status`) within a bound,
//! and `/readyz` answering. Timeouts are set low by flags so that each runs in seconds; the
//! figures they print (`--nocapture`) are those of docs/hardening.md.

mod batch;
mod floods;
mod memory_bound;
mod shutdown;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub const TOKEN: &str = "tok";

/// One hostile test at a time: each floods a key store and bounds its RSS and its answers' time,
/// which other floods running beside it on a small machine would distort (a test's own
/// `/metrics` read waited past its bound behind another test's 5,000 connections).
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

/// The key store binary, running on a free loopback port.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub health: Option<SocketAddr>,
    pub pid: u32,
}

/// Starts the binary with the memory backend, the token [`TOKEN`], and `args`.
pub async fn start(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idempotency-keystore"))
        .args(["--listen", "127.0.0.1:0", "--backend", "memory"])
        .args(args)
        .env("KEYSTORE_TOKEN", TOKEN)
        .env(
            "RUST_LOG",
            std::env::var("KS_LOG").unwrap_or("error".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut health = None;
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the key store starts within 10 s")
            .unwrap()
            .expect("the key store printed its address (did it refuse a flag?)");
        if let Some(a) = line.strip_prefix("health on ") {
            health = Some(a.parse().unwrap());
        } else if let Some(a) = line.strip_prefix("listening on ") {
            break a.parse().unwrap();
        }
    };
    Proc {
        child,
        addr,
        health,
        pid,
    }
}

impl Proc {
    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb / 1024.0
    }

    /// `/readyz` answers 200 (on the health listener when there is one).
    pub async fn assert_ready(&self) {
        let at = self.health.unwrap_or(self.addr);
        let (status, body) = get(at, "/readyz").await;
        assert_eq!(status, 200, "/readyz: {body}");
    }

    /// A metric's value (the sum of its series whose line starts with `series`).
    pub async fn metric(&self, series: &str) -> f64 {
        let at = self.health.unwrap_or(self.addr);
        let (_, text) = get(at, "/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (at most `within`) until `series` reaches `at_least`.
    pub async fn metric_reaches(&self, series: &str, at_least: f64, within: Duration) -> f64 {
        let start = Instant::now();
        loop {
            let v = self.metric(series).await;
            if v >= at_least {
                return v;
            }
            assert!(
                start.elapsed() < within,
                "{series} = {v}, not {at_least} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A GET on a fresh connection, bounded to 15 s (a debug key store on a busy CI machine may be
/// slow to answer while a test makes it build large answers): (status, body).
pub async fn get(at: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n");
    exchange(at, request.as_bytes(), Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Sends `request` on a fresh connection and reads the answer until its end. The request is
/// written while the answer is read: a server that answers before reading a whole body (a 413)
/// is read, not raced by a failed write.
pub async fn exchange(
    at: SocketAddr,
    request: &[u8],
    within: Duration,
) -> Result<(u16, String), String> {
    use tokio::io::AsyncWriteExt as _;
    let request = request.to_vec();
    let work = async {
        let s = TcpStream::connect(at).await.map_err(|e| e.to_string())?;
        let (mut reader, mut writer) = s.into_split();
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&request).await;
            writer
        });
        let answer = read_answer(&mut reader).await;
        writing.abort();
        answer
    };
    tokio::time::timeout(within, work)
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
}

/// Reads an HTTP/1.1 answer to its end (the server closes, or `content-length` is reached).
pub async fn read_answer(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<(u16, String), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(done) = complete_answer(&buf) {
            buf.truncate(done);
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}

/// The length of a whole answer in `buf`, once its head and `content-length` bytes are in.
fn complete_answer(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(buf.get(..head_end)?).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// Waits until the server closes `s` (EOF or reset), reading and dropping what it sends; the
/// time it took, or `None` if it is still open after `within`.
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 8192];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A 64-hex key.
pub fn hex64(seed: u8) -> String {
    format!("{seed:02x}").repeat(32)
}
