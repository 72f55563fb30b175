//! A running Envoy: started from [`EnvoyOptions`], ready when admin `/ready` says LIVE, with its
//! listener and admin ports read back, its log, its stats and the filter's metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::envoy_config::{envoy_bin, EnvoyOptions};
use super::process::{repo_root, tail_of, tempdir, Proc, POLL, START_TIMEOUT};
use super::upstream::Upstream;

/// Why Envoy did not become ready.
#[derive(Debug)]
pub struct StartError {
    /// The exit status, if Envoy exited (else it was still not ready at the deadline).
    pub exit: Option<ExitStatus>,
    /// Envoy's whole log (file log plus stdout/stderr).
    pub log: String,
}

/// A running, ready Envoy.
pub struct Envoy {
    /// The listener port.
    pub port: u16,
    /// The admin port.
    pub admin_port: u16,
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; panics (with the log tail) if it does not.
    pub async fn start(options: &EnvoyOptions) -> Envoy {
        match Envoy::try_start(options, START_TIMEOUT).await {
            Ok(envoy) => envoy,
            Err(err) => panic!(
                "Envoy did not become ready (exit: {:?}); log tail:\n{}",
                err.exit,
                tail_of(&err.log, 60)
            ),
        }
    }

    /// Starts Envoy and waits up to `timeout` for admin `/ready` to say LIVE.
    pub async fn try_start(options: &EnvoyOptions, timeout: Duration) -> Result<Envoy, StartError> {
        let dir = tempdir();
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, options.render()).expect("write envoy.yaml");
        let admin_file = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let out = std::fs::File::create(dir.path().join("envoy.out")).expect("envoy.out");
        let err = out.try_clone().expect("clone file");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--use-dynamic-base-id", "-l", "info"])
            .args(["--concurrency", &options.workers.to_string()])
            // No hot restart: no /dev/shm segment is left behind per test Envoy.
            .arg("--disable-hot-restart")
            .args(["--file-flush-interval-msec", "100"])
            .args(&options.extra_args)
            .arg("--log-path")
            .arg(&log)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy ({}): {e}", envoy_bin().display()));
        let mut envoy = Envoy {
            port: 0,
            admin_port: 0,
            proc: Proc {
                name: "envoy".into(),
                child,
                log,
            },
            dir,
        };

        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = envoy.proc.exit_status() {
                return Err(StartError {
                    exit: Some(status),
                    log: envoy.full_log(),
                });
            }
            if envoy.admin_port == 0 {
                if let Ok(text) = std::fs::read_to_string(&admin_file) {
                    if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                        envoy.admin_port = addr.port();
                    }
                }
            }
            if envoy.admin_port != 0 {
                let ready = http.get(envoy.admin_url("/ready")).send().await;
                if let Ok(resp) = ready {
                    if resp.status() == 200
                        && resp.text().await.unwrap_or_default().trim() == "LIVE"
                    {
                        break;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError {
                    exit: None,
                    log: envoy.full_log(),
                });
            }
            tokio::time::sleep(POLL).await;
        }

        let listeners: Value = http
            .get(envoy.admin_url("/listeners?format=json"))
            .send()
            .await
            .expect("admin /listeners")
            .json()
            .await
            .expect("admin /listeners JSON");
        envoy.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no listener port in {listeners}"));
        Ok(envoy)
    }

    /// `http://127.0.0.1:<listener port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `http://127.0.0.1:<admin port><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Envoy's log file plus whatever it wrote on stdout/stderr.
    pub fn full_log(&self) -> String {
        let mut text =
            String::from_utf8_lossy(&std::fs::read(self.proc.log_path()).unwrap_or_default())
                .into_owned();
        let out = std::fs::read(self.dir.path().join("envoy.out")).unwrap_or_default();
        text.push_str(&String::from_utf8_lossy(&out));
        text
    }

    /// Whether `text` shows up in [`Envoy::full_log`] within `within`: Envoy flushes its log file
    /// every 100 ms, so a line written just now may not be there yet.
    pub async fn wait_for_log(&self, text: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.full_log().contains(text) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last `lines` lines of [`Envoy::full_log`].
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.full_log(), lines)
    }

    /// Stats whose name contains `idempotency`, as name → value (gauges and counters).
    pub async fn stats(&self) -> HashMap<String, u64> {
        self.stats_matching("idempotency").await
    }

    /// Admin `/stats` lines whose name matches the regex `filter`, as numbers.
    pub async fn stats_matching(&self, filter: &str) -> HashMap<String, u64> {
        let text = reqwest::get(self.admin_url(&format!("/stats?filter={filter}")))
            .await
            .expect("admin /stats")
            .text()
            .await
            .expect("admin /stats text");
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.trim().to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// The filter's metric `idempotency.<name>` (Envoy shows custom Wasm metrics with a prefix
    /// such as `wasmcustom.`, so this matches on the suffix); `None` if the metric does not exist.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let suffix = format!("idempotency.{name}");
        self.stats()
            .await
            .into_iter()
            .find(|(stat, _)| stat == &suffix || stat.ends_with(&format!(".{suffix}")))
            .map(|(_, value)| value)
    }

    /// Like [`Envoy::metric`], but panics (listing the stats) if the metric is missing.
    pub async fn counter(&self, name: &str) -> u64 {
        match self.metric(name).await {
            Some(value) => value,
            None => panic!(
                "metric idempotency.{name} not found; stats: {:?}",
                self.stats().await
            ),
        }
    }

    /// The Envoy process id (or its wrapper's).
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// SIGKILL (a crash: no drain, no callbacks), reaped.
    pub fn sigkill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// SIGTERM (Envoy's own shutdown: listeners close, the process exits), then waits up to
    /// `timeout` for the exit; `None` if it is still running then.
    pub async fn sigterm(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(pid) = i32::try_from(self.pid()) {
            // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        self.proc.wait_exit(timeout).await
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

/// Payments upstream + one Envoy with the filter configured by `plugin` (no key store).
pub async fn gateway(plugin: &str) -> (Upstream, Envoy) {
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&EnvoyOptions::with_filter(upstream.port, plugin)).await;
    (upstream, envoy)
}
