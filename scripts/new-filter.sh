#!/usr/bin/env bash
# Creates filters/<name>/ from scripts/filter-template and adds it to the
# workspace: a crate that builds to wasm and has an emulator test.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
name=${1:-}
[[ "$name" =~ ^[a-z][a-z0-9-]*$ ]] || die "usage: make new-filter NAME=my-filter (lowercase, digits, dashes)"
dest="filters/$name"
[ ! -e "$dest" ] || die "$dest exists"
snake=${name//-/_}
mkdir -p "$dest"
cp -r scripts/filter-template/. "$dest/"
grep -rl '__NAME' "$dest" | xargs sed -i -e "s/__NAME_SNAKE__/$snake/g" -e "s/__NAME__/$name/g"
# Register the crate in the workspace, before the closing bracket of `members`.
if ! grep -q "\"$dest\"" Cargo.toml; then
    awk -v line="    \"$dest\"," '/^members = \[/ {inside=1} inside && /^\]/ {print line; inside=0} {print}' Cargo.toml > Cargo.toml.tmp
    mv Cargo.toml.tmp Cargo.toml
fi
say "created $dest: cargo test -p switchyard-$name; make build puts it in build/wasm/switchyard_$snake.wasm"
