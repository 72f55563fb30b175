#!/usr/bin/env bash
# What `make bench` needs besides `make setup`: wrk (the load tool), redis-server and redis-tools
# (redis-benchmark, redis-cli) from Debian. Safe to run again: installs only what is missing.
set -euo pipefail
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v redis-benchmark >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; } || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi
wrk --version 2>&1 | head -1 || true
redis-benchmark --version
