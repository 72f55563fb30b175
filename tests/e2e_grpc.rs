//! gRPC callers through a real Envoy (h2c in, HTTP/2 to the service) and a real `grpcio` service
//! and client (tests/grpc/, raw-bytes methods): the filter's own answers arrive as gRPC statuses
//! (README, "gRPC"), and the service runs once per key. Needs `.venv/bin/python` with `grpcio`
//! (scripts/setup.sh).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};

use serde_json::{json, Value};
use support::process::{repo_root, START_TIMEOUT};
use support::*;

const CALL: &str = "/test.Echo/Call";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn python() -> PathBuf {
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
struct Service {
    child: Child,
    lines: Receiver<String>,
    port: u16,
}

impl Service {
    fn start() -> Service {
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
    fn wait_for(&self, prefix: &str) -> String {
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
    fn calls(&self) -> u64 {
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
fn client(port: u16, method: &str, messages: &[&[u8]], key: Option<&str>) -> Command {
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

fn outcome(output: std::process::Output) -> Value {
    assert!(output.status.success(), "client failed: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn call_direct(port: u16, method: &str, messages: &[&[u8]], key: Option<&str>) -> Value {
    outcome(client(port, method, messages, key).output().unwrap())
}

fn metadata<'a>(outcome: &'a Value, part: &str, name: &str) -> Option<&'a str> {
    outcome[part]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_str())
}

/// Envoy with the filter on `rule`'s path (the key required) in front of the service over
/// HTTP/2.
async fn envoy(service: &Service, rule: Value) -> Envoy {
    let rule = merged(json!({"methods": ["POST"], "required": true}), &rule);
    let plugin = Plugin::signed("grpc-e2e-secret-0123456789abcdef0123456789abcdef")
        .set("routes", json!([rule]))
        .set("anonymous_scope", "grpc-e2e")
        .json();
    let mut options = EnvoyOptions::with_filter(service.port, plugin).workers(2);
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
    options.bootstrap = Some(options.render().replacen(&cluster_end, &http2, 1));
    Envoy::start(&options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_filter_answers_grpc_callers_with_grpc_statuses() {
    let service = Service::start();
    let envoy = envoy(&service, json!({"exact": CALL})).await;
    let via_envoy =
        |message: &[u8], key: Option<&str>| call_direct(envoy.port, CALL, &[message], key);

    // No key: INVALID_ARGUMENT, with the reason in the message, and nothing ran.
    let missing = via_envoy(b"m", None);
    assert_eq!(missing["code"], "INVALID_ARGUMENT", "{missing}");
    assert!(
        missing["details"]
            .as_str()
            .unwrap()
            .starts_with("Idempotency-Key is missing: "),
        "{missing}"
    );
    assert_eq!(missing["answer"], Value::Null);
    let invalid = via_envoy(b"m", Some("\"unterminated"));
    assert_eq!(invalid["code"], "INVALID_ARGUMENT", "{invalid}");
    assert_eq!(service.calls(), 0);

    // A first call held in the service; a duplicate meanwhile is told to come back later.
    let first = client(envoy.port, CALL, &[b"hold-1"], Some("key-1"))
        .spawn()
        .unwrap();
    assert_eq!(service.wait_for("STARTED "), hex(b"hold-1"));
    let duplicate = via_envoy(b"hold-1", Some("key-1"));
    assert_eq!(duplicate["code"], "UNAVAILABLE", "{duplicate}");
    assert!(
        duplicate["details"]
            .as_str()
            .unwrap()
            .contains("still being processed"),
        "{duplicate}"
    );
    // Server pushback: a retry policy waits this long (gRPC passes it on as trailing metadata).
    assert_eq!(
        metadata(&duplicate, "trailing", "grpc-retry-pushback-ms"),
        Some("1000"),
        "{duplicate}"
    );
    // The key reused with another message: ALREADY_EXISTS, which no retry policy retries.
    let reused = via_envoy(b"other", Some("key-1"));
    assert_eq!(reused["code"], "ALREADY_EXISTS", "{reused}");

    call_direct(service.port, "/test.Echo/Release", &[b""], None);
    let first = outcome(first.wait_with_output().unwrap());
    assert_eq!(first["code"], "OK", "{first}");
    assert_eq!(first["answer"], hex(b"answer:hold-1"));
    assert_eq!(metadata(&first, "trailing", "x-trailer"), Some("t1"));

    // Once per key: a retry after completion does not run the service again.
    let _ = via_envoy(b"hold-1", Some("key-1"));
    assert_eq!(service.calls(), 1, "the service ran once for key-1");
    let other = via_envoy(b"second", Some("key-2"));
    assert_eq!(other["code"], "OK", "{other}");
    assert_eq!(service.calls(), 2);
}

/// A request message with the key in field 1 (if any) and `payload` in field 2.
fn message(key: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    if let Some(key) = key {
        m.extend([0x0a, u8::try_from(key.len()).unwrap()]);
        m.extend(key.as_bytes());
    }
    m.extend([0x12, u8::try_from(payload.len()).unwrap()]);
    m.extend(payload);
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_can_come_from_a_message_field() {
    let service = Service::start();
    let envoy = envoy(&service, json!({"exact": CALL, "key_field": 1})).await;
    let via_envoy = |message: &[u8]| call_direct(envoy.port, CALL, &[message], None);

    let first_message = message(Some("req-1"), b"hold");
    let first = client(envoy.port, CALL, &[&first_message], None)
        .spawn()
        .unwrap();
    assert_eq!(service.wait_for("STARTED "), hex(&first_message));
    let duplicate = via_envoy(&first_message);
    assert_eq!(duplicate["code"], "UNAVAILABLE", "{duplicate}");
    let reused = via_envoy(&message(Some("req-1"), b"other"));
    assert_eq!(reused["code"], "ALREADY_EXISTS", "{reused}");
    let no_key = via_envoy(&message(None, b"x"));
    assert_eq!(no_key["code"], "INVALID_ARGUMENT", "{no_key}");
    assert!(
        no_key["details"]
            .as_str()
            .unwrap()
            .contains("no key in field 1"),
        "{no_key}"
    );
    let not_a_string = via_envoy(&[0x08, 0x01]);
    assert_eq!(not_a_string["code"], "INVALID_ARGUMENT", "{not_a_string}");

    call_direct(service.port, "/test.Echo/Release", &[b""], None);
    let first = outcome(first.wait_with_output().unwrap());
    assert_eq!(first["code"], "OK", "{first}");
    let _ = via_envoy(&first_message);
    assert_eq!(service.calls(), 1, "the service ran once for req-1");
    let second = via_envoy(&message(Some("req-2"), b"free"));
    assert_eq!(second["code"], "OK", "{second}");
    assert_eq!(service.calls(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_stream_passes_through_counted() {
    let service = Service::start();
    let envoy = envoy(&service, json!({"prefix": "/test.Echo/"})).await;
    let messages: [&[u8]; 2] = [b"one", b"two"];
    for round in 1..=2 {
        let answer = call_direct(envoy.port, "/test.Echo/Collect", &messages, Some("key-s"));
        assert_eq!(answer["code"], "OK", "{answer}");
        assert_eq!(answer["answer"], hex(b"one+two"));
        assert_eq!(
            service.calls(),
            round,
            "a stream is never held back or replayed"
        );
    }
    assert_eq!(envoy.metric("grpc_streaming").await, Some(2));
    // A unary call on the same route and key still runs: the stream claimed nothing.
    let unary = call_direct(envoy.port, CALL, &[b"u"], Some("key-s"));
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(service.calls(), 3);
}
