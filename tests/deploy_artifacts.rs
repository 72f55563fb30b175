//! Every filter configuration shipped for deployment (envoy/, deploy/compose/, deploy/istio/) is a valid
//! configuration of this filter: parsed here by the filter's own `Config::parse`, the code Envoy runs at
//! plugin load. The YAML files are read by tests/deploy/plugin_configs.py (PyYAML, installed in .venv by
//! `make setup`); the Python suite (tests/deploy/, `make validate`) checks the rest of each artifact.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use idempotency_filter::config::{Config, HeadersMode};
use serde_json::Value;

/// The Istio name of the in-mesh key store's cluster (deploy/kubernetes/keystore.yaml).
const ISTIO_KEYSTORE_CLUSTER: &str =
    "outbound|8081||idempotency-keystore.idempotency.svc.cluster.local";
/// The key-store cluster the waypoint's EnvoyFilter and Envoy Gateway's EnvoyPatchPolicy add.
const ADDED_KEYSTORE_CLUSTER: &str = "idempotency-keystore";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python(root: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("DEPLOY_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root.join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `make setup` (or set DEPLOY_PYTHON to a Python with PyYAML)",
        venv.display()
    );
    venv
}

struct Entry {
    source: String,
    kind: String,
    allow_stop: bool,
    config: String,
}

