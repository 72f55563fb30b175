//! The hostile input catalog: malformed and hostile requests (keys, bodies, headers, methods and
//! paths), data-driven, through one Envoy with the filter (and the memory key store) in front of
//! payments-demo. Each case is sent twice on fresh connections (a raw HTTP/1.1 client, or h2c
//! with trailers) and checks:
//! - the answer's status is the one in the table, on both sends;
//! - how many times the upstream executed it: a case marked as executing runs once and its
//!   second send is a replay; any other runs zero times;
//!
//! and after the whole catalog: the upstream never ran a request twice (each case's body marker
//! appears at most once in the payments list), Envoy is alive (`/ready` LIVE), and its log holds
//! no `panicked` and no `critical` line. Every case prints a `HOSTILE|...` row (`--nocapture`):
//! `docs/hostile.md` is built from them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod catalog;
#[path = "../hardening/mod.rs"]
mod hardening;
mod request;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;

use catalog::catalog;
use hardening::*;
use request::*;
use support::*;

/// Request bodies over this get 413 in this catalog.
const LIMIT: usize = 1024;

#[tokio::test]
async fn hostile_input_catalog() {
    let upstream = Upstream::start().await;
    let keystore = Keystore::start().await;
    let plugin = Plugin::payments("hostile-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .set("max_body_bytes", LIMIT)
        .keystore(1000, None);
    let mut envoy =
        Envoy::start(&EnvoyOptions::with_filter(upstream.port, plugin).keystore(keystore.port))
            .await;
    let run = &new_key()[..8];
    let cases = catalog(envoy.port, run);
    assert!(cases.len() >= 40, "only {} cases", cases.len());

    let mut failures = Vec::new();
    let mut executed = 0;
    for (i, case) in cases.iter().enumerate() {
        let before_posts = upstream.post_requests().await;
        let before = metrics(&envoy).await;
        let first = run_case(&envoy, &case.req).await;
        let after = metrics(&envoy).await;
        let second = run_case(&envoy, &case.req).await;
        let posts = upstream.post_requests().await - before_posts;
        let mut problems = Vec::new();
        if first.status != case.expect {
            problems.push(format!(
                "first answer {} (expected {})",
                first.status, case.expect
            ));
        }
        if second.status != first.status {
            problems.push(format!(
                "second answer {} after {}",
                second.status, first.status
            ));
        }
        let expected_posts = u64::from(case.executes);
        if posts != expected_posts {
            problems.push(format!(
                "upstream executed {posts}× (expected {expected_posts})"
            ));
        }
        if case.executes && !(second.replayed && second.body == first.body) {
            problems.push("second send was not a replay of the first".into());
        }
        if second.replayed && second.set_cookie {
            problems.push("a replay carried a set-cookie".into());
        }
        if !case.executes && (first.replayed || second.replayed) {
            problems.push("a replay for a case that never executed".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "#{} {} / {}: {} — first: {} {:?}",
                i + 1,
                case.group,
                case.name,
                problems.join("; "),
                first.who(),
                String::from_utf8_lossy(&first.body)
            ));
        }
        executed += posts;
        println!(
            "HOSTILE|{}|{}|{}|{}|{}|{}|{}|",
            i + 1,
            case.group,
            case.name.replace('|', "\\|"),
            first.status,
            first.who(),
            if case.executes {
                "1 (retry replayed)"
            } else {
                "0"
            },
            counted(&before, &after).join(", ")
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Never twice: every case's marker appears in at most one payment.
    let payments = upstream.payments().await;
    let mut per_marker: HashMap<String, usize> = HashMap::new();
    for payment in &payments {
        if let Some(marker) = payment["request"]["case"].as_str() {
            *per_marker.entry(marker.to_owned()).or_default() += 1;
        }
    }
    for (marker, count) in &per_marker {
        assert_eq!(*count, 1, "{marker} was executed {count} times");
    }
    assert_eq!(upstream.post_requests().await, executed);
    assert_envoy_healthy(&mut envoy, "hostile catalog").await;
    println!(
        "HOSTILE-SUMMARY|{} cases, {} sends, {} upstream executions, {} payments",
        cases.len(),
        cases.len() * 2,
        executed,
        payments.len()
    );
}

async fn run_case(envoy: &Envoy, req: &Req) -> Answer {
    run(envoy, req).await
}
