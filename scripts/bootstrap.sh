#!/usr/bin/env bash
# Create or update the project's virtual environment. Safe to run again.
#   scripts/bootstrap.sh            runtime + export + dev tools + OpenVINO (CPU backend, bf16)
# torch must come first and pinned: this machine keeps the CPU wheel of 2.13.0 on disk,
# while an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# Every package at the version constraints.txt pins (scripts/gen_constraints.py writes it from a resolved
# environment; tests/unit/test_constraints.py fails when what is installed drifts from it).
pip install -c constraints.txt pip setuptools
pip install -c constraints.txt "torch==2.13.0"
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
    # No CUDA extension and no build isolation: otherwise pip builds it against a fresh torch download.
    SAM2_BUILD_CUDA=0 pip install -c constraints.txt --no-build-isolation --no-deps "sam2==1.1.0"
fi
pip install -c constraints.txt -e ".[export,eval,dev,openvino,codecs]"
scripts/build_web.sh
echo "environment ready: $VENV"
