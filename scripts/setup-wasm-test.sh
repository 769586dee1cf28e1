#!/usr/bin/env bash
# Tools for the wasm-bindgen tests: the wasm32-unknown-unknown target, node,
# and wasm-bindgen-test-runner at exactly the wasm-bindgen version in
# Cargo.lock (the runner refuses any other). Quick when already done.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
[ -n "$want" ] || die "no wasm-bindgen in Cargo.lock"
command -v rustup >/dev/null || die "wasm-bindgen tests need rustup (wasm32-unknown-unknown target)"
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown >&2
command -v node >/dev/null || apt_install nodejs
have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}') || true
if [ "$have" != "$want" ]; then
    say "cargo install wasm-bindgen-cli $want (about 2 minutes, once)"
    # No --locked: the CLI's own lock names crate versions the registry may lack.
    cargo install -q wasm-bindgen-cli --version "$want" >&2
fi
