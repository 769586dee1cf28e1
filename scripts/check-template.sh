#!/usr/bin/env bash
# Keeps the filter template from rotting: generates a crate from it in a
# scratch workspace (linked to this repo's sdk/), runs its tests natively
# (emulator) and builds it for wasm32-wasip1.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
scratch="$ROOT/target/template-check"
rm -rf "$scratch"
mkdir -p "$scratch/filters" "$scratch/scripts"
ln -s "$ROOT/sdk" "$scratch/sdk"
cp -r scripts/filter-template scripts/lib.sh scripts/new-filter.sh "$scratch/scripts/"
cp Cargo.lock rust-toolchain.toml "$scratch/"
# The same workspace settings as the real one, sdk by path.
sed -e '/^members = \[/,/^\]/c\members = [\n]' -e '/^exclude/d' Cargo.toml > "$scratch/Cargo.toml"
(cd "$scratch" && scripts/new-filter.sh template-check >/dev/null)
export CARGO_TARGET_DIR="$ROOT/target"
(cd "$scratch" && cargo test -q -p switchyard-template-check 2>&1 | grep -E "test result|FAILED|panicked|error" )
if [ "$(cat "$BUILD/wasm-route" 2>/dev/null)" = rustup ]; then
    (cd "$scratch" && cargo build -q --release --target wasm32-wasip1 -p switchyard-template-check)
    echo "template: crate generated, emulator tests passed, wasm built ($(stat -c %s "$ROOT/target/wasm32-wasip1/release/switchyard_template_check.wasm") bytes)"
fi
