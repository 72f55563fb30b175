//! The replay listener of routed replays (README, "Routed replays") in a test bootstrap: an
//! internal listener (`envoy.bootstrap.internal_listener`) running the same Wasm module with the
//! same VM id (so it shares L1) and `replay_listener: true`, an HTTP/2 cluster to it, and the route
//! named `idempotency_replay` that takes a request once the filter set its filter state.

use super::envoy_config::EnvoyOptions;

/// Where the replay route's cluster leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayListener {
    /// The internal listener, as the shipped configs run it.
    Internal,
    /// A loopback TCP port nobody listens on: the replay listener is down.
    Unreachable(u16),
}

pub(super) const BOOTSTRAP_EXTENSION: &str = r#"
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"#;

/// The route to the replay listener, first in the ingress route list.
pub(super) fn route(timeout: &str) -> String {
    format!(
        r#"
              - name: idempotency_replay
                match:
                  prefix: "/"
                  filter_state: [{{ key: wasm.idempotency_replay, string_match: {{ exact: routed }} }}]
                route: {{ cluster: idempotency_replay, timeout: {timeout} }}
                # The replay listener's connection manager adds its own; without them this one adds
                # them after `x-envoy-upstream-service-time`, in the order of an upstream's answer.
                response_headers_to_remove: [date, server]"#
    )
}

const HTTP2: &str = r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#;

pub fn cluster(listener: ReplayListener) -> String {
    let (transport, address) = match listener {
        ReplayListener::Internal => (
            r#"
    transport_socket:
      name: envoy.transport_sockets.internal_upstream
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
        transport_socket:
          name: envoy.transport_sockets.raw_buffer
          typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer }"#,
            "envoy_internal_address: { server_listener_name: idempotency_replay }".to_string(),
        ),
        ReplayListener::Unreachable(port) => (
            "",
            format!("socket_address: {{ address: 127.0.0.1, port_value: {port} }}"),
        ),
    };
    format!(
        r#"
  - name: idempotency_replay
    connect_timeout: 1s{HTTP2}{transport}
    load_assignment:
      cluster_name: idempotency_replay
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              {address}"#
    )
}

/// The replay listener, with the filter configured as the outer one but `replay_listener: true`
/// (same secrets and `l1_slots`, so it reads the records the outer filter put in L1). None when
/// the listener is down.
pub(super) fn listener(outer: &EnvoyOptions) -> String {
    if outer.replay != Some(ReplayListener::Internal) {
        return String::new();
    }
    let plugin = outer.plugin.as_deref().map(|json| {
        let mut value: serde_json::Value = serde_json::from_str(json).expect("plugin JSON");
        if let Some(object) = value.as_object_mut() {
            object.remove("routed_replay");
            object.insert("replay_listener".into(), true.into());
        }
        value.to_string()
    });
    let inner = EnvoyOptions {
        plugin,
        only_route: None,
        replay: None,
        ..outer.clone()
    };
    let filters = inner.filter_yaml();
    format!(
        r#"
  - name: idempotency_replay
    internal_listener: {{}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: idempotency_replay
          codec_type: HTTP2
          route_config:
            name: idempotency_replay
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              # Never reached: the filter answers every request.
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 404 }}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
    )
}
