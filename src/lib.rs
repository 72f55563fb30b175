//! An Envoy proxy-wasm filter that makes retried POST/PATCH requests safe with the
//! `Idempotency-Key` header.
//!
//! Every decision lives in plain Rust modules that never call proxy-wasm ([`stream`] and what it
//! uses); [`adapter`] maps Envoy's callbacks and hostcalls onto them through [`host::Host`].

pub mod background;
pub mod claim;
pub mod config;
pub mod configure;
pub mod expiry;
pub mod fingerprint;
pub mod found;
pub mod host;
pub mod key;
pub mod keystore_client;
pub mod l1;
pub mod metrics;
pub mod outcome;
pub mod problem;
pub mod record;
pub mod reply;
pub mod scope;
pub mod settlement;
pub mod stream;

#[cfg(target_arch = "wasm32")]
mod adapter;

#[cfg(test)]
mod testing;
