//! Which of Envoy's shutdown paths call the plugin at all (docs/hardening.md, "Leaving cleanly"):
//! the root context logs `the plugin is being unloaded (root context on_done)` when Envoy calls
//! its `on_done`, and then settles what it holds (`unloading: …`). Real Envoy, real key store:
//! - SIGTERM: Envoy calls `on_done` and exits without waiting for the callouts it starts (what it
//!   holds is left to the key store's leases);
//! - `POST /drain_listeners`: the listeners drain, the plugin stays loaded;
//! - a listener update (LDS, from a watched file) that removes the filter: the old filter chain
//!   drains (`--drain-time-s 1`), its plugin is unloaded, and the writes it sends then land.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::keystore::{KeystoreProcess, StoreBackend};
use support::*;

const UNLOADED: &str = "the plugin is being unloaded (root context on_done)";

fn plugin() -> String {
    Plugin::payments("shutdown-e2e-secret-0123456789abcdef0123456789abcdef")
        .set("lock_lease_ms", 2000)
        .keystore(1000, None)
        .json()
}

/// The key store's count of `complete` requests that stored a record.
async fn stored(keystore: &KeystoreProcess) -> u64 {
    let stored = |l: &str| {
        l.starts_with("keystore_requests_total")
            && l.contains("op=\"complete\"")
            && l.contains("outcome=\"stored\"")
    };
    keystore.metric_sum(stored).await as u64
}

/// A request the upstream works on for 3 s, through `envoy`, left running.
async fn in_flight(envoy: &Envoy, upstream: &Upstream) {
    let request = post_payment(
        &client(),
        envoy,
        "Bearer alice",
        Some(&new_key()),
        r#"{"amount":9}"#,
    )
    .header("x-demo-delay-ms", "3000");
    tokio::spawn(request.send());
    upstream.wait_post_requests(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_drain_listeners() {
    let (upstream, keystore) = tokio::join!(
        Upstream::start(),
        KeystoreProcess::start(StoreBackend::Memory, None)
    );
    let options = EnvoyOptions::with_filter(upstream.port, plugin()).keystore(keystore.port);
    let mut envoy = Envoy::start(&options).await;
    in_flight(&envoy, &upstream).await;

    let drained = reqwest::Client::new()
        .post(envoy.admin_url("/drain_listeners?graceful"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    let on_drain = envoy.wait_for_log(UNLOADED, Duration::from_secs(2)).await;

    let exit = envoy.sigterm(Duration::from_secs(10)).await;
    assert!(exit.is_some(), "Envoy still running 10 s after SIGTERM");
    let log = envoy.full_log();
    let on_sigterm = log.contains(UNLOADED);
    let settled: Vec<&str> = log.lines().filter(|l| l.contains("unloading")).collect();
    let landed = stored(&keystore).await;
    eprintln!("drain_listeners calls on_done: {on_drain}; SIGTERM calls on_done: {on_sigterm}; records stored: {landed}");
    eprintln!("{}", settled.join("\n"));
    assert!(!on_drain, "drain_listeners unloaded the plugin");
    assert!(on_sigterm, "{}", envoy.log_tail(40));
}

/// The bootstrap of a gateway whose listener comes from `dir/lds.yaml` (watched).
fn lds_bootstrap(options: &EnvoyOptions, dir: &Path) -> (String, String) {
    let rendered = options.render();
    let start = rendered.find("  listeners:\n").unwrap();
    let end = rendered.find("  clusters:").unwrap();
    let listener: Vec<&str> = rendered[start..end].lines().skip(1).collect();
    let mut lds = String::from("resources:\n");
    for (i, line) in listener.iter().enumerate() {
        lds.push_str(line.strip_prefix("  ").unwrap_or(line));
        lds.push('\n');
        if i == 0 {
            lds.push_str("  \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n");
        }
    }
    let bootstrap = format!(
        "{}node: {{ id: gateway, cluster: gateways }}\ndynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source:\n      path: {}\n      watched_directory: {{ path: {} }}\nstatic_resources:\n{}",
        &rendered[..rendered.find("static_resources:").unwrap()],
        json!(dir.join("lds.yaml").display().to_string()),
        json!(dir.display().to_string()),
        &rendered[end..],
    );
    (bootstrap, lds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_update_that_removes_the_filter_unloads_the_plugin() {
    let (upstream, keystore) = tokio::join!(
        Upstream::start(),
        KeystoreProcess::start(StoreBackend::Memory, None)
    );
    let dir = support::process::tempdir();
    let with_filter = EnvoyOptions::with_filter(upstream.port, plugin()).keystore(keystore.port);
    let (bootstrap, lds) = lds_bootstrap(&with_filter, dir.path());
    std::fs::write(dir.path().join("lds.yaml"), &lds).unwrap();
    let mut options = with_filter.clone();
    options.bootstrap = Some(bootstrap);
    let options = options.envoy_arg("--drain-time-s").envoy_arg("1");
    let envoy = Envoy::start(&options).await;
    in_flight(&envoy, &upstream).await;

    // The same listener without the filter, moved into place (Envoy reloads on the move).
    let mut without = with_filter.clone();
    without.plugin = None;
    let (_, lds) = lds_bootstrap(&without, dir.path());
    let staged = dir.path().join("lds.next");
    std::fs::write(&staged, lds).unwrap();
    std::fs::rename(&staged, dir.path().join("lds.yaml")).unwrap();
    let unloaded = envoy.wait_for_log(UNLOADED, Duration::from_secs(15)).await;
    let log = envoy.full_log();
    let settled: Vec<&str> = log.lines().filter(|l| l.contains("unloading")).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stored(&keystore).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let landed = stored(&keystore).await;
    eprintln!(
        "a listener update removing the filter calls on_done: {unloaded}; records stored: {landed}"
    );
    eprintln!("{}", settled.join("\n"));
    assert!(unloaded, "{}", envoy.log_tail(40));
    // The request's stream ended with the old filter chain (an unknown outcome, handed to the
    // root context), and the root context's write landed: Envoy runs on.
    assert_eq!(landed, 1, "{}", envoy.log_tail(40));
}
