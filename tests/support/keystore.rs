//! The key store (`idempotency-keystore`) as a process: [`Keystore`] for a test that only needs
//! one running, [`KeystoreProcess`] for one that SIGKILLs it and starts it again on the same port
//! (the Envoys' `keystore` cluster points at it), on the memory or a Redis backend.

use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{crash, spawn_listening, tempdir, workspace_bin, Proc, POLL, START_TIMEOUT};

/// `idempotency-keystore` (memory backend) on a free port.
pub struct Keystore {
    pub port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Keystore {
    /// The memory backend on a free port.
    pub async fn start() -> Keystore {
        Keystore::start_backend("memory", &[]).await
    }

    /// On a free port with `--backend backend` and `args` after it (`--redis-url`, `--token`).
    pub async fn start_backend(backend: &str, args: &[&str]) -> Keystore {
        let mut all = vec!["--listen", "127.0.0.1:0", "--backend", backend];
        all.extend_from_slice(args);
        Keystore::start_with(&all).await
    }

    /// The key store with these arguments, which must include `--listen` (e.g. a fixed port for
    /// a restart, `--backend redis`, `--token`).
    pub async fn start_with(args: &[&str]) -> Keystore {
        let dir = tempdir();
        let mut cmd = Command::new(workspace_bin("idempotency-keystore"));
        cmd.args(args);
        let (proc, addr) =
            spawn_listening("idempotency-keystore", cmd, dir.path().join("keystore.log")).await;
        Keystore {
            port: addr.port(),
            proc,
            _dir: dir,
        }
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.proc.log_path()).unwrap_or_default())
            .into_owned()
    }

    /// Polls `GET /readyz` until it answers 200 (the backend answers), for up to 20 s.
    pub async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = reqwest::get(&url).await {
                if resp.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the key store on port {} is not ready after 20 s",
                self.port
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

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

    /// The sum of the samples on the lines of its Prometheus metrics (`GET /metrics`) that
    /// `keep` keeps.
    pub async fn metric_sum(&self, keep: impl Fn(&str) -> bool) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| keep(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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
