//! `redis-server` (Debian's package, from `scripts/setup.sh`) as a test's own process: a node on a
//! free port with its own data directory, which can be SIGKILLed and started again on the same port
//! and data, and a three-master cluster of such nodes.
//!
//! Each node runs under a small `sh` watchdog that kills it when our end of the watchdog's stdin
//! closes, so even a node held in a `static` (never dropped) dies with the test process.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to answer (the machine may be busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(90);

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
        "redis-server is not installed or does not run: the Redis tests need Debian's \
         redis-server (scripts/setup.sh installs it: apt-get install -y redis-server)"
    );
}

/// A free loopback port (bound, then released; a race with another process is unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot pick a free port: {e}"))
}

/// One inline command over a fresh plain connection; the raw reply, if any (enough for `PING`,
/// `CLUSTER INFO` and `KEYS *`).
pub fn redis_command(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 8192];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(buf.get(..n)?).into_owned())
}

/// Polls `ready` every 10 ms, panicking with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `redis-server` under its watchdog, killed (SIGKILL) when dropped. If the thread is
/// panicking then, the tail of its log is printed.
pub struct RedisProcess {
    watchdog: Child,
    pid: u32,
    log: PathBuf,
}

impl RedisProcess {
    /// Starts `redis-server ARGS --dir DIR --logfile LOG --daemonize no` in `dir`.
    pub fn spawn(dir: &Path, log: &str, args: &[OsString]) -> RedisProcess {
        require_redis_server();
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & p=$!; echo $p; read _; kill -9 $p 2>/dev/null; wait $p"#)
            .arg("sh")
            .args(args)
            .arg("--dir")
            .arg(dir)
            .args(["--logfile", log, "--daemonize", "no"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let mut line = String::new();
        if let Some(stdout) = watchdog.stdout.as_mut() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("no redis-server pid from its watchdog ({line:?}): {e}"));
        RedisProcess {
            watchdog,
            pid,
            log: dir.join(log),
        }
    }

    /// Whether the server has exited (the watchdog exits with it).
    pub fn exited(&mut self) -> bool {
        !matches!(self.watchdog.try_wait(), Ok(None))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- redis-server log tail ({}) -----\n{}\n----- end of redis-server log -----",
                self.log.display(),
                self.log_tail(30)
            );
        }
    }
}

/// A temporary directory for one node's data and logs.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"))
}

/// A Redis node on a fixed port and data directory that can be crashed and started again.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    proc: Option<RedisProcess>,
    starts: u32,
}

impl RedisServer {
    /// A node with no persistence beyond these extra `redis-server` arguments; waits for `PING`.
    pub fn start(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempdir("redis-"),
            args: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            proc: None,
            starts: 0,
        };
        server.restart();
        server
    }

    /// A node with an append-only file fsync'd on every write: completed records survive a
    /// SIGKILL.
    pub fn durable() -> RedisServer {
        RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The data directory (append-only file, logs).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// SIGKILL (a crash: only what the configuration already made durable survives), then waits
    /// until the port refuses connections, so that a restart cannot race the dying process.
    pub fn kill(&mut self) {
        drop(self.proc.take());
        let port = self.port;
        wait_until("redis-server to stop", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    /// (Re)starts the node on the same port and data directory and waits for `+PONG` (a node
    /// still loading its append-only file answers `-LOADING`).
    pub fn restart(&mut self) {
        self.kill();
        self.starts += 1;
        let mut args: Vec<OsString> = vec![
            "--port".into(),
            self.port.to_string().into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
        ];
        args.extend(self.args.iter().map(OsString::from));
        let log = format!("redis-{}.log", self.starts);
        let mut proc = RedisProcess::spawn(self.dir.path(), &log, &args);
        let port = self.port;
        wait_until("redis-server to answer PING", START_TIMEOUT, || {
            assert!(
                !proc.exited(),
                "redis-server exited on port {port}; log:\n{}",
                proc.log_tail(30)
            );
            redis_command(port, "PING").is_some_and(|reply| reply.starts_with("+PONG"))
        });
        self.proc = Some(proc);
    }
}

/// A Redis Cluster of three masters (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes, joins them with `redis-cli --cluster create` and waits
    /// until every node says `cluster_state:ok`.
    pub fn start() -> RedisCluster {
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
            .map(|node| format!("127.0.0.1:{}", node.port))
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
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        for node in &self.nodes {
            let port = node.port;
            wait_until("cluster_state:ok", Duration::from_secs(10), || {
                redis_command(port, "CLUSTER INFO")
                    .is_some_and(|reply| reply.contains("cluster_state:ok"))
            });
        }
    }

    /// The nodes' `redis://` URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
