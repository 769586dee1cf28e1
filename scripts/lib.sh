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

# An envoy-configs snippet with its /etc/switchyard/ paths pointed at this
# checkout: modules from build/wasm, ECDS resources from envoy-configs/ecds,
# TLS files from $2 (a throwaway self-signed certificate, see tls_files).
snippet_for_validation() {
    sed -e "s#/etc/switchyard/wasm/#$BUILD/wasm/#g" \
        -e "s#/etc/switchyard/ecds/#$ROOT/envoy-configs/ecds/#g" \
        -e "s#/etc/switchyard/tls/#$2/#g" "$1"
}

# The files the TLS snippets name, in $1: a self-signed certificate that is
# good for `envoy --mode validate` only.
tls_files() {
    command -v openssl >/dev/null || apt_install openssl
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=switchyard-validate -keyout "$1/server-key.pem" -out "$1/server.pem" 2>/dev/null \
        || die "openssl could not make a certificate"
    cp "$1/server.pem" "$1/upstream-ca.pem"
}
