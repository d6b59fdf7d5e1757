# syntax=docker/dockerfile:1
# The session service: `medsam2 serve` with the base install (numpy, ONNX Runtime, gRPC; no torch, no sam2).
#   docker build -f deploy/docker/service.Dockerfile -t medsam2-service .      (from the repository root)
# CPU-only it serves a model repository mounted at MEDSAM2_MODEL_REPOSITORY; with Triton it needs only
# MEDSAM2_TRITON_URL. Runs as uid 10001; the root filesystem can be read-only (HOME points at /tmp).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
COPY export/ export/
RUN pip install --no-cache-dir --disable-pip-version-check build==1.2.2 \
 && python -m build --wheel --outdir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    MEDSAM2_HOME=/tmp/medsam2 \
    MEDSAM2_HOST=0.0.0.0
COPY --from=wheel /wheels/ /tmp/wheels/
# The import check fails the build if the base install lacks what `serve` needs (gRPC, health, metrics).
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && python -c "import grpc, grpc_health.v1.health, prometheus_client, medsam2.server.app" \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin medsam2
COPY --chmod=0755 deploy/docker/medsam2_health_probe.py /usr/local/bin/medsam2-health-probe
USER 10001:10001
EXPOSE 50051 50052 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["medsam2-health-probe", "--timeout", "4"]
ENTRYPOINT ["medsam2"]
CMD ["serve"]
