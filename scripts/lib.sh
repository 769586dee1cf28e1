# Shared helpers for the set-up scripts. Sourced, not run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build"
mkdir -p "$BUILD"

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# apt-get install, with one `apt-get update` per run of the scripts.
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ ! -f "$BUILD/.apt-updated" ] || [ -n "$(find "$BUILD/.apt-updated" -mmin +720)" ]; then
        say "apt-get update"
        $sudo apt-get update -qq >&2
        touch "$BUILD/.apt-updated"
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

# The wasm crates: every filter plus the integration fixture.
wasm_crate_dirs() {
    local d
    for d in "$ROOT"/filters/*/ "$ROOT"/integration/fixture-filter/; do
        [ -f "$d/Cargo.toml" ] && printf '%s\n' "${d%/}"
    done
}

crate_name() { sed -n 's/^name *= *"\(.*\)"/\1/p' "$1/Cargo.toml" | head -n1; }
