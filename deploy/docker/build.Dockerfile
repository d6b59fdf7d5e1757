# syntax=docker/dockerfile:1
# The model build job: export the ONNX stage graphs of a checkpoint into a model repository, and (GPU variant)
# build TensorRT FP16 engines. Build from the repository root (scripts/build_images.sh builds the CPU variant):
#   docker build -f deploy/docker/build.Dockerfile -t medsam2-build .                          GPU: with TensorRT
#   docker build -f deploy/docker/build.Dockerfile --build-arg WITH_TENSORRT=0 -t medsam2-build:cpu .   CPU only
# TensorRT's wheels (tensorrt-cu12-libs, -bindings) come only from NVIDIA's index, TENSORRT_INDEX_URL
# (https://pypi.nvidia.com, or a mirror of it); on the default index they are placeholders that fail.
# Run the GPU variant on the GPU model that will serve (engines are GPU-specific):
#   docker run --gpus 1 -v /srv/models:/models medsam2-build \
#       sh -c 'medsam2 checkpoint download MedSAM2_latest --out /models/.checkpoints &&
#              medsam2 export --checkpoint /models/.checkpoints/MedSAM2_latest.pt --out /models/v1 --backend tensorrt'
# torch is the CPU build: export runs on the CPU, only the TensorRT engine build uses the GPU (the driver comes
# from the node through the NVIDIA container runtime; the CUDA runtime libraries come with the TensorRT wheels).
# Every Python package is installed at the version constraints.txt pins (scripts/gen_constraints.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
# Build time only (not kept in the image): a CA bundle for pip and npm behind a TLS-intercepting proxy.
ARG PIP_CERT
ARG NODE_EXTRA_CA_CERTS

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A folder holding the torch wheel (mounted at build time), used instead of TORCH_INDEX_URL when set; torch's own
# dependencies then come from the default index (the +cpu pin in constraints.txt matches only that wheel).
ARG TORCH_FIND_LINKS=
ARG SAM2_VERSION=1.1.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    MEDSAM2_HOME=/tmp/medsam2

WORKDIR /src
COPY constraints.txt pyproject.toml ./
# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build); then the export extra's dependencies,
# from pyproject.toml and the pins alone (a layer that survives code changes); then sam2 without its CUDA
# extension, build isolation or dependencies, so that it cannot replace torch (as scripts/bootstrap.sh does).
RUN --mount=type=cache,target=/root/.cache/pip \
    export PIP_CACHE_DIR=/root/.cache/pip \
 && pip install -q -c constraints.txt pip setuptools \
 && if [ -n "${TORCH_FIND_LINKS}" ]; then \
      pip install -q -c constraints.txt --find-links "${TORCH_FIND_LINKS}" "torch==${TORCH_VERSION}"; \
    else \
      pip install -q -c constraints.txt --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['export']))" > requirements.txt \
 && PIP_CACHE_DIR=/root/.cache/pip pip install -q -c constraints.txt -r requirements.txt \
 && SAM2_BUILD_CUDA=0 pip install -q --no-cache-dir -c constraints.txt --no-build-isolation --no-deps \
      "sam2==${SAM2_VERSION}"

# 1: the GPU variant (TensorRT, from TENSORRT_INDEX_URL); 0: the CPU variant (ONNX export only), which the
# chart's CPU-only build job runs. TENSORRT_VERSION must be the Triton image's (tritonserver 24.12: 10.7.0), as
# pinned in constraints.txt, pyproject.toml's tensorrt extra and tensorrt_build.TENSORRT_VERSION (tested to agree).
# Declared here, after the torch layer, so that both variants share it.
ARG WITH_TENSORRT=1
ARG TENSORRT_INDEX_URL=https://pypi.nvidia.com
ARG TENSORRT_VERSION=10.7.0
# TensorRT, only from NVIDIA's index: checked first, so an unreachable index fails here and says which argument
# to set, rather than as a placeholder package's error deep inside pip.
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "${WITH_TENSORRT}" = 1 ]; then \
      unreachable="build.Dockerfile: TensorRT's wheels come from NVIDIA's index, and TENSORRT_INDEX_URL=${TENSORRT_INDEX_URL} cannot be reached from this build: pass --build-arg TENSORRT_INDEX_URL=<NVIDIA's index https://pypi.nvidia.com, or a mirror of it>, or --build-arg WITH_TENSORRT=0 for the CPU variant (ONNX export only)"; \
      python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/tensorrt-cu12-libs/', timeout=30)" \
        "${TENSORRT_INDEX_URL}" 2>/dev/null || { echo "$unreachable" >&2; exit 1; }; \
      PIP_CACHE_DIR=/root/.cache/pip pip install -q -c constraints.txt --extra-index-url "${TENSORRT_INDEX_URL}" \
        "tensorrt-cu12-libs==${TENSORRT_VERSION}" "tensorrt-cu12-bindings==${TENSORRT_VERSION}" \
        "tensorrt-cu12==${TENSORRT_VERSION}" || { echo "$unreachable" >&2; exit 1; }; \
      python -c "import tensorrt"; \
    elif [ "${WITH_TENSORRT}" != 0 ]; then \
      echo "build.Dockerfile: WITH_TENSORRT must be 1 or 0, got '${WITH_TENSORRT}'" >&2; exit 1; \
    fi

COPY README.md ./
COPY services/ services/
COPY export/ export/
# (No pip check here: sam2 declares torchvision, which is left out on purpose.)
RUN pip install -q --no-cache-dir --no-deps --no-build-isolation -c constraints.txt . \
 && python -c "import torch, sam2, onnx, medsam2_export.onnx_export, medsam2_export.tensorrt_build" \
 && rm -rf /src/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin medsam2
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["medsam2"]
CMD ["--help"]
