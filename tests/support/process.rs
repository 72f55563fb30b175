//! Processes under test: where their binaries are, a guard that stops each one when dropped (and
//! prints its log tail if the test panics), and spawning a server that prints `listening on ADDR`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to come up (the machine may be busy compiling).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Interval between readiness polls.
pub const POLL: Duration = Duration::from_millis(25);

/// The repository root (the root package's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory: derived from this test binary (`<target>/debug/deps/<test>`), which
/// follows `CARGO_TARGET_DIR` whatever it was; else `$CARGO_TARGET_DIR`; else `<repo>/target`.
pub fn target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            if exe.parent().and_then(Path::file_name) == Some("deps".as_ref()) {
                return target.to_path_buf();
            }
        }
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// A workspace binary in `<target>/debug`, or a panic that says to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make build` (cargo build -p payments-demo -p idempotency-keystore)",
        path.display()
    );
    path
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when the guard drops. If the thread
/// is panicking, the tail of its log file is printed then.
pub struct Proc {
    pub(super) name: String,
    pub(super) child: Child,
    pub(super) log: PathBuf,
}

/// SIGKILLs and reaps `proc` if there is one (a crash: no graceful shutdown), then waits until
/// `port` refuses connections, so that a restart on the same port cannot race the dying process.
pub async fn crash(proc: Option<Proc>, port: u16) {
    if let Some(mut proc) = proc {
        let _ = proc.child.kill();
        let _ = proc.child.wait();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "port {port} still accepts connections 10 s after SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Proc {
    /// Whether the process has exited, and how.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (polling) up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The process's log file (stderr, or Envoy's `--log-path`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    fn stop(&mut self) {
        if self.exit_status().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.exit_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Stop first: Envoy flushes its log file on exit.
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log tail ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                self.log_tail(60),
                self.name
            );
        }
    }
}

/// The last `lines` lines of a file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    tail_of(&String::from_utf8_lossy(&text), lines)
}

/// The last `lines` lines of `text`.
pub fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stdout keeps being drained afterwards so the process never blocks on a full pipe.
pub async fn spawn_listening(name: &str, mut cmd: Command, log: PathBuf) -> (Proc, SocketAddr) {
    let stderr = std::fs::File::create(&log).expect("create log file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut proc = Proc {
        name: name.to_owned(),
        child,
        log,
    };

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match tokio::time::timeout(POLL, rx.recv()).await {
            Ok(Some(line)) => {
                if let Some(addr) = line.trim().strip_prefix("listening on ") {
                    let addr: SocketAddr = addr
                        .parse()
                        .unwrap_or_else(|e| panic!("{name}: bad listening line {line:?}: {e}"));
                    // Keep draining stdout in the background.
                    tokio::spawn(async move { while rx.recv().await.is_some() {} });
                    return (proc, addr);
                }
            }
            Ok(None) | Err(_) => {
                if let Some(status) = proc.exit_status() {
                    panic!(
                        "{name} exited ({status}) before listening; log:\n{}",
                        proc.log_tail(40)
                    );
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not print `listening on` within {START_TIMEOUT:?}"
        );
    }
}

/// A port on which nothing listens (bound then released), for "key store unreachable" tests.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A temporary directory for one process's files.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("idem-e2e-")
        .tempdir()
        .expect("temp dir")
}
