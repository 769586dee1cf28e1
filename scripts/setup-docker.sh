#!/usr/bin/env bash
# Makes a Docker daemon answer and an Envoy image available; records the image
# in build/envoy-image. Image choice: SWITCHYARD_ENVOY_IMAGE when set and
# present locally (e.g. the official envoyproxy image on a machine that can
# pull it); otherwise a local image built FROM scratch holding the same Envoy
# binary as the native runtime plus the libraries `ldd` lists.
# Exits 0 with build/docker-status=unavailable when no daemon can be had, so
# native-only machines still run everything else.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
status_file="$BUILD/docker-status"

daemon_up() { timeout 10 docker info >/dev/null 2>&1; }

if ! daemon_up; then
    if ! command -v dockerd >/dev/null; then
        apt_install docker.io || true
    fi
    if command -v dockerd >/dev/null && [ "$(id -u)" = 0 ]; then
        say "starting dockerd in the background (log: build/dockerd.log)"
        nohup dockerd >"$BUILD/dockerd.log" 2>&1 &
        for _ in $(seq 1 60); do daemon_up && break; sleep 0.5; done
    fi
fi
if ! daemon_up; then
    say "no Docker daemon answers: the docker runtime is unavailable"
    echo unavailable > "$status_file"
    exit 0
fi
echo available > "$status_file"

if [ -n "${SWITCHYARD_ENVOY_IMAGE:-}" ]; then
    if docker image inspect "$SWITCHYARD_ENVOY_IMAGE" >/dev/null 2>&1; then
        echo "$SWITCHYARD_ENVOY_IMAGE" > "$BUILD/envoy-image"
        exit 0
    fi
    say "SWITCHYARD_ENVOY_IMAGE=$SWITCHYARD_ENVOY_IMAGE is not present locally; building the local image instead"
fi

"$ROOT/scripts/setup-envoy.sh"
bin=$(cat "$BUILD/envoy-path")
version=$(cat "$BUILD/envoy-version")
sum=$(sha256sum "$bin" | cut -c1-12)
image="switchyard-envoy:$version-$sum"
if ! docker image inspect "$image" >/dev/null 2>&1; then
    say "building $image FROM scratch"
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/etc/envoy"
    cp "$bin" "$ctx/rootfs/usr/local/bin/envoy"
    # Every absolute path ldd prints (libc, libm, the loader, ...), links resolved.
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        mkdir -p "$ctx/rootfs$(dirname "$lib")"
        cp -L "$lib" "$ctx/rootfs$lib"
    done
    cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
LABEL org.switchyard.envoy-version="$version" org.switchyard.envoy-sha256="$sum"
ENTRYPOINT ["/usr/local/bin/envoy"]
DOCKERFILE
    # The classic builder needs no buildx plugin and nothing from a registry.
    DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >"$BUILD/docker-build.log" 2>&1 \
        || { cat "$BUILD/docker-build.log" >&2; die "docker build failed"; }
fi
echo "$image" > "$BUILD/envoy-image"
