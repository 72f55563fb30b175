#!/usr/bin/env bash
# Runs CI (.ci/run) as a new machine would: a fresh clone of the committed HEAD in a temporary folder,
# an empty CARGO_HOME (only the rustup toolchain is reused, through its proxies), a fresh .venv, and a
# PATH without the cargo subcommands installed on this machine, so every install step of
# scripts/setup.sh runs again. Prints the wall time.
#   scripts/ci-fresh.sh            # clone HEAD of this repository
#   KEEP=1 scripts/ci-fresh.sh     # keep the temporary folder (its path is printed)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/ci-fresh.XXXXXX")"
cleanup() { if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "kept: $work"; fi; }
trap cleanup EXIT

rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
old_cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
# The toolchain's proxies, without cargo-fuzz, cargo-deny or anything else `cargo install` put there.
mkdir -p "$work/toolchain-bin" "$work/cargo-home/bin"
for tool in cargo rustc rustup rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
    if [ -x "$old_cargo_bin/$tool" ]; then ln -s "$old_cargo_bin/$tool" "$work/toolchain-bin/$tool"; fi
done
clean_path="$work/cargo-home/bin:$work/toolchain-bin"
IFS=: read -r -a parts <<<"$PATH"
for dir in "${parts[@]}"; do
    [ "$dir" = "$old_cargo_bin" ] || clean_path="$clean_path:$dir"
done

git clone --quiet "$repo" "$work/project"
echo "ci-fresh: $(git -C "$work/project" log -1 --format='%h %s') in $work/project"
start=$(date +%s)
status=0
(
    cd "$work/project"
    env CI=true PATH="$clean_path" CARGO_HOME="$work/cargo-home" RUSTUP_HOME="$rustup_home" \
        CARGO_TARGET_DIR="$work/project/target" bash .ci/run
) || status=$?
end=$(date +%s)
echo "ci-fresh: exit $status after $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s"
exit "$status"
