//! Test harness: the key store served on a free port, an HTTP client for it, and Redis servers
//! (single node and cluster) started from `redis-server` in temp dirs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use idempotency_keystore::backend::Backend;
use idempotency_keystore::http::{router, Drain, Settings};
use idempotency_keystore::metrics::Metrics;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Settings of a test server: open, 4 MiB bodies, 1 s backend bound.
pub fn settings() -> Settings {
    Settings {
        token: None,
        admin_token: None,
        max_body_bytes: 4 * 1024 * 1024 + 8192,
        max_record_bytes: 3 * 1024 * 1024,
        backend_timeout: Duration::from_secs(1),
        drain: Drain::default(),
    }
}

/// A random 64-hex key or fingerprint, so tests sharing a Redis never collide.
pub fn hex64() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

pub fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

pub fn unb64(s: &Value) -> Vec<u8> {
    BASE64.decode(s.as_str().unwrap()).unwrap()
}

/// A key store served by the test's runtime on 127.0.0.1:0.
#[derive(Clone)]
pub struct Keystore {
    pub base: String,
    pub http: reqwest::Client,
    /// Sent as the bearer token by the helpers.
    pub token: Option<String>,
}

impl Keystore {
    pub async fn start(backend: Arc<dyn Backend>, settings: Settings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = settings.token.clone();
        let app = router(backend, settings, Metrics::new().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            token,
        }
    }

    /// POSTs a raw body with an explicit Authorization value.
    pub async fn post_auth(
        &self,
        path: &str,
        body: String,
        auth: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs a raw body with this content type (and `accept`, if any); returns the status, the
    /// answer's content type and its bytes.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        accept: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, resp.bytes().await.unwrap().to_vec())
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        self.post_auth(path, body.to_string(), auth.as_deref())
            .await
    }

    pub async fn claim(&self, key: &str, fp: &str, lease_ms: u64) -> (StatusCode, Value) {
        self.post(
            "/v1/claim",
            json!({"key": key, "fingerprint": fp, "lease_ms": lease_ms}),
        )
        .await
    }

    /// Claims and asserts the key was free; returns the token.
    pub async fn claim_ok(&self, key: &str, fp: &str, lease_ms: u64) -> String {
        let (status, body) = self.claim(key, fp, lease_ms).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["outcome"], "claimed", "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn complete(
        &self,
        key: &str,
        token: &str,
        record: &[u8],
        retention_ms: u64,
    ) -> (StatusCode, Value) {
        self.post(
            "/v1/complete",
            json!({"key": key, "token": token, "record": b64(record), "retention_ms": retention_ms}),
        )
        .await
    }

    /// A claim that may wait `wait_ms` for an in-flight key.
    pub async fn claim_wait(
        &self,
        key: &str,
        fp: &str,
        lease_ms: u64,
        wait_ms: u64,
    ) -> (StatusCode, Value) {
        self.post(
            "/v1/claim",
            json!({"key": key, "fingerprint": fp, "lease_ms": lease_ms, "wait_ms": wait_ms}),
        )
        .await
    }

    pub async fn renew(&self, key: &str, token: &str, lease_ms: u64) -> (StatusCode, Value) {
        self.post(
            "/v1/renew",
            json!({"key": key, "token": token, "lease_ms": lease_ms}),
        )
        .await
    }

    pub async fn release(&self, key: &str, token: &str) -> (StatusCode, Value) {
        self.post("/v1/release", json!({"key": key, "token": token}))
            .await
    }

    /// An admin call (`GET` or `DELETE` of `/admin/v1/records/{key}`) with this Authorization.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        key: &str,
        auth: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/admin/v1/records/{key}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}

/// Polls `f` every 20 ms until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- Redis servers

/// A free loopback port (bound then released; a race with another process is unlikely).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require_redis_server() {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "redis-server is not installed: the Redis backend tests need it (apt-get install -y redis-server)"
    );
}

/// One running redis-server process. It runs under a tiny `sh` watchdog that kills it when our
/// end of its stdin closes, so even servers held in statics (never dropped) die with the test
/// process.
struct Proc {
    watchdog: Child,
    pid: u32,
}

impl Proc {
    fn spawn(dir: &Path, port: u16, extra: &[String]) -> Self {
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & p=$!; echo $p; read _; kill -9 $p 2>/dev/null; wait $p"#)
            .arg("sh")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .args(["--logfile", "redis.log", "--save", ""])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(watchdog.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid = line.trim().parse().unwrap();
        Self { watchdog, pid }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("-KILL");
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// Sends one inline command and returns the raw reply (enough for PING and CLUSTER INFO).
fn command(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Redis node on a fixed port and data dir, which can be killed and started again.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Starts a node with extra `redis-server` arguments and waits until it answers PING.
    pub fn start(extra: &[&str]) -> Self {
        require_redis_server();
        let dir = tempfile::Builder::new()
            .prefix("redis-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let mut server = Self {
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: a crash, nothing flushed beyond what the config already made durable.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            drop(p);
        }
        let port = self.port;
        wait_until("redis to stop", || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    /// (Re)starts the node on the same port and dir and waits for PONG (not -LOADING).
    pub fn restart(&mut self) {
        self.kill();
        self.proc = Some(Proc::spawn(self.dir.path(), self.port, &self.extra));
        let port = self.port;
        wait_until("redis PING", || {
            command(port, "PING").is_some_and(|r| r.starts_with("+PONG"))
        });
    }
}

/// A Redis Cluster of three masters (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let bus = free_port().to_string();
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                    "--appendonly",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is not installed (apt-get install -y redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        for n in &self.nodes {
            let port = n.port;
            wait_until("cluster_state:ok", || {
                command(port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok"))
            });
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
