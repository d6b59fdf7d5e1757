"""The committed gRPC stubs are exactly what protoc generates from proto/ now."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_are_fresh(tmp_path: Path) -> None:
    out = tmp_path / "pb"
    (out / "medsam2" / "v1").mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            "medsam2/v1/segmentation.proto",
        ],
        check=True,
        cwd=ROOT,
    )
    grpc_file = out / "medsam2" / "v1" / "segmentation_pb2_grpc.py"
    grpc_file.write_text(
        grpc_file.read_text().replace("from medsam2.v1 import", "from medsam2.api.pb.medsam2.v1 import")
    )
    committed = ROOT / "services" / "medsam2" / "api" / "pb" / "medsam2" / "v1"
    for name in ("segmentation_pb2.py", "segmentation_pb2.pyi", "segmentation_pb2_grpc.py"):
        assert (out / "medsam2" / "v1" / name).read_text() == (committed / name).read_text(), (
            f"{name} is stale: run scripts/gen_proto.sh"
        )


def test_the_comments_for_the_openapi_document_are_fresh(tmp_path: Path) -> None:
    """The proto's comments as the gateway ships them are what protoc's source info says now."""
    from medsam2.gateway.proto_comments import COMMENTS_FILE, main

    descriptor_set, out = tmp_path / "set.binpb", tmp_path / COMMENTS_FILE
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            "--include_source_info",
            f"--descriptor_set_out={descriptor_set}",
            "medsam2/v1/segmentation.proto",
        ],
        check=True,
        cwd=ROOT,
    )
    main([str(descriptor_set), str(out)])
    committed = ROOT / "services" / "medsam2" / "api" / "pb" / "medsam2" / "v1" / COMMENTS_FILE
    assert out.read_text() == committed.read_text(), f"{COMMENTS_FILE} is stale: run scripts/gen_proto.sh"
    assert "Opaque id" in json.loads(committed.read_text())["medsam2.v1.Session.session_id"]
