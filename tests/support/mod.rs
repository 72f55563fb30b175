//! End-to-end harness: starts the payments upstream, the key store and Envoy (with or without the
//! idempotency filter) on free ports, and offers HTTP/1.1, h2c and h2c-with-trailers clients plus
//! helpers to read the upstream's counters and Envoy's stats.
//!
//! Every process is owned by a guard that stops it on drop. When a test panics, the guards print
//! the tail of the process logs (Envoy's log, the key store's stderr) to help with the diagnosis.
//!
//! Envoy: `$ENVOY_BIN`, else `.venv/bin/envoy` (from `make setup`), else `envoy` on `PATH`.
//! The filter: `<target>/wasm32-wasip1/release/idempotency_filter.wasm` (from `make build`).
//! The upstream and key store: `<target>/debug/payments-demo` and `<target>/debug/idempotency-keystore`.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// Crashable key store processes and Envoy SIGKILL helpers.
pub mod killable;
/// Two gateways sharing one key store.
pub mod mesh;
/// A persistent `redis-server` that can be crashed and restarted on its port.
pub mod redis;
/// A TCP link with latency, to make the key store slow.
pub mod slow_link;

/// How long a process may take to come up (the machine may be busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Interval between readiness polls.
const POLL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------------------------

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

/// The Envoy binary, or a panic that says how to get one.
pub fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.exists(), "ENVOY_BIN={} does not exist", bin.display());
        return bin;
    }
    let venv = repo_root().join(".venv/bin/envoy");
    if venv.exists() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("Envoy not found: set ENVOY_BIN, run `make setup` (installs .venv/bin/envoy), or put envoy on PATH");
}

