//! Processes a test crashes on purpose: a key store (memory or Redis backend) that can be
//! SIGKILLed and started again on the same port (the Envoys' `keystore` cluster points at it), and
//! SIGKILL / liveness / readiness helpers for [`Envoy`].

use std::process::Command;
use std::time::{Duration, Instant};

use super::{crash, spawn_listening, tempdir, workspace_bin, Envoy, Proc, START_TIMEOUT};

/// Which backend a [`KeystoreProcess`] runs.
#[derive(Clone, Debug)]
pub enum StoreBackend {
    Memory,
    /// A single Redis node at this URL.
    Redis(String),
}

/// `idempotency-keystore` as a process of its own, optionally with a bearer token.
pub struct KeystoreProcess {
    /// Picked by the first start, kept by restarts.
    pub port: u16,
    backend: StoreBackend,
    token: Option<String>,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    starts: u32,
}

impl KeystoreProcess {
    /// Starts on a free port and waits for `listening on` and `/readyz`.
    pub async fn start(backend: StoreBackend, token: Option<&str>) -> KeystoreProcess {
        let mut keystore = KeystoreProcess {
            port: 0,
            backend,
            token: token.map(str::to_owned),
            proc: None,
            dir: tempdir(),
            starts: 0,
        };
        keystore.spawn().await;
        keystore
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Whether the process runs.
    pub fn running(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|proc| proc.exit_status().is_none())
    }

    /// SIGKILL (no graceful shutdown), reaped; then waits until the port refuses connections.
    pub async fn kill(&mut self) {
        crash(self.proc.take(), self.port).await;
    }

    /// Kills the process if it runs, then starts a new one on the SAME port with the same
    /// backend and token, and waits for `/readyz`.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Polls `GET /readyz` until 200 (the backend answers), bounded by `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let status = http
                .get(self.url("/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|resp| resp.status().as_u16());
            if status.as_ref().is_ok_and(|s| *s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "key store /readyz not 200 within {timeout:?} (last: {status:?})"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(workspace_bin("idempotency-keystore"));
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        match &self.backend {
            StoreBackend::Memory => {
                cmd.args(["--backend", "memory"]);
            }
            StoreBackend::Redis(url) => {
                cmd.args(["--backend", "redis", "--redis-url", url]);
            }
        }
        if let Some(token) = &self.token {
            cmd.args(["--token", token]);
        }
        let log = self
            .dir
            .path()
            .join(format!("keystore-{}.log", self.starts));
        let (proc, addr) = spawn_listening("idempotency-keystore", cmd, log).await;
        if self.port != 0 {
            assert_eq!(
                addr.port(),
                self.port,
                "the key store came back on another port"
            );
        }
        self.port = addr.port();
        self.proc = Some(proc);
        self.wait_ready(START_TIMEOUT).await;
    }
}

impl Envoy {
    /// SIGKILL (a crash: no drain, no callbacks), reaped.
    /// The Envoy process id (or its wrapper's).
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn sigkill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// Whether the Envoy process is still running.
    pub fn process_alive(&mut self) -> bool {
        self.proc.exit_status().is_none()
    }

    /// Admin `GET /ready`: the status and the trimmed body (`LIVE` when ready), or the error.
    pub async fn admin_ready(&self) -> Result<(u16, String), String> {
        let resp = reqwest::Client::new()
            .get(self.admin_url("/ready"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, body.trim().to_owned()))
    }
}
