//! The five gateways side by side, each in front of its own recording upstream: no filter, the
//! filter inline, the filter detached, the filter inline with routed replays (`replay: "routed"`,
//! the replay listener of README, "Routed replays"), and the filter detached with routed replays
//! (the first answer too comes through the replay listener). Their bootstraps differ only in the filter: the same
//! listener (HTTP/1.0 accepted, HTTP/1 trailers on, a `local_reply_config`), the same routes
//! and timeouts, the same clusters. The `local_reply_config` maps only requests that carry
//! `x-fidelity-shape`, so one row can show what it does to replays while every other row runs
//! under a connection manager without one.

use std::collections::HashMap;

use serde_json::json;

use crate::recorder::{Recorder, Script};
use crate::support::replay_listener::{self, ReplayListener};
use crate::support::{detached_cluster_yaml, Envoy, EnvoyOptions, Plugin};

/// The route timeout and the detached requests' timeout, equal so that the upstream sees the
/// same `x-envoy-expected-rq-timeout-ms` from the router and from a detached request.
const TIMEOUT_MS: u64 = 5000;

/// Which gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    None,
    Inline,
    Detached,
    /// Inline, and every replay routed through the replay listener.
    Routed,
    /// Detached, and every answer (the first one too) routed through the replay listener.
    DetachedRouted,
}

impl Kind {
    /// Whether the gateway has the replay listener (`replay: "routed"`).
    fn routed(self) -> bool {
        matches!(self, Kind::Routed | Kind::DetachedRouted)
    }
}

/// A gateway and the upstream only it talks to.
pub struct Gateway {
    pub kind: Kind,
    pub envoy: Envoy,
    /// A second listener, the same but for `proxy_100_continue: true`: the upstream, not Envoy,
    /// answers `Expect: 100-continue`.
    pub proxied_100_port: u16,
    pub upstream: Recorder,
}

/// Starts the gateways, each with its own upstream serving `scripts`.
pub async fn start(scripts: &HashMap<String, Script>) -> Vec<Gateway> {
    let mut gateways = Vec::new();
    for kind in [
        Kind::None,
        Kind::Inline,
        Kind::Detached,
        Kind::Routed,
        Kind::DetachedRouted,
    ] {
        let upstream = Recorder::start(scripts.clone()).await;
        gateways.push(start_one(kind, "hold", upstream).await);
    }
    gateways
}

/// One gateway of `kind` with the filter's `headers_mode` (`hold` or `stream`) in front of
/// `upstream`.
pub async fn start_one(kind: Kind, headers_mode: &str, upstream: Recorder) -> Gateway {
    let options = EnvoyOptions {
        bootstrap: Some(bootstrap(kind, headers_mode, upstream.port)),
        ..EnvoyOptions::with_filter(upstream.port, "")
    };
    let envoy = Envoy::start(&options).await;
    let proxied_100_port = listener_port(&envoy, "proxied_100").await;
    Gateway {
        kind,
        envoy,
        proxied_100_port,
        upstream,
    }
}

/// The port of the listener named `name`, from the admin API.
async fn listener_port(envoy: &Envoy, name: &str) -> u16 {
    let listeners: serde_json::Value = reqwest::get(envoy.admin_url("/listeners?format=json"))
        .await
        .expect("admin /listeners")
        .json()
        .await
        .expect("admin /listeners JSON");
    listeners["listener_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == name)
        .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no listener {name} in {listeners}"))
}

/// The plugin: every `POST`, `PATCH` and `PUT` under `/fid/` is covered, callers without
/// credentials share one scope, and `Idempotency-Expires` is off (a documented addition of the
/// filter, not a fidelity question).
fn plugin(kind: Kind, headers_mode: &str) -> Option<String> {
    let mut rule = json!({"prefix": "/fid/", "methods": ["POST", "PATCH", "PUT"]});
    let mut plugin = Plugin::signed("fidelity-e2e-secret-0123456789abcdef0123456789abcdef");
    match kind {
        Kind::None => return None,
        Kind::Inline => {}
        Kind::Routed => {
            rule["replay"] = json!("routed");
            plugin = plugin.set("routed_replay", true);
        }
        Kind::Detached | Kind::DetachedRouted => {
            rule["execution"] = json!("detached");
            rule["upstream_cluster"] = json!("payments_detached");
            rule["upstream_timeout_ms"] = json!(TIMEOUT_MS);
        }
    }
    if kind == Kind::DetachedRouted {
        rule["replay"] = json!("routed");
        plugin = plugin.set("routed_replay", true);
    }
    Some(
        plugin
            .set("routes", json!([rule]))
            .set("anonymous_scope", "fidelity")
            .set("expires_header", false)
            .set("headers_mode", headers_mode)
            .json(),
    )
}

fn bootstrap(kind: Kind, headers_mode: &str, port: u16) -> String {
    let mut options = match plugin(kind, headers_mode) {
        Some(plugin) => EnvoyOptions::with_filter(port, plugin),
        None => EnvoyOptions {
            plugin: None,
            ..EnvoyOptions::with_filter(port, "")
        },
    };
    options.route_timeout = Some(std::time::Duration::from_millis(TIMEOUT_MS));
    if kind.routed() {
        options.replay = Some(ReplayListener::Internal);
    }
    let rendered = options.render();
    let listener = "          merge_slashes: true\n";
    let (before, after) = rendered
        .split_once(listener)
        .expect("the rendered bootstrap has merge_slashes");
    let (after, _) = after
        .split_once("  clusters:")
        .expect("the rendered bootstrap has clusters");
    // The replay listener is rendered after the ingress listener: it is not copied as the
    // `proxied_100` listener is, and its cluster joins the clusters.
    let (after, replay) = match after.split_once("\n  - name: idempotency_replay\n") {
        Some((after, replay)) => (
            format!("{after}\n"),
            format!("  - name: idempotency_replay\n{replay}"),
        ),
        None => (after.to_owned(), String::new()),
    };
    let replay_cluster = if kind.routed() {
        replay_listener::cluster(ReplayListener::Internal)
    } else {
        String::new()
    };
    let (_, first_listener) = before
        .split_once("  listeners:\n")
        .expect("the rendered bootstrap has listeners");
    let proxied_100 = format!(
        "{}{listener}          proxy_100_continue: true\n{LISTENER_EXTRA}{after}",
        first_listener.replace("- name: ingress", "- name: proxied_100")
    );
    format!(
        "{before}{listener}{LISTENER_EXTRA}{after}{proxied_100}{replay}  clusters:{payments}{detached}{replay_cluster}\n",
        payments = trailers_cluster("payments", port),
        detached = detached_cluster_yaml("payments_detached", port),
    )
}

/// HTTP/1.0 clients accepted, HTTP/1 trailers passed on, and error shaping for requests marked
/// `x-fidelity-shape` (a mapper's `body_format_override`, as operators shape error bodies).
const LISTENER_EXTRA: &str = r#"          http_protocol_options: { accept_http_10: true, enable_trailers: true }
          local_reply_config:
            mappers:
            - filter:
                header_filter:
                  header: { name: x-fidelity-shape, present_match: true }
              body_format_override:
                json_format: { status: "%RESPONSE_CODE%", message: "%LOCAL_REPLY_BODY%" }
"#;

/// The routed cluster, with HTTP/1 trailers passed on to and from the upstream.
fn trailers_cluster(name: &str, port: u16) -> String {
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http_protocol_options: {{ enable_trailers: true }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}"#
    )
}