/// The filter's Wasm module (release build), or a panic that says to build it.
pub fn wasm_path() -> PathBuf {
    let path = target_dir().join("wasm32-wasip1/release/idempotency_filter.wasm");
    assert!(
        path.exists(),
        "{} is missing: run `make build` (cargo build --release --target wasm32-wasip1)",
        path.display()
    );
    path
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

// ---------------------------------------------------------------------------------------------
// Process guards
// ---------------------------------------------------------------------------------------------

/// A child process that is stopped (SIGTERM, then SIGKILL) when the guard drops. If the thread
/// is panicking, the tail of its log file is printed then.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
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
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Spawns `cmd` (stderr to `log`) and waits for the `listening on ADDR` line on its stdout.
/// Stdout keeps being drained afterwards so the process never blocks on a full pipe.
async fn spawn_listening(name: &str, mut cmd: Command, log: PathBuf) -> (Proc, SocketAddr) {
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

// ---------------------------------------------------------------------------------------------
// The payments upstream and the key store
// ---------------------------------------------------------------------------------------------

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

/// `idempotency-keystore` (memory backend) on a free port.
pub struct Keystore {
    pub port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Keystore {
    /// The memory backend on a free port.
    pub async fn start() -> Keystore {
        Keystore::start_with(&["--listen", "127.0.0.1:0", "--backend", "memory"]).await
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

/// A port on which nothing listens (bound then released), for "key store unreachable" tests.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("idem-e2e-")
        .tempdir()
        .expect("temp dir")
}

// ---------------------------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------------------------

/// What an Envoy under test looks like.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Port of the payments upstream (cluster `payments`).
    pub upstream_port: u16,
    /// Port of the key store (cluster `keystore`), if any.
    pub keystore_port: Option<u16>,
    /// The filter's JSON configuration; `None` runs Envoy without the filter.
    pub plugin: Option<String>,
    /// The route's timeout; `None`: 20 s.
    pub route_timeout: Option<Duration>,
    /// Extra Envoy command-line arguments (e.g. `--component-log-level wasm:debug`).
    pub extra_args: Vec<String>,
    /// The Wasm filter's `allow_on_headers_stop_iteration`; false is what Istio's WasmPlugin gives.
    pub allow_on_headers_stop_iteration: bool,
    /// Enable the filter only on this route (method, exact path), as the shipped configs do; `None`:
    /// the filter sees every request.
    pub only_route: Option<(String, String)>,
    /// The Wasm VM's environment (`vm_config.environment_variables.key_values`), where the filter
    /// reads secrets named `{"env": ...}`.
    pub vm_env: Vec<(String, String)>,
    /// A whole bootstrap to run instead of the rendered one (e.g. a shipped config with its ports
    /// made free); admin and listener ports are read back as for the rendered one.
    pub bootstrap: Option<String>,
}

impl EnvoyOptions {
    /// Envoy with the filter, configured by `plugin` (JSON), in front of `upstream_port`.
    pub fn with_filter(upstream_port: u16, plugin: impl Into<String>) -> EnvoyOptions {
        EnvoyOptions {
            upstream_port,
            keystore_port: None,
            plugin: Some(plugin.into()),
            route_timeout: None,
            extra_args: Vec::new(),
            allow_on_headers_stop_iteration: true,
            only_route: None,
            vm_env: Vec::new(),
            bootstrap: None,
        }
    }

    /// Sets a variable of the Wasm VM's environment.
    pub fn vm_env(mut self, name: &str, value: &str) -> EnvoyOptions {
        self.vm_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Runs the filter as Istio's WasmPlugin does: without `allow_on_headers_stop_iteration`.
    pub fn without_headers_stop_iteration(mut self) -> EnvoyOptions {
        self.allow_on_headers_stop_iteration = false;
        self
    }

    /// Disables the filter except on `method path`, enabled per route (the shipped configs' wrapper).
    pub fn only_route(mut self, method: &str, path: &str) -> EnvoyOptions {
        self.only_route = Some((method.to_string(), path.to_string()));
        self
    }

    /// Sets the route's timeout (Envoy answers 504 past it).
    pub fn route_timeout(mut self, timeout: Duration) -> EnvoyOptions {
        self.route_timeout = Some(timeout);
        self
    }

    /// Adds an Envoy command-line argument.
    pub fn envoy_arg(mut self, arg: impl Into<String>) -> EnvoyOptions {
        self.extra_args.push(arg.into());
        self
    }

    /// Adds the `keystore` cluster pointing at `port`.
    pub fn keystore(mut self, port: u16) -> EnvoyOptions {
        self.keystore_port = Some(port);
        self
    }

    /// The bootstrap YAML: listener and admin on port 0 (read back from the admin API), codec
    /// AUTO (HTTP/1.1 and h2c), the Wasm filter (if any) then the router.
    pub fn render(&self) -> String {
        if let Some(bootstrap) = &self.bootstrap {
            return bootstrap.clone();
        }
        let mut filters = String::new();
        if let Some(plugin) = &self.plugin {
            let wasm = wasm_path();
            let env = if self.vm_env.is_empty() {
                String::new()
            } else {
                let pairs: Vec<String> = self
                    .vm_env
                    .iter()
                    .map(|(k, v)| format!("{}: {}", json_quote(k), json_quote(v)))
                    .collect();
                format!(
                    "\n                  environment_variables:\n                    key_values: {{ {} }}",
                    pairs.join(", ")
                )
            };
            write!(
                filters,
                r#"
          - name: envoy.filters.http.wasm
            disabled: {disabled}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: idempotency
                root_id: idempotency
                failure_policy: FAIL_CLOSED
                allow_on_headers_stop_iteration: {allow}
                vm_config:
                  vm_id: idempotency
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {wasm}{env}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {plugin}"#,
                // JSON string literals are valid YAML double-quoted scalars.
                wasm = json_quote(&wasm.display().to_string()),
                plugin = json_quote(plugin),
                allow = self.allow_on_headers_stop_iteration,
                disabled = self.only_route.is_some(),
            )
            .expect("write to String");
        }
        let route_timeout = format!(
            "{:.3}s",
            self.route_timeout
                .unwrap_or(Duration::from_secs(20))
                .as_secs_f64()
        );
        let mut routes = String::new();
        if let Some((method, path)) = &self.only_route {
            write!(
                routes,
                r#"
              - match: {{ path: {path}, headers: [{{ name: ":method", string_match: {{ exact: {method} }} }}] }}
                route: {{ cluster: payments, timeout: {route_timeout} }}
                typed_per_filter_config:
                  envoy.filters.http.wasm:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    config: {{}}"#,
                path = json_quote(path),
                method = json_quote(method),
            )
            .expect("write to String");
        }
        let mut clusters = cluster_yaml("payments", self.upstream_port);
        if let Some(port) = self.keystore_port {
            clusters.push_str(&cluster_yaml("keystore", port));
            // As every shipped config: one multiplexed HTTP/2 connection (h2c) to the key store.
            clusters.push_str(KEYSTORE_HTTP2);
        }
        format!(
            r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: 0 }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          # As every shipped config: `//payments` and `/x/../payments` reach the filter normalized.
          normalize_path: true
          merge_slashes: true
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
              - match: {{ prefix: "/" }}
                route: {{ cluster: payments, timeout: {route_timeout} }}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{clusters}
"#
        )
    }
}

/// Appended to the `keystore` cluster: HTTP/2 with prior knowledge, as in `envoy/*.yaml`.
const KEYSTORE_HTTP2: &str = r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#;

fn cluster_yaml(name: &str, port: u16) -> String {
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}"#
    )
}

fn json_quote(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

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
            .args(["--use-dynamic-base-id", "--concurrency", "2", "-l", "info"])
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
}

fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Payments upstream + one Envoy with the filter configured by `plugin` (no key store).
pub async fn gateway(plugin: &str) -> (Upstream, Envoy) {
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&EnvoyOptions::with_filter(upstream.port, plugin)).await;
    (upstream, envoy)
}

// ---------------------------------------------------------------------------------------------
// Clients and responses
// ---------------------------------------------------------------------------------------------

