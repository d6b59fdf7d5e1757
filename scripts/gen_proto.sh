#!/usr/bin/env bash
# Regenerate the committed gRPC stubs from proto/ (tests check they are fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=services/medsam2/api/pb
"$PY" -m grpc_tools.protoc -Iproto --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" proto/medsam2/v1/segmentation.proto
# protoc writes package-relative imports; make them absolute within our package.
sed -i 's/^from medsam2\.v1 import/from medsam2.api.pb.medsam2.v1 import/' "$OUT"/medsam2/v1/*_grpc.py
# The proto's comments by full name, for the gateway's OpenAPI descriptions (medsam2/gateway/proto_comments.py).
SET="$(mktemp)"
trap 'rm -f "$SET"' EXIT
"$PY" -m grpc_tools.protoc -Iproto --include_source_info --descriptor_set_out="$SET" proto/medsam2/v1/segmentation.proto
PYTHONPATH=services "$PY" -m medsam2.gateway.proto_comments "$SET" "$OUT"/medsam2/v1/segmentation_comments.json
