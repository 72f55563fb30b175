//! Helpers shared by the hardening tests (`e2e_faults`, `e2e_hostile`, `e2e_isolation`):
//! stand-ins for misbehaving peers that the real processes cannot imitate (a key store that
//! stalls, errs, talks garbage or cuts its answer; an upstream that resets), a raw HTTP/1.1
//! client for requests no well-behaved client library would send, and the health checks every
//! fault run ends with (Envoy alive, `/ready` LIVE, no panic or critical line in its log).

#![allow(dead_code, unused_imports)] // each test binary uses its own subset

mod fake_keystore;
mod raw_http;
mod resetting_upstream;

pub use fake_keystore::*;
pub use raw_http::*;
pub use resetting_upstream::*;

use std::collections::HashMap;

use crate::support::Envoy;

/// Asserts Envoy survived: the process runs, admin `/ready` answers `LIVE`, and its log holds no
/// panic and no critical line (the filter's panic hook logs at critical level).
pub async fn assert_envoy_healthy(envoy: &mut Envoy, what: &str) {
    assert!(envoy.process_alive(), "{what}: Envoy exited");
    let ready = envoy.admin_ready().await;
    assert_eq!(
        ready,
        Ok((200, "LIVE".to_owned())),
        "{what}: Envoy /ready is not LIVE"
    );
    assert_clean_log(envoy, what);
}

/// Asserts Envoy's log has no `panicked` and no `[critical]` line.
pub fn assert_clean_log(envoy: &Envoy, what: &str) {
    let log = envoy.full_log();
    for line in log.lines() {
        assert!(
            !line.contains("panicked") && !line.contains("[critical]"),
            "{what}: Envoy logged a panic or a critical line: {line}"
        );
    }
}

/// The filter's metric, 0 when Envoy has not created it yet.
pub async fn metric(envoy: &Envoy, name: &str) -> u64 {
    envoy.metric(name).await.unwrap_or(0)
}

/// The filter's metrics of interest (one admin call), for before/after comparisons.
pub async fn metrics(envoy: &Envoy) -> HashMap<&'static str, u64> {
    let stats = envoy.stats().await;
    let mut out = HashMap::new();
    for name in [
        "executed",
        "replayed",
        "conflict",
        "mismatch",
        "missing_key",
        "invalid_key",
        "too_large",
        "store_error",
        "fail_open",
        "released",
        "not_covered",
        "not_replayable",
        "unauthenticated",
        "unknown_outcome",
        "unknown_outcome_answered",
        "renewal_refused",
        "unverified_record",
    ] {
        let suffix = format!("idempotency.{name}");
        let value = stats
            .iter()
            .find(|(stat, _)| **stat == suffix || stat.ends_with(&format!(".{suffix}")))
            .map_or(0, |(_, value)| *value);
        out.insert(name, value);
    }
    out
}

/// The metrics that changed between `before` and `after`, as `name+N` (sorted by name).
pub fn counted(
    before: &HashMap<&'static str, u64>,
    after: &HashMap<&'static str, u64>,
) -> Vec<String> {
    let mut names: Vec<&&str> = after.keys().collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let delta = after[*name].saturating_sub(*before.get(*name).unwrap_or(&0));
            (delta > 0).then(|| format!("{name}+{delta}"))
        })
        .collect()
}

/// The delta of one metric.
pub fn delta(
    before: &HashMap<&'static str, u64>,
    after: &HashMap<&'static str, u64>,
    name: &str,
) -> u64 {
    after
        .get(name)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(name).copied().unwrap_or(0))
}

/// Where `needle` first occurs in `haystack` (bytes).
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `needle` occurs in `haystack` (bytes).
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    find(haystack, needle.as_bytes()).is_some()
}
