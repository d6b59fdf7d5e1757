# syntax=docker/dockerfile:1
# Triton with a MedSAM2 model repository inside, for fleets of one GPU model (the chart's
# modelRepository.source=image). Build it on, or for, that GPU model: TensorRT engines are GPU-specific.
#   medsam2 export --checkpoint MedSAM2_latest.pt --out work/model_repository --backend tensorrt   (on that GPU)
#   docker build -f deploy/docker/triton.Dockerfile -t medsam2-triton .          (from the repository root)
# The repository holds our generated config.pbtxt files (model_repository/tensorrt/ are the committed copies)
# and the engines. The chart's default instead runs the stock image below on a PVC filled by the build job.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}

ARG MODEL_REPOSITORY=work/model_repository
COPY ${MODEL_REPOSITORY} /models
# Refuse a repository without model files (e.g. the committed configs alone): every model but an ensemble
# needs <model>/<version>/model.plan or model.onnx.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN for config in /models/*/config.pbtxt; do \
      model="$(dirname "$config")"; \
      grep -q 'platform: "ensemble"' "$config" && continue; \
      ls "$model"/*/model.plan "$model"/*/model.onnx >/dev/null 2>&1 \
        || { echo "no model file under $model" >&2; exit 1; }; \
    done \
 && chmod -R a+rX /models
# The image's unprivileged triton-server user.
USER 1000:1000
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true"]
