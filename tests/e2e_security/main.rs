//! The security model, end to end (real Envoy, the release `.wasm`, the real key store):
//! - a request without credentials is refused (401) unless an anonymous scope is named, and a
//!   named anonymous scope never meets a caller that has credentials;
//! - two callers with the same key and body never get each other's response, and no replay
//!   carries a `Set-Cookie`;
//! - a record altered in Redis (status, header, body, fingerprint, moved from another key,
//!   unsealed, sealed under a guessed secret) is never replayed nor executed again: each is
//!   answered `502 record-unverifiable`, counted as `unverified_record`, logged without its data;
//! - the secret and the key-store token come from the Wasm VM's environment;
//! - after a rotation (a new secret first, the old one second), records written under the old
//!   secret replay, and a claim in flight under it still answers 409;
//! - `//payments` and `/payments/../payments` are covered through the shipped
//!   `envoy/single-gateway.yaml` (it normalizes paths and merges slashes).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod callers;
#[path = "../hardening/mod.rs"]
mod hardening;
mod paths;
mod secrets;
#[path = "../support/mod.rs"]
mod support;
mod tampering;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hardening::*;
use idempotency_filter::config::Secrets;
use idempotency_filter::record::{Outcome, Record};
use idempotency_filter::scope::RecordKey;
use idempotency_testkit::redis::RedisServer;
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "security-e2e-secret-0123456789abcdef0123";
const OLD_SECRET: &str = "security-e2e-old-secret-0123456789abcdef";
const TOKEN: &str = "security-e2e-keystore-token-7c1d";

fn plugin(extra: Value) -> String {
    Plugin::payments(SECRET)
        .set("failure_mode", "fail_closed")
        .keystore(1000, Some(TOKEN))
        .merge(&extra)
        .json()
}

async fn keystore() -> Keystore {
    Keystore::start_backend("memory", &["--token", TOKEN]).await
}

fn anonymous(
    http: &reqwest::Client,
    envoy: &Envoy,
    key: &str,
    body: &str,
) -> reqwest::RequestBuilder {
    http.post(envoy.url("/payments"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
}
