#!/usr/bin/env bash
# Builds every wasm crate (modules/*, template filters, the integration fixture) for
# wasm32-wasip1 in release, runs wasm-opt when present, and copies the modules
# to build/wasm/<crate>.wasm. Prints a size table. Cargo and the mtime check
# make a second run a no-op.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
"$ROOT/scripts/setup-wasm.sh"
route=$(cat "$BUILD/wasm-route")
out="$BUILD/wasm"
mkdir -p "$out"

pkgs=()
while read -r dir; do pkgs+=(-p "$(crate_name "$dir")"); done < <(wasm_crate_dirs)
[ ${#pkgs[@]} -gt 0 ] || die "no wasm crates found"

case "$route" in
    rustup)
        cargo build --release --target wasm32-wasip1 "${pkgs[@]}"
        target_dir="$ROOT/target" ;;
    debian)
        # Debian's std for wasm32-wasip1 ships as source only: build it with the crates.
        target_dir="$ROOT/target/debian"
        PATH="/usr/lib/llvm-22/bin:$PATH" CARGO_TARGET_DIR="$target_dir" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
            RUSTFLAGS="-C linker=rust-lld -C link-self-contained=no -L native=/usr/lib/wasm32-wasi" \
            /usr/bin/cargo build --release --target wasm32-wasip1 -Zbuild-std=std,panic_abort "${pkgs[@]}" ;;
esac

wasm_opt_flags=(-O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals
    --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types)
printf '%-32s %12s %12s\n' module "cargo (B)" "shipped (B)" > "$out/sizes.txt"
while read -r dir; do
    src="$target_dir/wasm32-wasip1/release/$(crate_name "$dir" | tr - _).wasm"
    name=$(module_file "$dir")
    dst="$out/$name.wasm"
    [ -f "$src" ] || die "missing $src"
    # Redo the copy when the source module (path, size or mtime) changed: a
    # switch of toolchain route must not leave the other route's module behind.
    stamp="$src $(stat -c '%s %Y' "$src") $(command -v wasm-opt || true)"
    if [ ! -f "$dst" ] || [ "$(cat "$dst.stamp" 2>/dev/null)" != "$stamp" ]; then
        if command -v wasm-opt >/dev/null; then
            wasm-opt "${wasm_opt_flags[@]}" "$src" -o "$dst.tmp"
        else
            cp "$src" "$dst.tmp"
        fi
        mv "$dst.tmp" "$dst"
        echo "$stamp" > "$dst.stamp"
    fi
    printf '%-32s %12s %12s\n' "$name" "$(stat -c %s "$src")" "$(stat -c %s "$dst")" >> "$out/sizes.txt"
done < <(wasm_crate_dirs)
cat "$out/sizes.txt"
