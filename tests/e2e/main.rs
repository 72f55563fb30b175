//! End-to-end tests of the filter in one Envoy with Envoy's shared data as the only store
//! (`"keystore"` absent): the rows of the README's behaviour table that apply to a single gateway,
//! and the in-band expiry, whose replay is also checked through a second gateway and the key store.
//!
//! Each test starts its own payments upstream and Envoy (so tests run in parallel) and uses fresh
//! keys. "The upstream executed N times" is read from the upstream's own `/_demo/stats`.
//! Needs `make build` (the Wasm filter and payments-demo) and Envoy (see `support`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod admission;
mod expiry;
mod replay;
mod settle;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;
use serde_json::{json, Value};
use support::mesh::{Mesh, MeshOptions};
use support::*;

/// The demo's configuration: the key is required for `POST /payments`, the caller is the
/// `authorization` header, no key store.
fn plugin(extra: Value) -> String {
    Plugin::payments("e2e-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .merge(&extra)
        .json()
}
