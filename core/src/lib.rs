//! The core of the idempotency filter: every decision it makes, in plain Rust with no proxy-wasm
//! dependency. [`stream`] is the per-request state machine, [`background`] the root context's work,
//! [`settlement`] what the end of an attempt means; they reach Envoy only through the [`host::Host`]
//! and [`host::SharedData`] traits, which the `idempotency-filter` crate (the proxy-wasm adapter)
//! implements with hostcalls.

pub mod background;
pub mod budget;
pub mod claim;
pub mod config;
pub mod configure;
pub mod expiry;
pub mod fingerprint;
pub mod found;
pub mod grpc;
pub mod host;
pub mod key;
pub mod keystore_client;
pub mod l1;
pub mod mac;
pub mod metrics;
pub mod outcome;
pub mod problem;
pub mod record;
pub mod replay;
pub mod reply;
pub mod reroute;
pub mod scope;
pub mod settlement;
pub mod stream;

#[cfg(test)]
mod testing;
