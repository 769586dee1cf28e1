#!/usr/bin/env bash
# `make harness-image`: the harness in a container for a user's CI, built
# FROM scratch like the Envoy image (no registry needed): the
# switchyard-harness binary, the Envoy binary it runs natively, the
# libraries `ldd` lists for both, and the shipped modules at
# /etc/switchyard/wasm. Tagged switchyard-harness:<version>.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
"$ROOT/scripts/setup-docker.sh"
[ "$(cat "$BUILD/docker-status")" = available ] || die "no Docker daemon: the image needs one"
cargo build -q --profile harness -p switchyard-integration --bin switchyard-harness
harness="$ROOT/target/harness/switchyard-harness"
envoy=$(cat "$BUILD/envoy-path")
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
image="switchyard-harness:$version"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc/switchyard/wasm" "$root/work"
cp "$harness" "$root/usr/local/bin/switchyard-harness"
cp "$envoy" "$root/usr/local/bin/envoy"
cp "$BUILD"/wasm/*.wasm "$root/etc/switchyard/wasm/"
for bin in "$harness" "$envoy"; do
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENV SWITCHYARD_ENVOY_RUNTIME=native \\
    SWITCHYARD_ENVOY_BINARY=/usr/local/bin/envoy \\
    SWITCHYARD_WASM_DIR=/etc/switchyard/wasm \\
    SWITCHYARD_ROOT=/work \\
    TMPDIR=/tmp
WORKDIR /work
LABEL org.switchyard.version="$version"
ENTRYPOINT ["/usr/local/bin/switchyard-harness"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >"$BUILD/harness-image.log" 2>&1 \
    || { cat "$BUILD/harness-image.log" >&2; die "docker build failed"; }
say "built $image: docker run --rm --network host -v \"\$PWD:/work\" $image run my-scenario.yaml --out results"
echo "$image"
