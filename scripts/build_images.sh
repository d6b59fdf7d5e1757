#!/usr/bin/env bash
# `make images`: build the service image and the CPU build image with buildah, from this tree.
#   scripts/build_images.sh                 build (or reuse) both; print their names as NAME=IMAGE lines on stdout
#   scripts/build_images.sh --if-possible   the same, but only say why and succeed where containers cannot be built
#   scripts/build_images.sh --gpu           the GPU build image only (TensorRT from TENSORRT_INDEX_URL, when set,
#                                           else the Dockerfile's default, NVIDIA's index)
# The base is python:3.11-slim-bookworm when it can be pulled; otherwise a stand-in made locally with mmdebstrap
# (deploy/docker/base-standin.sh), which the log says. Everything is cached outside the clone, in
# MEDSAM2_IMAGE_CACHE (/var/cache/medsam2-images) and buildah's own storage: the stand-in base by the sha256 of
# its recipe, each image by a content hash of what it is built from (base, Dockerfile, ignore file, build
# arguments, and every file of the tree that is not git-ignored under the paths it copies), so a second run, or
# a fresh clone of the same commit, reuses them in seconds. Layers (--layers) and pip/npm caches (RUN --mount)
# make a rebuild after a code change cheap.
# This host's quirks, which CI machines of this kind share: podman/buildah run containers with runc (crun refuses
# hybrid cgroups) and explicit ulimits; the host's CA bundle is mounted at build time only (a TLS-intercepting
# proxy); the torch wheel comes from the folder pip's own configuration names (find-links), not a remote index.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MEDSAM2_IMAGE_CACHE:-/var/cache/medsam2-images}"
OFFICIAL="${PYTHON_IMAGE:-docker.io/library/python:3.11-slim-bookworm}"
SERVICE_REPO="${MEDSAM2_SERVICE_IMAGE_REPO:-localhost/medsam2-service}"
BUILD_REPO="${MEDSAM2_BUILD_IMAGE_REPO:-localhost/medsam2-build}"
HOST_CA="${MEDSAM2_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
TORCH_VERSION=2.13.0
log() { echo "build_images.sh: $*" >&2; }

mode="${1:-}"
if [ "$mode" = --if-possible ]; then
    for tool in buildah podman; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            log "skipped: $tool is not installed (scripts/test_deps.sh installs it as root)"
            exit 0
        fi
    done
fi
for tool in buildah podman sha256sum flock git; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool not found (scripts/test_deps.sh installs it as root)"; exit 1; }
done
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one build at a time on a machine: parallel test runs share the cache

# --- the base --------------------------------------------------------------------------------
if buildah inspect --type image "$OFFICIAL" >/dev/null 2>&1 \
    || timeout 60 buildah pull -q "$OFFICIAL" >/dev/null 2>"$CACHE/pull.log"; then
    base="$OFFICIAL"
    log "base: $OFFICIAL"
else
    key="$(sha256sum deploy/docker/base-standin.sh | cut -c1-16)"
    base="localhost/medsam2-base:$key"
    log "the official base $OFFICIAL cannot be pulled ($(tail -n 1 "$CACHE/pull.log" | cut -c1-200)):" \
        "building on a local stand-in made with mmdebstrap, $base"
    if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
        tar="$CACHE/base-$key.tar"
        if [ ! -f "$tar" ]; then
            command -v mmdebstrap >/dev/null 2>&1 || { log "mmdebstrap not found (scripts/test_deps.sh)"; exit 1; }
            started=$SECONDS
            deploy/docker/base-standin.sh "$tar.partial"
            mv "$tar.partial" "$tar"
            log "stand-in base made in $((SECONDS - started)) s"
        fi
        podman import -q --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar" "$base" >/dev/null
    fi
fi
base_id="$(buildah inspect --type image --format '{{.FromImageID}}' "$base")"

# --- what every build gets at build time only ------------------------------------------------
# runc refuses podman's default rlimits here, and an nproc limit as high as the host's; these it accepts.
nproc="$(ulimit -Hu)"
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 16384 ]; then nproc=16384; fi
args=(--format docker --layers --runtime runc --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)"
      --ulimit "nproc=$nproc:$nproc" --build-arg "PYTHON_IMAGE=$base")
if [ -f "$HOST_CA" ]; then
    args+=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
           --build-arg NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt)
fi
# The torch wheel from a folder pip's configuration names (find-links), when one holds it.
torch_links=""
for links in $(python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p"); do
    if compgen -G "${links#file://}/torch-$TORCH_VERSION*-cp311-*linux*x86_64.whl" >/dev/null; then
        torch_links="${links#file://}"
        break
    fi
done

# content_key DOCKERFILE ARGS...: a hash of everything the image is built from.
content_key() {
    local dockerfile="$1"
    shift
    {
        echo "$base_id $*"
        cat "$dockerfile" "$dockerfile.dockerignore"
        git ls-files -z -co --exclude-standard -- constraints.txt pyproject.toml README.md services export web \
            scripts/build_web.sh deploy/docker/medsam2_health_probe.py \
            | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

# build NAME REPO DOCKERFILE EXTRA_ARGS...: reuse REPO:<key> if it exists, else build it; print NAME=REPO:<key>.
build() {
    local name="$1" repo="$2" dockerfile="$3"
    shift 3
    local key image started
    key="$(content_key "$dockerfile" "$@")"
    image="$repo:$key"
    if buildah inspect --type image "$image" >/dev/null 2>&1; then
        log "$image is up to date (cached)"
    else
        started=$SECONDS
        log "building $image from $dockerfile"
        if ! buildah bud -q "${args[@]}" "$@" --ignorefile "$dockerfile.dockerignore" -f "$dockerfile" -t "$image" . \
            >/dev/null; then
            log "building $image from $dockerfile failed after $((SECONDS - started)) s"
            return 1
        fi
        log "built $image in $((SECONDS - started)) s"
        # Older builds of this image are untagged (their layers stay, as cache for the next build).
        podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$repo" | grep -vxF "$image" \
            | xargs -r -I{} podman untag {} {} >/dev/null 2>&1 || true
    fi
    log "$image: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B"
    echo "$name=$image"
}

build_args=()
if [ -n "$torch_links" ]; then
    build_args+=(-v "$torch_links:/wheels/torch:ro" --build-arg TORCH_FIND_LINKS=/wheels/torch)
    log "torch $TORCH_VERSION from $torch_links (pip's find-links)"
fi
if [ "$mode" = --gpu ]; then
    build MEDSAM2_GPU_BUILD_IMAGE "$BUILD_REPO-gpu" deploy/docker/build.Dockerfile "${build_args[@]}" \
        --build-arg WITH_TENSORRT=1 ${TENSORRT_INDEX_URL:+--build-arg "TENSORRT_INDEX_URL=$TENSORRT_INDEX_URL"}
    exit 0
fi
# Both at once: a cold build spends most of its time downloading (apt, npm, pip), which overlaps well.
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
build MEDSAM2_SERVICE_IMAGE "$SERVICE_REPO" deploy/docker/service.Dockerfile >"$out/service" &
service_pid=$!
build MEDSAM2_BUILD_IMAGE "$BUILD_REPO" deploy/docker/build.Dockerfile "${build_args[@]}" \
    --build-arg WITH_TENSORRT=0 >"$out/build" &
build_pid=$!
failed=0
wait "$service_pid" || failed=1
wait "$build_pid" || failed=1
cat "$out/service" "$out/build"
exit "$failed"
