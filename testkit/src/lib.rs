//! What the filter's end-to-end tests and the key store's backend tests both start: `redis-server`
//! nodes (plain or with any extra arguments, e.g. TLS) and three-master Redis Clusters, each in a
//! temporary directory on a free port. Test-only: a failure to start is a panic with the reason.

#![allow(clippy::panic, clippy::expect_used)] // a harness that cannot start must fail the test

pub mod redis;
