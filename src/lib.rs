//! An Envoy proxy-wasm filter that makes retried POST/PATCH requests safe with the
//! `Idempotency-Key` header.
//!
//! This crate is the thin adapter: every decision lives in `idempotency-filter-core` (re-exported
//! here whole), which never calls proxy-wasm; `adapter` maps Envoy's callbacks and hostcalls onto
//! it through [`host::Host`].

pub use idempotency_filter_core::*;

#[cfg(target_arch = "wasm32")]
mod adapter;
