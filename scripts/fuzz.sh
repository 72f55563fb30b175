#!/usr/bin/env bash
# Runs every cargo-fuzz (libFuzzer) target in fuzz/ for SECONDS each (default 60) and prints the
# executions per target. `make fuzz` runs the full time; `make fuzz-smoke` (part of `make test`)
# runs 10 s each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_SEED=N scripts/fuzz.sh ...   # libFuzzer's random seed (default: a new one each run)
#
# `make fuzz-smoke` fixes the seed: on a fresh checkout (only the committed seeds) the smoke run of
# `make test` then explores the same inputs every time, so CI is red only for a change, never for a
# lucky draw; `make fuzz` draws a new seed each run to explore (libFuzzer logs it: "Seed: N").
#
# The machine has a stable toolchain only: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's
# instrumentation flags. No sanitizer (the code under test is safe Rust; what we hunt is panics,
# failed invariants and overflows, so debug assertions are on). Seeds live in
# fuzz/corpus/<target>/ and are only read; what the fuzzer learns goes to target-fuzz/corpus/,
# crashes to fuzz/artifacts/<target>/ (not committed). Exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(key_header config record keystore_reply keystore_request keystore_batch grpc_wire)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: run scripts/setup.sh (or: cargo install --locked cargo-fuzz)" >&2
    exit 1
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target-fuzz}"
flags=(--fuzz-dir fuzz --sanitizer none --debug-assertions)
seed=()
if [ -n "${FUZZ_SEED:-}" ]; then seed=(-seed="$FUZZ_SEED"); fi

cargo fuzz build "${flags[@]}"
bin_dir="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release"

summary=()
failed=0
for t in "${targets[@]}"; do
    work="$CARGO_TARGET_DIR/corpus/$t"
    log="$CARGO_TARGET_DIR/fuzz-$t.log"
    mkdir -p "$work" "fuzz/artifacts/$t"
    echo "== $t: ${secs}s"
    status=ok
    # The binary that `cargo fuzz build` made, run directly: `cargo fuzz run` would rebuild.
    if ! "$bin_dir/$t" "$work" "fuzz/corpus/$t" \
        -max_total_time="$secs" "${seed[@]}" -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        >"$log" 2>&1; then
        status=FAILED
        failed=1
        tail -n 40 "$log" >&2
    fi
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    corpus="$(find "$work" -type f | wc -l)"
    summary+=("$(printf '%-18s %12s execs  %6s corpus  %s' "$t" "${execs:-?}" "$corpus" "$status")")
done

echo "== fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
