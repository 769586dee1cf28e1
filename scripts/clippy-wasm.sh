#!/usr/bin/env bash
# clippy for the wasm crates on wasm32-wasip1 (the rustup route; the Debian
# fallback toolchain ships no clippy, so there this is skipped with a note).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
"$ROOT/scripts/setup-wasm.sh"
if [ "$(cat "$BUILD/wasm-route")" != rustup ]; then
    say "clippy for wasm32 skipped: the Debian fallback toolchain has no clippy"
    exit 0
fi
pkgs=()
while read -r dir; do pkgs+=(-p "$(crate_name "$dir")"); done < <(wasm_lint_dirs)
cargo clippy --release --target wasm32-wasip1 "${pkgs[@]}" -- -D warnings
