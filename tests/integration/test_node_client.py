"""A Node.js client written from proto/ alone (tests/node/client.mjs, @grpc/grpc-js and @grpc/proto-loader)
runs box -> propagate -> correct -> result against a real `medsam2 serve`, and what it painted from the streams
equals the stored result, which the Python client reads back the same."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import google.rpc
import numpy as np
import pytest

from medsam2_export.parity import synthetic_volume
from serve_process import REPO, ServeProcess

NODE_DIR = REPO / "tests" / "node"
SLICES, ROWS, COLS, KEY, FIX = 6, 40, 48, 2, 4


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None or not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("node or tests/node/node_modules is missing: run scripts/test_deps.sh (npm ci in tests/node)")
    return found


def test_a_node_client_from_the_proto_alone(node: str, graphs: dict[str, Path], tmp_path: Path) -> None:
    frames, boxes = synthetic_volume(seed=8, slices=SLICES, height=ROWS, width=COLS)
    voxels = tmp_path / "study.raw"
    voxels.write_bytes(np.ascontiguousarray(frames, np.uint8).tobytes())
    b = boxes[0]
    # googleapis-common-protos ships google/rpc/*.proto beside its modules (google.rpc is a namespace package).
    google_protos = Path(next(iter(google.rpc.__path__))).parents[1]
    assert (google_protos / "google" / "rpc" / "status.proto").is_file()
    with ServeProcess(graphs["present"], log=tmp_path / "serve.log") as service:
        done = subprocess.run(
            [node, str(NODE_DIR / "client.mjs"), service.target, str(voxels), str(SLICES), str(ROWS), str(COLS)]
            + [str(KEY), f"{b.x0},{b.y0},{b.x1},{b.y1}", str(FIX), str(google_protos)],
            capture_output=True,
            text=True,
            timeout=600,  # a few dozen tracked slices of 40x48; minutes only on a slow, loaded machine
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    tracked = [m for m in report["first"] if m["pass"] != "final"]
    assert [m["done"] for m in tracked] == list(range(1, SLICES + 1)) and {m["total"] for m in tracked} == {SLICES}
    assert report["second"][0]["pass"] == "correction"
    assert report["voxels"] > 0 and report["mismatched"] == 0, report
    (entry,) = report["label_map"]
    assert (entry["value"], entry["object_id"], entry["name"]) == (1, 1, "object 1") and len(entry["colour_rgb"]) == 3
    refused = report["refused"]
    assert refused["code"] == 3  # INVALID_ARGUMENT
    assert refused["details"]["ErrorInfo"]["reason"] == "INVALID_PROMPT"
    assert refused["details"]["BadRequest"]["field_violations"][0]["field"] == "object_id"
