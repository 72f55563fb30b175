//! Fault injection, end to end: the real Envoy with the real filter, the real key store and real
//! Redis where they apply, and stand-ins where the real process cannot misbehave the way a fault
//! needs (see `hardening`): a key store that stalls past the callout timeout, answers 500,
//! answers garbage or cuts its answer; an upstream that resets the connection.
//!
//! Every run checks what the client got, how many times the upstream executed, that Envoy is
//! alive (`/ready` LIVE, no panic or critical line in its log), that no claim leaked (the same key
//! or a new one executes afterwards, or the retry does what the README says) and which metrics
//! counted it. Each run prints a `FAULT|...` row (`--nocapture`): the fault table of docs/hardening.md is built from them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod burst;
#[path = "../hardening/mod.rs"]
mod hardening;
mod keystore;
#[path = "../support/mod.rs"]
mod support;
mod upstream;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hardening::*;
use idempotency_testkit::redis::RedisServer;
use support::keystore::{KeystoreProcess, StoreBackend};
use support::*;

/// The demo's configuration with the key store, a failure mode, a callout timeout and a lease.
fn plugin(failure_mode: &str, timeout_ms: u64, lease_ms: u64) -> String {
    Plugin::payments("faults-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .set("failure_mode", failure_mode)
        .set("lock_lease_ms", lease_ms)
        .keystore(timeout_ms, None)
        .json()
}

/// One row of the fault table in docs/hardening.md, printed with `--nocapture`.
fn row(fault: &str, client: &str, executions: &str, leaked: &str, counted: &[String]) {
    println!(
        "FAULT|{fault}|{client}|{executions}|no|{leaked}|{}|",
        counted.join(", ")
    );
}
