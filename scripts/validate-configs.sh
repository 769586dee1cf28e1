#!/usr/bin/env bash
# Runs `envoy --mode validate` on every envoy-configs/*.yaml with the real
# Envoy binary. Snippets load modules from /etc/switchyard/wasm (where the
# Docker runtime mounts them); here that prefix points at build/wasm, ECDS
# resources at envoy-configs/ecds and TLS files at a throwaway certificate
# (Envoy's validation reads them).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
"$ROOT/scripts/setup-envoy.sh"
envoy=$(cat "$BUILD/envoy-path")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tls_files "$tmp/tls"
failed=0; count=0
for f in envoy-configs/*.yaml; do
    [ -f "$f" ] || continue
    count=$((count + 1))
    snippet_for_validation "$f" "$tmp/tls" > "$tmp/config.yaml"
    if "$envoy" --mode validate -c "$tmp/config.yaml" -l error --disable-hot-restart > "$tmp/out.txt" 2>&1; then
        echo "valid:   $f"
    else
        echo "INVALID: $f"; sed 's/^/    /' "$tmp/out.txt"; failed=$((failed + 1))
    fi
done
[ "$count" -gt 0 ] || die "no snippets in envoy-configs/"
echo "validate-configs: $count snippets, $failed invalid"
[ "$failed" -eq 0 ]
