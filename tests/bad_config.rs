//! An invalid filter configuration is refused at load: Envoy exits or never becomes ready, and
//! its log names the offending field. Weak secrets (short, a shipped placeholder, a missing
//! environment variable) are refused the same way.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::*;

/// Starts Envoy with `plugin` and asserts it is refused with a log line naming one of `fields`
/// (no log check when `fields` is empty).
async fn assert_refused(plugin: &str, fields: &[&str]) {
    let options = EnvoyOptions::with_filter(closed_port(), plugin);
    match Envoy::try_start(&options, Duration::from_secs(20)).await {
        Ok(envoy) => panic!(
            "Envoy accepted the plugin configuration {plugin}; log tail:\n{}",
            envoy.log_tail(40)
        ),
        Err(err) => {
            assert!(
                !err.log.contains("yaml-cpp"),
                "the harness rendered broken YAML:\n{}",
                err.log
            );
            if let Some(status) = err.exit {
                assert!(!status.success(), "Envoy exited 0 with {plugin}");
            }
            assert!(
                fields.is_empty() || fields.iter().any(|field| err.log.contains(field)),
                "the log does not name {fields:?} for {plugin}; log tail:\n{}",
                err.log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

#[tokio::test]
async fn wrong_type_is_refused_naming_the_field() {
    assert_refused(r#"{"max_body_bytes":"big"}"#, &["max_body_bytes"]).await;
}

#[tokio::test]
async fn rule_with_both_prefix_and_exact_is_refused() {
    assert_refused(
        r#"{"routes":[{"prefix":"/a","exact":"/b"}]}"#,
        &["routes", "prefix", "exact"],
    )
    .await;
}

#[tokio::test]
async fn a_memory_budget_the_vm_cannot_hold_is_refused_naming_the_field() {
    // The VM has 1 GiB; the budget must leave room for the filter itself.
    let plugin = Plugin::payments(STRONG)
        .set("memory_budget_bytes", 1u64 << 30)
        .json();
    assert_refused(&plugin, &["memory_budget_bytes"]).await;
}

#[tokio::test]
async fn unknown_field_is_refused_naming_it() {
    assert_refused(r#"{"max_body_byte":1024}"#, &["max_body_byte"]).await;
}

#[tokio::test]
async fn not_json_is_refused() {
    assert_refused(r#"{"routes": ["#, &[]).await;
}

#[tokio::test]
async fn weak_or_missing_secrets_are_refused_naming_the_field() {
    for (plugin, field) in [
        (r#"{"max_body_bytes":1024}"#.to_string(), "hmac_secret"),
        (
            r#"{"hmac_secret":"sixteen-bytes-ok"}"#.to_string(),
            "hmac_secret",
        ),
        (r#"{"hmac_secret":"change-me"}"#.to_string(), "hmac_secret"),
        (
            r#"{"hmac_secret":"replace-with-a-long-random-secret"}"#.to_string(),
            "hmac_secret",
        ),
        (
            format!(r#"{{"hmac_secrets":["{STRONG}","short"]}}"#),
            "hmac_secrets[1]",
        ),
        (
            r#"{"hmac_secret":{"env":"IDEMPOTENCY_SECRET_NOT_SET"}}"#.to_string(),
            "hmac_secret.env",
        ),
        (
            format!(r#"{{"hmac_secret":"{STRONG}","anonymous":"allow"}}"#),
            "anonymous_scope",
        ),
        (
            format!(
                r#"{{"hmac_secret":"{STRONG}","max_response_bytes":16777216,"keystore":{{"cluster":"keystore"}}}}"#
            ),
            "max_response_bytes",
        ),
    ] {
        assert_refused(&plugin, &[field]).await;
    }
}

const STRONG: &str = "bad-config-secret-0123456789abcdef0123";

#[tokio::test]
async fn a_valid_configuration_is_accepted() {
    let options = EnvoyOptions::with_filter(
        closed_port(),
        format!(r#"{{"max_body_bytes":1024,"hmac_secret":"{STRONG}"}}"#),
    );
    Envoy::start(&options).await;
}
