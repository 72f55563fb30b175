#!/usr/bin/env bash
# The README's demo, in the foreground until Ctrl-C (which stops every process started here):
#   payments-demo                 127.0.0.1:8080
#   idempotency-keystore (memory) 127.0.0.1:8081
#   Envoy gateway A               127.0.0.1:10000 (admin 127.0.0.1:9901)
#   Envoy gateway B               127.0.0.1:10001 (admin 127.0.0.1:9902)
#   Envoy gateway D (detached)    127.0.0.1:10002 (admin 127.0.0.1:9903)
# Expects `make build` to have run (make demo does it). Envoy: $ENVOY_BIN, else .venv/bin/envoy, else PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
wasm="target/wasm32-wasip1/release/idempotency_filter.wasm"
envoy="${ENVOY_BIN:-}"
if [ -z "$envoy" ]; then
    if [ -x .venv/bin/envoy ]; then envoy=.venv/bin/envoy; else envoy="$(command -v envoy || true)"; fi
fi
[ -n "$envoy" ] || { echo "envoy not found: run make setup or set ENVOY_BIN" >&2; exit 1; }
for f in "$wasm" "$target_dir/debug/payments-demo" "$target_dir/debug/idempotency-keystore"; do
    [ -e "$f" ] || { echo "$f is missing: run make build" >&2; exit 1; }
done

logs=".tmp/demo"
mkdir -p "$logs"
pids=()
cleanup() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

"$target_dir/debug/payments-demo" --listen 127.0.0.1:8080 &
pids+=($!)
"$target_dir/debug/idempotency-keystore" --listen 127.0.0.1:8081 --backend memory \
    --token demo-only-keystore-token-for-the-local-demo &
pids+=($!)
"$envoy" -c envoy/demo-gateway-a.yaml --base-id 10 -l info --log-path "$logs/gateway-a.log" &
pids+=($!)
"$envoy" -c envoy/demo-gateway-b.yaml --base-id 11 -l info --log-path "$logs/gateway-b.log" &
pids+=($!)
"$envoy" -c envoy/demo-gateway-detached.yaml --base-id 12 -l info --log-path "$logs/gateway-detached.log" &
pids+=($!)

# Poll the admin endpoints until every Envoy reports LIVE (or give up after about a minute).
for _ in $(seq 1 600); do
    if curl -sf http://127.0.0.1:9901/ready >/dev/null 2>&1 && curl -sf http://127.0.0.1:9902/ready >/dev/null 2>&1 \
        && curl -sf http://127.0.0.1:9903/ready >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
echo "demo: gateways on 127.0.0.1:10000 and 127.0.0.1:10001, detached on 127.0.0.1:10002 (logs in $logs); Ctrl-C stops it"
echo "try: curl -i -X POST localhost:10000/payments -H 'authorization: alice' -H 'idempotency-key: k1' -d '{\"amount\":100}'"
# Stop everything as soon as any process exits (or on Ctrl-C).
wait -n "${pids[@]}" || true
echo "demo: a process exited; stopping" >&2
