//! Integration tests: one behaviour suite run against every backend through the real HTTP layer,
//! plus Redis-specific failure tests and a smoke test of the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod binary;
mod common;
mod hostile;
mod memory;
mod redis_cluster;
mod redis_fast_fail;
mod redis_full;
mod redis_pipelined;
mod redis_single;
mod redis_tls;
mod suite;
