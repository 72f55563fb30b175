//! The `idempotency-admin` binary against a real `idempotency-keystore` process (memory and Redis
//! backends), with records written through the key store's v1 API exactly as the filter writes
//! them (the filter's own key derivation, codec and callout bodies).
//!
//! Needs `<target>/debug/idempotency-keystore` (`make build`, or `cargo build -p
//! idempotency-keystore`) and, for the Redis cases, `redis-server`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use idempotency_filter::config::{Config, KeystoreConfig};
use idempotency_filter::fingerprint::Fingerprinter;
use idempotency_filter::keystore_client;
use idempotency_filter::record::{Outcome, Record, StoredResponse};
use idempotency_filter::scope::{Caller, RecordKey};
use idempotency_testkit::redis::RedisServer;
use serde_json::Value;

const CURRENT: &str = "current-secret-0123456789abcdef0123456789";
const PREVIOUS: &str = "previous-secret-0123456789abcdef012345678";
const V1_TOKEN: &str = "v1-token-for-the-filter";
const ADMIN_TOKEN: &str = "admin-token-for-operators";
const ROUTE: &str = "prefix:/payments";
const CALLER: &str = "Bearer alice";

/// The plugin configuration: two secrets (current from the environment, previous inline).
const CONFIG: &str = r#"{
  "routes": [{"prefix": "/payments", "required": true}],
  "hmac_secrets": [{"env": "IDEM_SECRET"}, {"value": "previous-secret-0123456789abcdef012345678"}],
  "anonymous_scope": "public",
  "keystore": {"cluster": "keystore", "token": {"env": "KEYSTORE_TOKEN"}}
}"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A binary of the workspace, next to this test's own.
fn workspace_bin(name: &str) -> PathBuf {
    let admin = PathBuf::from(env!("CARGO_BIN_EXE_idempotency-admin"));
    let path = admin.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make build` (cargo build -p idempotency-keystore)",
        path.display()
    );
    path
}

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The key store process, with a /v1 token and optionally an admin token.
struct Keystore {
    _proc: Proc,
    base: String,
    _redis: Option<RedisServer>,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
}

impl Keystore {
    fn start(backend: Backend, admin_token: Option<&str>) -> Keystore {
        let mut cmd = Command::new(workspace_bin("idempotency-keystore"));
        cmd.args(["--listen", "127.0.0.1:0", "--token", V1_TOKEN])
            .env_remove("KEYSTORE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(t) = admin_token {
            cmd.args(["--admin-token", t]);
        }
        let redis = match backend {
            Backend::Memory => None,
            Backend::Redis => {
                let redis = RedisServer::start(&[]);
                cmd.args(["--backend", "redis", "--redis-url"])
                    .arg(redis.url());
                Some(redis)
            }
        };
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("key store did not start: {line:?}"))
            .to_owned();
        Keystore {
            _proc: Proc(child),
            base: format!("http://{addr}"),
            _redis: redis,
        }
    }

    /// Sends a callout of the filter (its path, authorization and body) to the key store.
    fn send(&self, callout: &idempotency_filter::host::Callout) -> Value {
        let header = |name: &str| {
            callout
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}{}", self.base, header(":path")))
            .header("authorization", header("authorization"))
            .header("content-type", header("content-type"))
            // The filter's bodies are compact; the answer is read here as JSON.
            .header("accept", "application/json")
            .body(callout.body.clone())
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        serde_json::from_slice(&resp.bytes().unwrap()).unwrap()
    }
}

/// The configuration as the filter parses it, and written to a file for the tool.
struct Setup {
    dir: tempfile::TempDir,
    keystore_cfg: KeystoreConfig,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plugin.json"), CONFIG).unwrap();
        let env = |name: &str| match name {
            "IDEM_SECRET" => Some(CURRENT.to_owned()),
            "KEYSTORE_TOKEN" => Some(V1_TOKEN.to_owned()),
            _ => None,
        };
        let config = Config::parse_with_env(CONFIG.as_bytes(), &env).unwrap();
        Setup {
            dir,
            keystore_cfg: config.keystore.unwrap(),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("plugin.json")
    }
}

/// The record key of `key` for Alice under `secret`, as the filter derives it.
fn record_key(secret: &str, key: &str) -> RecordKey {
    let caller = Caller::Source {
        source: "header:authorization",
        value: CALLER.as_bytes(),
    };
    RecordKey::derive(secret.as_bytes(), ROUTE, &caller, key)
}

/// The request the tool is run for (`admin`), and its body.
const PATH: &str = "/payments/123?x=1";
const BODY: &[u8] = br#"{"amount":100}"#;

/// The request's fingerprint under the current secret, as the filter computes it.
fn fingerprint() -> [u8; 32] {
    let mut f = Fingerprinter::new(CURRENT.as_bytes(), "POST", PATH, &[]);
    f.update_body(BODY);
    f.finish()
}

fn record(outcome: Outcome) -> Record {
    let now = now_ms();
    Record {
        fingerprint: fingerprint(),
        created_ms: now - 5_000,
        expires_ms: now + 3_600_000,
        outcome,
    }
}

fn created_201() -> Outcome {
    Outcome::Replayable(StoredResponse {
        status: 201,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: br#"{"id":"pay_1"}"#.to_vec(),
    })
}

/// Claims `key` and completes it with `record`, sealed with the first of `secrets` (the filter's
/// claim and complete callouts).
fn store(ks: &Keystore, cfg: &KeystoreConfig, key: &RecordKey, record: &Record) {
    let fp = record.fingerprint;
    let claimed = ks.send(&keystore_client::claim(cfg, key, &fp, 30_000, "tok-1", 0));
    assert_eq!(claimed["outcome"], "claimed", "{claimed}");
    let stored = ks.send(&keystore_client::complete(
        cfg, key, "tok-1", record, 3_600_000,
    ));
    assert_eq!(stored["outcome"], "stored", "{stored}");
}

/// Runs the tool for Alice's request with `key` and extra arguments.
fn admin(setup: &Setup, ks: Option<&Keystore>, command: &str, key: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idempotency-admin"));
    cmd.arg(command)
        .arg("--config")
        .arg(setup.config_path())
        .args(["--method", "POST", "--path", PATH])
        .args([
            "--caller-source",
            "header:authorization",
            "--caller",
            CALLER,
        ])
        .args(["--key", key])
        .args(extra)
        .env("IDEM_SECRET", CURRENT)
        .env("KEYSTORE_TOKEN", V1_TOKEN)
        .env_remove("KEYSTORE_ADMIN_TOKEN")
        .env_remove("IDEMPOTENCY_ADMIN_CALLER");
    if let Some(ks) = ks {
        cmd.args(["--keystore", &ks.base, "--admin-token", ADMIN_TOKEN]);
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failure(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
}

fn a_key() -> String {
    format!("\"k-{}\"", now_ms() ^ u64::from(std::process::id()))
}

/// `key`: the record key under each secret, as the filter derives it.
#[test]
fn key_prints_the_record_key_under_each_secret() {
    let setup = Setup::new();
    let text = stdout(&admin(&setup, None, "key", "\"abc\"", &[]));
    contains(&text, ROUTE);
    contains(
        &text,
        &format!("secret 0 (current)    {}", record_key(CURRENT, "abc").hex()),
    );
    contains(
        &text,
        &format!(
            "secret 1 (previous)   {}",
            record_key(PREVIOUS, "abc").hex()
        ),
    );
    assert!(
        !text.contains(CALLER),
        "the caller's credential is not printed"
    );
    // A bare token is the same key as the quoted string.
    let bare = stdout(&admin(&setup, None, "key", "abc", &[]));
    assert_eq!(bare, text);
}

fn completed_in_flight_absent_and_purge(backend: Backend) {
    let setup = Setup::new();
    let ks = Keystore::start(backend, Some(ADMIN_TOKEN));
    let cfg = &setup.keystore_cfg;

    // Completed: written as the filter writes it, under the current secret.
    let key = a_key();
    let unquoted = key.trim_matches('"');
    let current = record_key(CURRENT, unquoted);
    store(&ks, cfg, &current, &record(created_201()));
    let text = stdout(&admin(&setup, Some(&ks), "show", &key, &[]));
    contains(
        &text,
        &format!(
            "secret 0 (current), record key {}: completed, status 201, replayable",
            current.hex()
        ),
    );
    contains(&text, "verifies under secret 0 (current)");
    contains(&text, "gets the stored 201 replayed");
    contains(
        &text,
        &format!(
            "secret 1 (previous), record key {}: absent",
            record_key(PREVIOUS, unquoted).hex()
        ),
    );
    let json: Value = serde_json::from_str(&stdout(&admin(
        &setup,
        Some(&ks),
        "show",
        &key,
        &["--json"],
    )))
    .unwrap();
    assert_eq!(json["route"], ROUTE);
    assert_eq!(json["caller_source"], "header:authorization");
    let first = &json["records"][0];
    assert_eq!(first["state"], "completed", "{json}");
    assert_eq!(first["record_key"], current.hex().as_str());
    assert_eq!(first["record"]["signature"], "verified", "{json}");
    assert_eq!(first["record"]["secret"], 0);
    assert_eq!(first["record"]["outcome"], "replayable");
    assert_eq!(first["record"]["status"], 201);
    let left = first["expires_in_ms"].as_u64().unwrap();
    assert!(left > 3_500_000 && left <= 3_600_000, "{json}");
    assert_eq!(json["records"][1]["state"], "absent");
    // The same request again is a retry; another payload is the 422.
    let same = setup.dir.path().join("same.json");
    std::fs::write(&same, BODY).unwrap();
    let other = setup.dir.path().join("other.json");
    std::fs::write(&other, br#"{"amount":999}"#).unwrap();
    let text = stdout(&admin(
        &setup,
        Some(&ks),
        "show",
        &key,
        &["--body", same.to_str().unwrap()],
    ));
    contains(&text, "has the stored fingerprint: it is a retry");
    let json: Value = serde_json::from_str(&stdout(&admin(
        &setup,
        Some(&ks),
        "show",
        &key,
        &["--json", "--body", other.to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(json["records"][0]["request_matches"], false, "{json}");
    assert!(
        json["records"][1].get("request_matches").is_none(),
        "{json}"
    );

    // Purge asks for --yes and removes nothing without it.
    let err = failure(&admin(&setup, Some(&ks), "purge", &key, &[]), 2);
    contains(&err, "--yes");
    contains(
        &stdout(&admin(&setup, Some(&ks), "show", &key, &[])),
        "completed, status 201",
    );
    let text = stdout(&admin(&setup, Some(&ks), "purge", &key, &["--yes"]));
    contains(
        &text,
        &format!(
            "secret 0 (current), record key {}: removed: completed, status 201, replayable",
            current.hex()
        ),
    );
    contains(&text, "secret 1 (previous), record key");
    contains(&text, "nothing to remove");
    contains(
        &stdout(&admin(&setup, Some(&ks), "show", &key, &[])),
        &format!("record key {}: absent", current.hex()),
    );
    // The key runs again: the filter's next claim wins it.
    let claimed = ks.send(&keystore_client::claim(
        cfg,
        &current,
        &fingerprint(),
        30_000,
        "t2",
        0,
    ));
    assert_eq!(claimed["outcome"], "claimed", "{claimed}");

    // That claim is in flight now.
    let text = stdout(&admin(&setup, Some(&ks), "show", &key, &[]));
    contains(
        &text,
        &format!("record key {}: in flight (lease left", current.hex()),
    );
    contains(&text, "409 (request in progress)");
    let json: Value = serde_json::from_str(&stdout(&admin(
        &setup,
        Some(&ks),
        "show",
        &key,
        &["--json"],
    )))
    .unwrap();
    assert_eq!(json["records"][0]["state"], "in_flight");
    let left = json["records"][0]["lease_left_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 30_000, "{json}");
    assert!(!json.to_string().contains("t2"), "no fencing token: {json}");
    let text = stdout(&admin(&setup, Some(&ks), "purge", &key, &["--yes"]));
    contains(&text, "removed: in flight");
}

#[test]
fn memory_completed_in_flight_absent_and_purge() {
    completed_in_flight_absent_and_purge(Backend::Memory);
}

#[test]
fn redis_completed_in_flight_absent_and_purge() {
    completed_in_flight_absent_and_purge(Backend::Redis);
}

/// A record stored under the previous secret is found and verified under it; an unknown outcome is
/// explained; a record sealed under no configured secret is called out.
#[test]
fn previous_secret_unknown_outcome_and_forgery() {
    let setup = Setup::new();
    let ks = Keystore::start(Backend::Memory, Some(ADMIN_TOKEN));
    let key = a_key();
    let unquoted = key.trim_matches('"');
    // Stored before the rotation: key and seal under what is now the previous secret.
    let mut before_rotation = setup.keystore_cfg.clone();
    before_rotation.secrets =
        idempotency_filter::config::Secrets::from_bytes(vec![PREVIOUS.as_bytes().to_vec()]);
    let hold_until = now_ms() + 600_000;
    let previous = record_key(PREVIOUS, unquoted);
    store(
        &ks,
        &before_rotation,
        &previous,
        &record(Outcome::Unknown {
            hold_until_ms: hold_until,
        }),
    );
    let text = stdout(&admin(&setup, Some(&ks), "show", &key, &[]));
    contains(
        &text,
        &format!(
            "secret 1 (previous), record key {}: completed, outcome unknown",
            previous.hex()
        ),
    );
    contains(&text, "verifies under secret 1 (previous)");
    contains(&text, "then 410");
    contains(&text, "409 with Retry-After until");

    // Sealed under a secret the configuration does not hold.
    let key = a_key();
    let current = record_key(CURRENT, key.trim_matches('"'));
    let mut forger = setup.keystore_cfg.clone();
    forger.secrets = idempotency_filter::config::Secrets::from_bytes(vec![b"f".repeat(40)]);
    store(&ks, &forger, &current, &record(created_201()));
    let text = stdout(&admin(&setup, Some(&ks), "show", &key, &[]));
    contains(&text, "completed, signature does not verify");
    contains(&text, "never replays this record");
    let json: Value = serde_json::from_str(&stdout(&admin(
        &setup,
        Some(&ks),
        "show",
        &key,
        &["--json"],
    )))
    .unwrap();
    assert_eq!(json["records"][0]["record"]["signature"], "does_not_verify");
}

/// The admin token opens the admin API; the /v1 token does not; without an admin token the key
/// store has no admin API.
#[test]
fn admin_token_separation() {
    let setup = Setup::new();
    let key = a_key();
    let ks = Keystore::start(Backend::Memory, Some(ADMIN_TOKEN));
    let out = admin(
        &setup,
        None,
        "show",
        &key,
        &["--keystore", &ks.base, "--admin-token", V1_TOKEN],
    );
    let err = failure(&out, 1);
    contains(&err, "401");
    contains(&err, "admin token was refused");
    // No token at all: clap says the flag is required.
    let out = admin(&setup, None, "show", &key, &["--keystore", &ks.base]);
    contains(&failure(&out, 2), "--admin-token");

    let off = Keystore::start(Backend::Memory, None);
    let out = admin(
        &setup,
        None,
        "show",
        &key,
        &["--keystore", &off.base, "--admin-token", ADMIN_TOKEN],
    );
    let err = failure(&out, 1);
    contains(&err, "404");
    contains(&err, "admin API is off");
}

/// Input that names no record gets an error naming what is wrong, and a usage exit code.
#[test]
fn bad_input_is_named() {
    let setup = Setup::new();
    let config = setup.config_path().to_str().unwrap().to_owned();
    let args = |config: &str, path: &str, key: &str| -> Vec<String> {
        [
            "--config", config, "--path", path, "--caller", CALLER, "--key", key,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: &[String], env_secret: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idempotency-admin"));
        cmd.arg("key")
            .args(args)
            .env("KEYSTORE_TOKEN", V1_TOKEN)
            .env_remove("IDEMPOTENCY_ADMIN_CALLER");
        if env_secret {
            cmd.env("IDEM_SECRET", CURRENT);
        } else {
            cmd.env_remove("IDEM_SECRET");
        }
        failure(&cmd.output().unwrap(), 2)
    };
    contains(
        &run(&args(&config, "/orders", "k"), true),
        "--method POST --path /orders: no rule",
    );
    contains(
        &run(&args(&config, "/payments", "\"k"), true),
        "--key \"k: the key is not a valid structured-field string",
    );
    contains(
        &run(&args(&config, "/payments", ""), true),
        "--key : the key is empty",
    );
    let err = run(&args(&config, "/payments", "k"), false);
    contains(&err, "hmac_secrets[0].env");
    contains(&err, "IDEM_SECRET");
    let mut with_source = args(&config, "/payments", "k");
    with_source.extend(["--caller-source".into(), "header:cookie".into()]);
    contains(
        &run(&with_source, true),
        "--caller-source header:cookie is not",
    );
    let broken = setup.dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"routes": [{"prefx": "/p"}]}"#).unwrap();
    contains(
        &run(&args(broken.to_str().unwrap(), "/payments", "k"), true),
        "routes[0].prefx",
    );
    contains(
        &run(&args("/nonexistent/plugin.json", "/payments", "k"), true),
        "--config /nonexistent/plugin.json",
    );
    let out = admin(
        &setup,
        None,
        "show",
        "k",
        &["--keystore", "keystore:8081", "--admin-token", ADMIN_TOKEN],
    );
    contains(&failure(&out, 2), "--keystore keystore:8081: give http://");
}
