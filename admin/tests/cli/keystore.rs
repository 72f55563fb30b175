//! The key store the tool talks to: a real `idempotency-keystore` process on the memory or the
//! Redis backend, fed the filter's own callouts.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use idempotency_testkit::redis::RedisServer;
use serde_json::Value;

use super::V1_TOKEN;

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
pub struct Keystore {
    _proc: Proc,
    pub base: String,
    _redis: Option<RedisServer>,
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    Redis,
}

impl Keystore {
    pub fn start(backend: Backend, admin_token: Option<&str>) -> Keystore {
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
    pub fn send(&self, callout: &idempotency_filter::host::Callout) -> Value {
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
