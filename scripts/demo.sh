#!/usr/bin/env bash
# The README's main job: make (or reuse) a checkpoint, export the stage graphs into a Triton
# model repository, verify them against sam2, segment a real MR volume from the terminal,
# then start the session service on the embedded ONNX Runtime backend and segment the same
# volume through it with the gRPC client. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-work}"
VENV="${VENV:-.venv}"
MEDSAM2="$VENV/bin/medsam2"
PY="$VENV/bin/python"
mkdir -p "$WORK"

CKPT="${CHECKPOINT:-$WORK/untrained-seed2026.pt}"
if [ ! -f "$CKPT" ]; then
    "$MEDSAM2" checkpoint random --seed 2026 --objects present --out "$CKPT"
fi
case "$CKPT" in
    *untrained*) echo "NOTE: $CKPT is an UNTRAINED checkpoint: the masks below are meaningless." \
                      "Use real weights: $MEDSAM2 checkpoint download MedSAM2_latest --out ~/.cache/medsam2, then CHECKPOINT=... make demo" ;;
esac

"$MEDSAM2" export --checkpoint "$CKPT" --out "$WORK/model_repository" --backend onnxruntime
"$MEDSAM2" verify --checkpoint "$CKPT" --onnx-dir "$WORK/model_repository"

# A real brain MR that ships with nibabel (33 x 41 x 25 voxels, 2 mm).
SAMPLE="$("$PY" -c 'import nibabel, pathlib; print(pathlib.Path(nibabel.__file__).parent / "tests/data/anatomical.nii")')"
BOX="8,10,25,32"
"$MEDSAM2" segment "$SAMPLE" --graphs "$WORK/model_repository" --box "$BOX" --slice 12 --preset percentile \
    --out "$WORK/anatomical_seg.nii.gz"

PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
HTTP_PORT="${MEDSAM2_HTTP_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
"$MEDSAM2" serve --model-repository "$WORK/model_repository" --port "$PORT" --metrics-port 0 --http-port "$HTTP_PORT" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
"$PY" - "$PORT" <<'PYEOF'
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}"))
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
            sys.exit(0)
    except grpc.RpcError:
        pass
    time.sleep(0.5)
sys.exit("the service did not become ready")
PYEOF
"$MEDSAM2" client "$SAMPLE" --server "127.0.0.1:$PORT" --box "$BOX" --slice 12 --preset percentile \
    --out "$WORK/anatomical_seg_via_service.nii.gz"

# The web viewer on the same service: open the URL, choose the sample (printed below) as the NIfTI file.
echo "web viewer: http://127.0.0.1:$HTTP_PORT/   (sample study: $SAMPLE)"
if [ -t 0 ] && [ -z "${CI:-}" ]; then
    echo "the service keeps running for the viewer: press Ctrl-C to stop it"
    wait "$SERVER" || true
fi
