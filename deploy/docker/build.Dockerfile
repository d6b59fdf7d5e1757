# syntax=docker/dockerfile:1
# The model build job: download a published checkpoint, export the ONNX stage graphs and build TensorRT FP16
# engines into a Triton model repository. Run it on the GPU model that will serve (engines are GPU-specific):
#   docker build -f deploy/docker/build.Dockerfile -t medsam2-build .           (from the repository root)
#   docker run --gpus 1 -v /srv/models:/models medsam2-build \
#       sh -c 'medsam2 checkpoint download MedSAM2_latest --out /models/.checkpoints &&
#              medsam2 export --checkpoint /models/.checkpoints/MedSAM2_latest.pt --out /models/v1 --backend tensorrt'
# torch is the CPU build: export runs on the CPU, only the TensorRT engine build uses the GPU (the driver comes
# from the node through the NVIDIA container runtime; the CUDA runtime libraries come with the TensorRT wheels).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG SAM2_VERSION=1.1.0
# Must be the TensorRT of the Triton image that loads the engines (tritonserver 24.12: TensorRT 10.7.0); pinned in
# export/medsam2_export/tensorrt_build.py (TENSORRT_VERSION), which the build checks, and tested to agree.
ARG TENSORRT_VERSION=10.7.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    MEDSAM2_HOME=/tmp/medsam2

# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build); then sam2 without its CUDA extension
# and without build isolation or dependencies, so that it cannot replace torch (as scripts/bootstrap.sh does).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir "setuptools>=68" "wheel>=0.43" \
 && SAM2_BUILD_CUDA=0 pip install --no-cache-dir --no-build-isolation --no-deps "sam2==${SAM2_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
COPY export/ export/
# This project with its export and tensorrt extras (their versions are pinned in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[export,tensorrt]" "tensorrt-cu12==${TENSORRT_VERSION}" \
 && python -c "import torch, sam2, onnx, tensorrt, medsam2_export.tensorrt_build" \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin medsam2
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["medsam2"]
CMD ["--help"]
