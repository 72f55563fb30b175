//! A `redis-server` (Debian's package, from `scripts/setup.sh`) on a port picked by the test, with
//! its own data directory, append-only persistence fsync'd on every write, and SIGKILL / restart on
//! the same port and directory. Stopped (SIGTERM, then SIGKILL) when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{crash, tempdir, Proc, START_TIMEOUT};

/// Panics with a clear message when `redis-server` cannot be run.
pub fn require_redis_server() {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        ok,
        "redis-server is not installed or does not run: the Redis-backed end-to-end tests need \
         Debian's redis-server (scripts/setup.sh installs it: apt-get install -y redis-server)"
    );
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot pick a free port: {e}"))
}

/// One inline Redis command over a fresh connection; the raw reply, if any.
pub fn redis_command(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(buf.get(..n)?).into_owned())
}

/// A Redis node that can be crashed and started again on the same port and data.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
    starts: u32,
}

impl RedisServer {
    /// Starts a node with `--appendonly yes --appendfsync always` (completed records survive a
    /// SIGKILL) and waits until it answers PING.
    pub async fn start() -> RedisServer {
        require_redis_server();
        let mut server = RedisServer {
            port: free_port(),
            dir: tempdir(),
            proc: None,
            starts: 0,
        };
        server.restart().await;
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The data directory (append-only file, logs).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// SIGKILL (a crash: only what is already fsync'd survives), then waits until the port
    /// refuses connections.
    pub async fn kill(&mut self) {
        crash(self.proc.take(), self.port).await;
    }

    /// (Re)starts the node on the same port and data directory and waits for `+PONG` (a node
    /// still loading its append-only file answers `-LOADING`).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let mut proc = Proc {
            name: "redis-server".into(),
            child,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if redis_command(self.port, "PING").is_some_and(|reply| reply.starts_with("+PONG")) {
                break;
            }
            if let Some(status) = proc.exit_status() {
                panic!(
                    "redis-server exited ({status}) on port {}; log:\n{}",
                    self.port,
                    proc.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {START_TIMEOUT:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.proc = Some(proc);
    }
}
