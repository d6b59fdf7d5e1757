#!/usr/bin/env bash
# System services the integration tests need, installed from Debian and PyPI packages.
# Idempotent: each part checks before it installs. Run by `make test` after bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- Orthanc (PACS with DICOMweb) --------------------------------------------------------
# (owned by the DICOM I/O work; see tests/ for how it is started inside a network namespace)

# --- Triton (tritonserver from the nvidia-pytriton wheel, CPU, Python backend) ----------
# (owned by the service work)
