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
# Crates that build a shipped .wasm: modules/* (each stage alone, and the
# chain), filters made from the template (they are their own module), and
# the integration fixture.
wasm_crate_dirs() {
    local d
    for d in "$ROOT"/modules/*/ "$ROOT"/filters/*/ "$ROOT"/integration/fixture-filter/; do
        [ -f "$d/Cargo.toml" ] || continue
        grep -q '"cdylib"' "$d/Cargo.toml" && printf '%s\n' "${d%/}"
    done
}

# Every wasm crate for clippy on wasm32: the above plus the stage libraries.
wasm_lint_dirs() {
    local d
    for d in "$ROOT"/modules/*/ "$ROOT"/filters/*/ "$ROOT"/integration/fixture-filter/; do
        [ -f "$d/Cargo.toml" ] && printf '%s\n' "${d%/}"
    done
}

# The shipped file name of a wasm crate: `switchyard-rate-limit-module`
# ships as `switchyard_rate_limit.wasm`.
module_file() { local n; n=$(crate_name "$1"); n=${n%-module}; printf '%s\n' "${n//-/_}"; }

crate_name() { sed -n 's/^name *= *"\(.*\)"/\1/p' "$1/Cargo.toml" | head -n1; }
