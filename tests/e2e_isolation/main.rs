//! Isolation and secrets, end to end:
//! - the same key from two callers never shares a record, through two Envoys sharing one key
//!   store, a caller who did not make a request can never obtain its replayed response, and a
//!   request without a caller is refused (no anonymous scope is named);
//! - the key store requires its bearer token when configured (a filter without it gets 401,
//!   counted as `store_error`, and answers 503 under `fail_closed`);
//! - keys and caller values leave Envoy only as keyed hashes: every request the filter sends to
//!   the key store is recorded, and with the Redis backend every Redis key and value is scanned
//!   for the raw key, the caller credential and the request body's marker;
//! - none of them appears in any log line of a run (Envoy with the filter's debug lines, the key
//!   store's stderr).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod callers;
#[path = "../hardening/mod.rs"]
mod hardening;
mod hashes;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use hardening::*;
use idempotency_filter::scope::{Caller, RecordKey};
use idempotency_testkit::redis::RedisServer;
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "isolation-secret-0123456789abcdef0123";

fn plugin(token: Option<&str>) -> String {
    Plugin::payments(SECRET)
        .caller_header("authorization")
        .set("failure_mode", "fail_closed")
        .keystore(1000, token)
        .json()
}

fn id(resp: &Resp) -> Value {
    resp.json()["id"].clone()
}