fn shipped_configs() -> Vec<Entry> {
    let root = root();
    let out = Command::new(python(&root))
        .arg(root.join("tests/deploy/plugin_configs.py"))
        .current_dir(&root)
        .output()
        .expect("run tests/deploy/plugin_configs.py");
    assert!(
        out.status.success(),
        "plugin_configs.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<Value> =
        serde_json::from_slice(&out.stdout).expect("plugin_configs.py prints JSON");
    list.into_iter()
        .map(|v| Entry {
            source: v["source"].as_str().unwrap().to_string(),
            kind: v["kind"].as_str().unwrap().to_string(),
            allow_stop: v["allow_on_headers_stop_iteration"].as_bool().unwrap(),
            config: v["config"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Parses a shipped configuration; secrets named by `{"env": ...}` get a stand-in value, as the
/// deployment's environment would give them.
fn parse(config: &str) -> Result<Config, idempotency_filter::config::ConfigError> {
    Config::parse_with_env(config.as_bytes(), &|name| {
        Some(format!("stand-in-for-{name}-0123456789abcdef0123456789"))
    })
}

#[test]
fn every_shipped_filter_config_parses_and_matches_its_host() {
    let entries = shipped_configs();
    // Never pass on an empty or shrunken harvest: these files must all carry a filter configuration.
    for expected in [
        "envoy/single-gateway.yaml",
        "envoy/demo-gateway-a.yaml",
        "envoy/demo-gateway-b.yaml",
        "envoy/demo-gateway-detached.yaml",
        "envoy/production-redis.yaml",
        "deploy/compose/gateway-a.yaml",
        "deploy/compose/gateway-b.yaml",
        "deploy/istio/wasmplugin-mesh.yaml",
        "deploy/istio/wasmplugin-workload.yaml",
        "deploy/istio/trafficextension-mesh.yaml",
        "deploy/istio/trafficextension-workload.yaml",
        "deploy/istio/envoyfilter.yaml",
        "deploy/istio/wasmplugin-waypoint.yaml",
        "deploy/istio/trafficextension-waypoint.yaml",
        "deploy/envoy-gateway/envoyextensionpolicy.yaml",
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e.source.starts_with(&format!("{expected}#"))),
            "no filter configuration found in {expected}"
        );
    }

    for e in &entries {
        assert!(
            !e.config.trim().is_empty(),
            "{}: empty filter configuration",
            e.source
        );
        let config =
            parse(&e.config).unwrap_or_else(|err| panic!("{}: {err}\n{}", e.source, e.config));
        let raw: Value = serde_json::from_str(&e.config).unwrap();

        // The headers mode must fit the host: "hold" needs allow_on_headers_stop_iteration, which
        // WasmPlugin/TrafficExtension/EnvoyExtensionPolicy cannot set, so those must stream; Envoy
        // configs that set it hold.
        let want = if e.allow_stop {
            HeadersMode::Hold
        } else {
            HeadersMode::Stream
        };
        assert_eq!(
            config.headers_mode, want,
            "{} ({}): headers_mode does not fit allow_on_headers_stop_iteration={}",
            e.source, e.kind, e.allow_stop
        );

        if e.source.starts_with("deploy/istio/") || e.source.starts_with("deploy/envoy-gateway/") {
            let ks = config
                .keystore
                .as_ref()
                .unwrap_or_else(|| panic!("{}: the mesh needs the key store", e.source));
            // Sidecars have Istio's cluster of the key store Service; a waypoint and Envoy Gateway
            // have none, and use the one their manifests add (tests/deploy checks that they do).
            let cluster =
                if e.source.contains("waypoint") || e.source.starts_with("deploy/envoy-gateway/") {
                    ADDED_KEYSTORE_CLUSTER
                } else {
                    ISTIO_KEYSTORE_CLUSTER
                };
            assert_eq!(ks.cluster, cluster, "{}: key-store cluster", e.source);
            assert!(
                ks.token.is_some(),
                "{}: the in-mesh key store requires a token",
                e.source
            );
        }
        // Outside the demos, secrets come from the Wasm VM's environment, never inline.
        if e.source.starts_with("deploy/istio/")
            || e.source.starts_with("deploy/envoy-gateway/")
            || e.source.contains("production")
        {
            let secret = if raw["hmac_secrets"].is_array() {
                &raw["hmac_secrets"][0]
            } else {
                &raw["hmac_secret"]
            };
            assert!(
                secret["env"].is_string(),
                "{}: the secret must come from the VM's environment: {secret}",
                e.source
            );
            // The replay listener's filter never calls the key store (README, "Routed replays").
            assert!(
                config.replay_listener || raw["keystore"]["token"]["env"].is_string(),
                "{}: the key-store token must come from the VM's environment",
                e.source
            );
        }
        // A filter that routes replays needs, in the same file, the replay listener's filter
        // with the same secret (it checks the outer filter's tickets) and L1 (it reads records).
        if config.routed_replay {
            let file = e.source.split('#').next().unwrap_or_default();
            let listener = entries
                .iter()
                .filter(|other| other.source.starts_with(&format!("{file}#")))
                .filter_map(|other| parse(&other.config).ok())
                .find(|other| other.replay_listener)
                .unwrap_or_else(|| panic!("{}: routed_replay without a replay listener", e.source));
            assert_eq!(listener.secrets, config.secrets, "{}: secrets", e.source);
            assert_eq!(listener.l1_slots, config.l1_slots, "{}: l1_slots", e.source);
        }
        // Every shipped configuration with a key store sends its token.
        if let Some(ks) = &config.keystore {
            assert!(ks.token.is_some(), "{}: no key-store token", e.source);
        }
        if e.source.starts_with("deploy/compose/") || e.source.contains("demo-gateway") {
            assert_eq!(
                config.keystore.as_ref().map(|k| k.cluster.as_str()),
                Some("keystore"),
                "{}: the demo gateways share the key store",
                e.source
            );
        }
    }
}

#[test]
fn compose_gateways_carry_the_demo_filter_config_unchanged() {
    // The docker-compose demo must behave like `make demo`: same filter configuration as the local demo.
    let entries = shipped_configs();
    let config_of = |source: &str| {
        let e = entries
            .iter()
            .find(|e| e.source.starts_with(source))
            .unwrap_or_else(|| panic!("{source} not found"));
        parse(&e.config).unwrap()
    };
    for g in ["a", "b"] {
        assert_eq!(
            config_of(&format!("deploy/compose/gateway-{g}.yaml#")),
            config_of(&format!("envoy/demo-gateway-{g}.yaml#")),
            "gateway {g}"
        );
    }
}
