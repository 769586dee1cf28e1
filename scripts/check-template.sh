#!/usr/bin/env bash
# Keeps the filter template from rotting: generates a crate from it in a
# scratch workspace (linked to this repo's sdk/ and integration/), builds it
# for wasm32-wasip1, and runs its tests: the emulator's, and its envoy.yaml
# in real Envoy (tests/envoy.rs) with the module just built.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
scratch="$ROOT/target/template-check"
rm -rf "$scratch"
mkdir -p "$scratch/filters" "$scratch/scripts"
ln -s "$ROOT/sdk" "$scratch/sdk"
ln -s "$ROOT/integration" "$scratch/integration"
cp -r scripts/filter-template scripts/lib.sh scripts/new-filter.sh "$scratch/scripts/"
cp Cargo.lock rust-toolchain.toml "$scratch/"
# The same workspace settings as the real one, sdk by path.
sed -e '/^members = \[/,/^\]/c\members = [\n]' -e '/^exclude/d' Cargo.toml > "$scratch/Cargo.toml"
(cd "$scratch" && scripts/new-filter.sh template-check >/dev/null)
export CARGO_TARGET_DIR="$ROOT/target"
if [ "$(cat "$BUILD/wasm-route" 2>/dev/null)" = rustup ]; then
    (cd "$scratch" && cargo build -q --release --target wasm32-wasip1 -p switchyard-template-check)
    mkdir -p "$scratch/wasm"
    cp "$ROOT/target/wasm32-wasip1/release/switchyard_template_check.wasm" "$scratch/wasm/"
    # The harness finds Envoy under this repo's build/, the module here.
    (cd "$scratch" && SWITCHYARD_ROOT="$ROOT" SWITCHYARD_WASM_DIR="$scratch/wasm" \
        cargo test -q -p switchyard-template-check 2>&1 | grep -E "test result|FAILED|panicked|error" )
    echo "template: crate generated, wasm built ($(stat -c %s "$scratch/wasm/switchyard_template_check.wasm") bytes), emulator and real-Envoy tests passed"
else
    # Debian's toolchain route builds wasm only with the workspace: the
    # emulator tests here, the module with `make build` after new-filter.
    (cd "$scratch" && cargo test -q -p switchyard-template-check --test emulator 2>&1 | grep -E "test result|FAILED|panicked|error" )
fi