/// A response read to the end: status, headers, body bytes.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// A header as text (`None` if absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether `Idempotent-Replayed: true` is present.
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// An HTTP/1.1 client (no connection reuse between tests; each test makes its own).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// An HTTP/1.1 client that gives up after `timeout`, as a client library with a timeout does.
pub fn impatient(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// A payment from a client that gives up after `timeout` while the upstream works `delay_ms` on it
/// (and, like a real server, finishes the work anyway); asserts that the client gave up.
pub async fn abandon_payment(
    envoy: &Envoy,
    caller: &str,
    key: &str,
    body: &str,
    delay_ms: u64,
    timeout: Duration,
) {
    let gone = post_payment(&impatient(timeout), envoy, caller, Some(key), body)
        .header("x-demo-delay-ms", delay_ms.to_string())
        .send()
        .await;
    assert!(gone.is_err(), "the client should have timed out: {gone:?}");
}

/// `base` with the fields of `extra` set over it (both JSON objects), as a plugin configuration.
pub fn merged(mut base: Value, extra: &Value) -> String {
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    base.to_string()
}

/// An h2c client (HTTP/2 with prior knowledge, no TLS).
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest h2c client")
}

/// Sends a request and reads the whole response.
pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    let resp = req.send().await.expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("response body");
    Resp {
        status,
        headers,
        body,
    }
}

/// A fresh idempotency key.
pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `POST /payments` with a JSON body, the caller in `authorization` and (if given) the key.
pub fn post_payment(
    client: &reqwest::Client,
    envoy: &Envoy,
    caller: &str,
    key: Option<&str>,
    body: &str,
) -> reqwest::RequestBuilder {
    let mut req = client
        .post(envoy.url("/payments"))
        .header("content-type", "application/json")
        .header("authorization", caller)
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req
}

/// An h2c request with a body split in two DATA frames and request trailers, read to the end.
pub async fn h2c_with_trailers(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    trailers: &[(&str, &str)],
) -> Resp {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(()).expect("request");
    let mut client = client.ready().await.expect("h2 ready");
    let (response, mut stream) = client.send_request(request, false).expect("send request");
    let (first, second) = body.split_at(body.len() / 2);
    stream
        .send_data(Bytes::copy_from_slice(first), false)
        .expect("send data");
    stream
        .send_data(Bytes::copy_from_slice(second), false)
        .expect("send data");
    let mut trailer_map = HeaderMap::new();
    for (name, value) in trailers {
        trailer_map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("trailer name"),
            HeaderValue::from_str(value).expect("trailer value"),
        );
    }
    stream.send_trailers(trailer_map).expect("send trailers");

    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("h2 response timed out")
        .expect("h2 response");
    let (parts, mut recv) = response.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: Bytes::from(body),
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// Sends `send_once()` every 100 ms while the key is held (409 problem) until it answers 201,
/// bounded by `within`. Returns the 201 and how many 409s came before it; any other answer fails.
pub async fn until_201<F>(within: Duration, mut send_once: impl FnMut() -> F) -> (Resp, u32)
where
    F: std::future::Future<Output = Resp>,
{
    let deadline = Instant::now() + within;
    let mut conflicts = 0;
    loop {
        let resp = send_once().await;
        match resp.status {
            201 => return (resp, conflicts),
            409 => {
                assert_problem(&resp, 409);
                conflicts += 1;
            }
            _ => panic!(
                "unexpected answer while the key is held: {}",
                resp.describe()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "the key is still held after {within:?} ({conflicts} answers 409)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts an RFC 9457 problem answer with this status.
pub fn assert_problem(resp: &Resp, status: u16) -> Value {
    assert_eq!(
        resp.status,
        status,
        "expected a {status} problem, got {}",
        resp.describe()
    );
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type should be application/problem+json, got {}",
        resp.describe()
    );
    let problem = resp.json();
    for field in ["type", "title", "detail"] {
        assert!(
            problem[field].is_string(),
            "problem field {field} missing: {problem}"
        );
    }
    assert_eq!(problem["status"], status, "problem status: {problem}");
    assert!(
        !resp.replayed(),
        "a problem is not a replay: {}",
        resp.describe()
    );
    problem
}

/// Headers that may legitimately differ between an answer and its replay.
const VOLATILE_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-envoy-upstream-service-time",
    "idempotent-replayed",
    "connection",
    "keep-alive",
    "transfer-encoding",
];

/// Asserts that `replay` is a byte-exact replay of `original`: same status, body bytes and
/// (non-volatile) headers, plus `Idempotent-Replayed: true`.
pub fn assert_replay(original: &Resp, replay: &Resp) {
    assert!(
        !original.replayed(),
        "the original is not a replay: {}",
        original.describe()
    );
    assert_eq!(
        replay.status,
        original.status,
        "replay status: {}",
        replay.describe()
    );
    assert_eq!(
        replay.body,
        original.body,
        "replay body differs: {} vs {}",
        replay.describe(),
        original.describe()
    );
    assert!(
        replay.replayed(),
        "missing idempotent-replayed: true: {}",
        replay.describe()
    );
    for (name, value) in &original.headers {
        if VOLATILE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let replayed: Vec<&HeaderValue> = replay.headers.get_all(name).iter().collect();
        assert!(
            replayed.contains(&value),
            "replay lacks header {name}: {value:?}; original {} replay {}",
            original.describe(),
            replay.describe()
        );
    }
}
