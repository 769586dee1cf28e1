#!/usr/bin/env bash
# Makes sure a wasm32-wasip1 toolchain exists and records which route works:
#   rustup  - `rustup target add wasm32-wasip1` on the pinned toolchain;
#   debian  - Debian's rustc-web + build-std (no rustup download needed).
# SWITCHYARD_WASM_ROUTE=rustup|debian forces a route. Quick when already done.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
route_file="$BUILD/wasm-route"
want=${SWITCHYARD_WASM_ROUTE:-auto}

rustup_ready() {
    command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1
}
debian_ready() {
    [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && [ -d /usr/lib/wasm32-wasi ] \
        && { command -v rust-lld >/dev/null 2>&1 || [ -x /usr/lib/llvm-22/bin/lld ]; }
}

try_rustup() {
    command -v rustup >/dev/null || return 1
    rustup_ready && return 0
    say "rustup target add wasm32-wasip1"
    rustup target add wasm32-wasip1 >&2 && rustup_ready
}
try_debian() {
    debian_ready || apt_install rustc-web cargo-web rust-web-src wasi-libc lld-22 || return 1
    debian_ready
}

case "$want" in
    rustup) try_rustup || die "rustup route failed"; route=rustup ;;
    debian) try_debian || die "Debian route failed"; route=debian ;;
    auto)
        if try_rustup; then route=rustup
        else say "rustup route unavailable; falling back to Debian's rustc-web"; try_debian || die "no wasm32-wasip1 toolchain"; route=debian
        fi ;;
    *) die "SWITCHYARD_WASM_ROUTE must be rustup or debian" ;;
esac
[ "$(cat "$route_file" 2>/dev/null)" = "$route" ] || echo "$route" > "$route_file"
# wasm-opt shrinks release modules; optional, so a failed install is only a note.
command -v wasm-opt >/dev/null || apt_install binaryen || say "binaryen unavailable: modules stay unoptimised"
