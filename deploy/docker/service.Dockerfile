# syntax=docker/dockerfile:1
# The session service: `medsam2 serve` with the base install (numpy, ONNX Runtime, gRPC; no torch, no sam2) and
# the web viewer. Build it from the repository root (scripts/build_images.sh does, with buildah):
#   docker build -f deploy/docker/service.Dockerfile -t medsam2-service .
# CPU-only it serves a model repository mounted at MEDSAM2_MODEL_REPOSITORY; with Triton it needs only
# MEDSAM2_TRITON_URL. Runs as uid 10001; the root filesystem can be read-only (HOME points at /tmp).
# Every Python package is installed at the version constraints.txt pins (scripts/gen_constraints.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The web viewer, built here from web/ by scripts/build_web.sh with Debian's node and npm: never a checkout's
# bundle (it is generated, gitignored, and may be stale or missing). npm ci installs exactly package-lock.json.
FROM ${PYTHON_IMAGE} AS web
# Build time only (not kept in the image): a CA bundle for pip and npm behind a TLS-intercepting proxy.
ARG PIP_CERT
ARG NODE_EXTRA_CA_CERTS
# Debian's own versions of bookworm (a stable release only takes fixes); the JavaScript packages are pinned by the lockfile.
# hadolint ignore=DL3008
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund --loglevel=error
WORKDIR /src
COPY scripts/build_web.sh scripts/
COPY web/ web/
RUN scripts/build_web.sh && test -f services/medsam2/gateway/static/app.js

# The project's wheel, with the freshly built viewer inside (setuptools pinned, no build isolation).
FROM ${PYTHON_IMAGE} AS wheel
# Build time only (not kept in the image): a CA bundle for pip and npm behind a TLS-intercepting proxy.
ARG PIP_CERT
ARG NODE_EXTRA_CA_CERTS
WORKDIR /src
COPY constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip pip install -q -c constraints.txt pip setuptools
COPY pyproject.toml README.md ./
COPY services/ services/
COPY export/ export/
COPY --from=web /src/services/medsam2/gateway/static/ services/medsam2/gateway/static/
RUN pip wheel -q --no-cache-dir --no-deps --no-build-isolation -c constraints.txt --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# Build time only (not kept in the image): a CA bundle for pip and npm behind a TLS-intercepting proxy.
ARG PIP_CERT
ARG NODE_EXTRA_CA_CERTS
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    MEDSAM2_HOME=/tmp/medsam2 \
    MEDSAM2_HOST=0.0.0.0
# The base install's dependencies first, from pyproject.toml and the pins alone: a layer that survives code changes.
COPY constraints.txt pyproject.toml /tmp/build/
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP_CACHE_DIR=/root/.cache/pip pip install -q -c /tmp/build/constraints.txt pip \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/build/requirements.txt \
 && PIP_CACHE_DIR=/root/.cache/pip pip install -q -c /tmp/build/constraints.txt -r /tmp/build/requirements.txt
COPY --from=wheel /wheels/ /tmp/wheels/
# The import check fails the build if the base install lacks what `serve` needs (gRPC, health, metrics) or the
# viewer is missing; pip check, if a dependency is missing or at a version the project does not accept.
RUN pip install -q --no-cache-dir --no-deps /tmp/wheels/*.whl \
 && pip check \
 && rm -rf /tmp/wheels /tmp/build \
 && python -c "import grpc, grpc_health.v1.health, prometheus_client, medsam2.server.app, medsam2.gateway as g, pathlib; \
assert (pathlib.Path(g.__file__).parent / 'static' / 'app.js').is_file(), 'the web viewer is not in the wheel'" \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin medsam2
COPY --chmod=0755 deploy/docker/medsam2_health_probe.py /usr/local/bin/medsam2-health-probe
USER 10001:10001
EXPOSE 50051 50052 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["medsam2-health-probe", "--timeout", "4"]
ENTRYPOINT ["medsam2"]
CMD ["serve"]
