//! The `grpcio` service and client (tests/grpc/) and an Envoy in front of the service over HTTP/2.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};

use serde_json::{json, Value};

use crate::support::process::{repo_root, START_TIMEOUT};
use crate::support::*;

pub const CALL: &str = "/test.Echo/Call";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

pub fn python() -> PathBuf {
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/setup.sh",
        venv.display()
    );
    venv
}

/// The `grpcio` service (tests/grpc/server.py), stopped when dropped: it ends when its stdin
/// closes, and is killed if it does not.
pub struct Service {
    child: Child,
    lines: Receiver<String>,
    pub port: u16,
}

impl Service {
    pub fn start() -> Service {
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/grpc/server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC service");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Service {
            child,
            lines,
            port: 0,
        };
        let port = service.wait_for("PORT ");
        service.port = port.parse().unwrap();
        service
    }

    /// The rest of the next line the service prints that starts with `prefix`.
    pub fn wait_for(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(START_TIMEOUT)
                .unwrap_or_else(|_| panic!("the gRPC service never printed {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    /// How many calls of `/test.Echo/Call` ran, asked of the service directly.
    pub fn calls(&self) -> u64 {
        let answer = call_direct(self.port, "/test.Echo/Count", &[b""], None);
        let text = unhex(answer["answer"].as_str().unwrap());
        String::from_utf8(text).unwrap().parse().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call; several messages make a client-streaming call.
pub fn client(port: u16, method: &str, messages: &[&[u8]], key: Option<&str>) -> Command {
    let messages: Vec<String> = messages.iter().map(|m| hex(m)).collect();
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/grpc/client.py"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(method)
        .arg(messages.join(","))
        .args(key)
        .stdout(Stdio::piped());
    cmd
}

pub fn outcome(output: std::process::Output) -> Value {
    assert!(output.status.success(), "client failed: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

pub fn call_direct(port: u16, method: &str, messages: &[&[u8]], key: Option<&str>) -> Value {
    outcome(client(port, method, messages, key).output().unwrap())
}

pub fn metadata<'a>(outcome: &'a Value, part: &str, name: &str) -> Option<&'a str> {
    outcome[part]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_str())
}

/// Envoy with the filter on `rule`'s path (the key required) in front of the service over
/// HTTP/2.
pub async fn envoy(service: &Service, rule: Value) -> Envoy {
    Envoy::start(&options(service, rule, |plugin| plugin, |options| options)).await
}

/// The route `matches` (`{"exact": …}` or `{"prefix": …}`) executed detached: the root context
/// sends the call to the service (the `payments_detached` cluster), 5 s at most.
pub fn detached_rule(matches: Value) -> Value {
    let detached = json!({
        "execution": "detached",
        "upstream_cluster": "payments_detached", "upstream_timeout_ms": 5000,
    });
    merged(matches, &detached)
}

/// Routed replays on (README, "Routed replays").
pub fn routed(plugin: Plugin) -> Plugin {
    plugin.set("routed_replay", true)
}

/// [`envoy`] with routed replays, through the replay listener inside the same Envoy.
pub async fn routed_envoy(service: &Service, rule: Value) -> Envoy {
    let options = options(service, rule, routed, |o| {
        o.replay_listener(ReplayListener::Internal)
    });
    Envoy::start(&options).await
}

/// Two gateways in front of one service, sharing one key store: routed replays of `CALL`
/// (the key required) through each one's own replay listener. The key store lives as long as
/// they do.
pub struct SharedGateways {
    pub a: Envoy,
    pub b: Envoy,
    _keystore: Keystore,
}

impl SharedGateways {
    pub async fn start(service: &Service) -> SharedGateways {
        let keystore = Keystore::start().await;
        let gateway = || {
            options(
                service,
                json!({"exact": CALL}),
                |p| routed(p).keystore(2000, None),
                |o| {
                    o.replay_listener(ReplayListener::Internal)
                        .keystore(keystore.port)
                },
            )
        };
        let a = Envoy::start(&gateway()).await;
        let b = Envoy::start(&gateway()).await;
        SharedGateways {
            a,
            b,
            _keystore: keystore,
        }
    }
}

/// The options of [`envoy`], with the plugin and the options changed by `plugin` and `more`
/// before the bootstrap is rendered.
pub fn options(
    service: &Service,
    rule: Value,
    plugin: impl FnOnce(Plugin) -> Plugin,
    more: impl FnOnce(EnvoyOptions) -> EnvoyOptions,
) -> EnvoyOptions {
    let rule = merged(json!({"methods": ["POST"], "required": true}), &rule);
    let plugin = plugin(
        Plugin::signed("grpc-e2e-secret-0123456789abcdef0123456789abcdef")
            .set("routes", json!([rule]))
            .set("anonymous_scope", "grpc-e2e"),
    )
    .json();
    let mut options = more(EnvoyOptions::with_filter(service.port, plugin).workers(2));
    // The service speaks HTTP/2 only: the `payments` cluster (the first one rendered) gets
    // HTTP/2 with prior knowledge.
    let cluster_end = format!("port_value: {} }}", service.port);
    let http2 = format!(
        "{cluster_end}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}"
    );
    // The cluster of detached rules (`payments_detached`) reaches the same service: HTTP/2 too.
    let bootstrap = options.render().replacen(&cluster_end, &http2, 1).replacen(
        "http_protocol_options: { enable_trailers: true }",
        "http2_protocol_options: {}",
        1,
    );
    options.bootstrap = Some(bootstrap);
    options
}

/// `threads` concurrent calls of `method` with `message` and `key`, thread i on `ports[i % n]`,
/// each with deadline `timeout_s` and, with `retry`, a retry policy that retries `UNAVAILABLE`
/// (tests/grpc/retrying.py); one outcome per thread.
pub fn calls(
    ports: &[u16],
    method: &str,
    message: &[u8],
    key: &str,
    threads: usize,
    timeout_s: f64,
    retry: bool,
) -> Vec<Value> {
    let targets: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let spec = json!({
        "targets": targets, "method": method, "message": hex(message), "key": key,
        "threads": threads, "timeout": timeout_s, "retry": retry,
    });
    let output = Command::new(python())
        .arg(repo_root().join("tests/grpc/retrying.py"))
        .arg(spec.to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "retrying.py failed: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}
