//! The payments upstream (`payments-demo`) and its counters.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{spawn_listening, tempdir, workspace_bin, Proc, POLL};

/// `payments-demo` on a free port.
pub struct Upstream {
    pub port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_at(0).await
    }

    /// On a given port (0: a free one), e.g. one a gateway already points at.
    pub async fn start_at(port: u16) -> Upstream {
        let dir = tempdir();
        let mut cmd = Command::new(workspace_bin("payments-demo"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        let (proc, addr) =
            spawn_listening("payments-demo", cmd, dir.path().join("payments.log")).await;
        Upstream {
            port: addr.port(),
            proc,
            _dir: dir,
        }
    }

    /// `GET /_demo/stats`, straight from the upstream (not through Envoy).
    pub async fn stats(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/_demo/stats", self.port);
        reqwest::get(&url)
            .await
            .expect("upstream stats")
            .json()
            .await
            .expect("upstream stats JSON")
    }

    /// How many `POST /payments` requests reached the upstream.
    pub async fn post_requests(&self) -> u64 {
        self.stats().await["post_requests"]
            .as_u64()
            .expect("post_requests")
    }

    /// How many payments the upstream created.
    pub async fn payment_count(&self) -> u64 {
        self.stats().await["payments"].as_u64().expect("payments")
    }

    /// All payments created, straight from the upstream.
    pub async fn payments(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/payments", self.port);
        reqwest::get(&url)
            .await
            .expect("upstream list")
            .json()
            .await
            .expect("upstream list JSON")
    }

    /// Polls until the upstream has received `n` POSTs (e.g. a request is now in flight there).
    pub async fn wait_post_requests(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.post_requests().await;
            if seen >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "upstream saw {seen} POSTs, waited for {n}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}
