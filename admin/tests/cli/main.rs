//! The `idempotency-admin` binary against a real `idempotency-keystore` process (memory and Redis
//! backends), with records written through the key store's v1 API exactly as the filter writes
//! them (the filter's own key derivation, codec and callout bodies).
//!
//! Needs `<target>/debug/idempotency-keystore` (`make build`, or `cargo build -p
//! idempotency-keystore`) and, for the Redis cases, `redis-server`.
//!
//! - [`key`]: the record key as the filter derives it, and input that names no record;
//! - [`records`]: `show` and `purge` of completed, in-flight, absent and foreign records;
//! - [`access`]: the admin token, and a key store without an admin API.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod access;
mod key;
mod keystore;
mod records;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use idempotency_filter::config::{Config, KeystoreConfig};
use idempotency_filter::fingerprint::Fingerprinter;
use idempotency_filter::keystore_client;
use idempotency_filter::record::{Outcome, Record, StoredResponse};
use idempotency_filter::scope::{Caller, RecordKey};
use serde_json::Value;

use keystore::{Backend, Keystore};

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
        ..StoredResponse::default()
    })
}

/// Claims `key` and completes it with `record`, sealed with the first of `secrets` (the filter's
/// claim and complete callouts).
fn store(ks: &Keystore, cfg: &KeystoreConfig, key: &RecordKey, record: &Record) {
    let fp = record.fingerprint;
    let claimed = ks.send(&keystore_client::claim(
        cfg,
        key,
        &fp,
        "tok-1",
        &terms(30_000),
    ));
    assert_eq!(claimed["outcome"], "claimed", "{claimed}");
    let stored = ks.send(&keystore_client::complete(
        cfg, key, "tok-1", record, 3_600_000,
    ));
    assert_eq!(stored["outcome"], "stored", "{stored}");
}

/// A claim's terms as the filter sends them on a route with the default policy (`lock`).
fn terms(lease_ms: u64) -> keystore_client::ClaimTerms {
    keystore_client::ClaimTerms {
        lease_ms,
        wait_ms: 0,
        abandoned: keystore_client::AbandonedPolicy::Report,
        retention_ms: 3_600_000,
    }
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

/// `show` for Alice's request with `key` against `ks`: what the tool prints.
fn show(setup: &Setup, ks: &Keystore, key: &str) -> String {
    stdout(&admin(setup, Some(ks), "show", key, &[]))
}

/// `show --json` with `extra` arguments, parsed.
fn show_json(setup: &Setup, ks: &Keystore, key: &str, extra: &[&str]) -> Value {
    let args = [&["--json"], extra].concat();
    serde_json::from_str(&stdout(&admin(setup, Some(ks), "show", key, &args))).unwrap()
}

/// `show` against the key store at `keystore` with `admin_token`, whatever its outcome.
fn show_at(setup: &Setup, key: &str, keystore: &str, admin_token: &str) -> Output {
    let extra = ["--keystore", keystore, "--admin-token", admin_token];
    admin(setup, None, "show", key, &extra)
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
