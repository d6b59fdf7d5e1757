#!/usr/bin/env bash
# The README's main job for now: make an untrained checkpoint, export the stage graphs
# into a Triton model repository for ONNX Runtime, and verify them against sam2.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-work}"
MEDSAM2="${VENV:-.venv}/bin/medsam2"
CKPT="$WORK/untrained-seed2026.pt"
mkdir -p "$WORK"
[ -f "$CKPT" ] || "$MEDSAM2" checkpoint random --seed 2026 --objects present --out "$CKPT"
"$MEDSAM2" export --checkpoint "$CKPT" --out "$WORK/model_repository" --backend onnxruntime
"$MEDSAM2" verify --checkpoint "$CKPT" --onnx-dir "$WORK/model_repository" --json
