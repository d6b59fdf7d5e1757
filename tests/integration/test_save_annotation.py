"""SaveAnnotation: a corrected session becomes a MedSAM2 training case in the server's store, and finetune reads it.

A real in-process server over loopback with the real graphs; two principals from a tokens file, so the store's
folders are checked per principal. The saved image must be exactly the slices the service tracked (at their own
size, not the model's 512x512), and the labels exactly the masks GetResult returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.cli.main import main
from medsam2.datasets.training_npz import read_training_case
from medsam2.errors import OutputNotWritable
from medsam2.server.annotation_store import principal_folder
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2_export.finetune.data import load_dataset
from medsam2_export.parity import synthetic_volume
from rpc_errors import rpc_failure

SLICES, ROWS, COLS = 5, 40, 56
SPACING = (2.0, 0.8, 0.7)


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, list]:
    return synthetic_volume(seed=21, slices=SLICES, height=ROWS, width=COLS)


@pytest.fixture(scope="module")
def served(graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("annotating")
    tokens = folder / "tokens"
    tokens.write_text("alice:alice-secret\nbob:bob-secret\n")
    store = folder / "store"
    settings = ServerSettings(
        port=0, metrics_port=0, model_repository=graphs["present"], auth_tokens=tokens, annotations_dir=store
    )
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    target = f"127.0.0.1:{running.port}"
    clients = {name: Client(target, token=f"{name}-secret") for name in ("alice", "bob")}
    yield target, clients, store
    for c in clients.values():
        c.close()
    running.stop(1)


def _segment(client: Client, frames: np.ndarray, boxes: list, *, label: str = "liver case") -> pb.Session:
    session = client.create_session(frames, SPACING, preset="none", modality="CT", label=label)
    box = boxes[0]
    client.add_box(session.session_id, 3, 2, (box.x0, box.y0, box.x1, box.y1))
    list(client.propagate(session.session_id))
    return session


def test_saved_case_is_the_tracked_image_and_the_final_masks(served, study, checkpoints, tmp_path: Path) -> None:
    _, clients, store = served
    alice = clients["alice"]
    frames, boxes = study
    session = _segment(alice, frames, boxes)
    masks = alice.object_masks(session.session_id)
    assert masks[3].any(), "the test needs a non-empty segmentation"

    reply = alice.save_annotation(session.session_id, case_name="../liver/01", request_id="save-1")
    path = store / reply.folder / reply.case_file
    assert reply.folder == principal_folder("alice") and path.parent.parent == store
    assert reply.case_file.startswith("liver_01-") and reply.case_file.endswith(".npz")
    assert reply.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and reply.size_bytes == path.stat().st_size
    assert list(reply.object_ids) == [3] and reply.model_version == session.model_version

    case = read_training_case(path)
    np.testing.assert_array_equal(case.imgs, frames)  # preset none: the upload itself, at its own size
    np.testing.assert_array_equal(case.gts == 3, masks[3])
    assert set(np.unique(case.gts)) == {0, 3}
    assert case.spacing == SPACING and case.modality == "CT" and not case.video
    assert case.provenance["saved_by"] == "alice" and case.provenance["source"] == "medsam2 serve SaveAnnotation"
    assert "saved_at" in case.provenance and case.provenance["model_version"] == 1

    # A retry of the same request saves nothing again; a new request saves a second case.
    again = alice.save_annotation(session.session_id, case_name="../liver/01", request_id="save-1")
    assert again == reply and len(list(path.parent.glob("*.npz"))) == 1

    # finetune reads the principal's folder as it is.
    (loaded,) = load_dataset(path.parent, clip_length=2)
    np.testing.assert_array_equal(loaded.gts, case.gts)
    out = tmp_path / "tuned.pt"
    command = ["finetune", "--checkpoint", str(checkpoints["present"]), "--dataset", str(path.parent)]
    command += ["--out", str(out), "--steps", "1", "--clip-length", "2", "--freeze-encoder", "--no-progress"]
    assert main(command) == 0 and out.stat().st_size > 0
    alice.close_session(session.session_id)


def test_refusals_are_clear_and_leave_nothing(served, study, graphs: dict[str, Path], tmp_path: Path) -> None:
    target, clients, store = served
    alice, bob = clients["alice"], clients["bob"]
    frames, boxes = study
    empty = alice.create_session(frames, SPACING, preset="none", modality="CT")
    failure = rpc_failure(lambda: alice.save_annotation(empty.session_id))
    assert failure.code() == grpc.StatusCode.FAILED_PRECONDITION and "no masks" in failure.details()

    session = _segment(alice, frames, boxes)
    # Sessions are private: another principal cannot save (or even see) alice's.
    assert rpc_failure(lambda: bob.save_annotation(session.session_id)).code() == grpc.StatusCode.NOT_FOUND
    assert not (store / principal_folder("bob")).exists()
    assert "save-annotation" in alice.server_info().capabilities

    # A server without a store refuses before it looks at the session, and says how to enable it.
    settings = ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"])
    bare = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=1))
    try:
        plain = Client(f"127.0.0.1:{bare.port}")
        try:
            failure = rpc_failure(lambda: plain.save_annotation("no-such-session"))
            assert failure.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--annotations-dir" in failure.details()
            assert "save-annotation" not in plain.server_info().capabilities
        finally:
            plain.close()
    finally:
        bare.stop(1)
    for name in (empty.session_id, session.session_id):
        alice.close_session(name)

    # An annotation store that cannot be written is a start-up error, before any port opens.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputNotWritable, match="cannot write annotations"):
        start_server(
            ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"], annotations_dir=blocker / "x"),
            OnnxRuntimeBackend(graphs["present"], threads=1),
        )


def test_client_store_annotation(served, study, tmp_path: Path, capsys) -> None:
    target, clients, store = served
    frames, boxes = study
    np.savez(tmp_path / "study.npz", imgs=frames, spacing=np.asarray(SPACING))
    box = boxes[0]
    args = ["client", str(tmp_path / "study.npz"), "--server", target, "--token", "bob-secret", "--preset", "none"]
    args += ["--box", f"{box.x0},{box.y0},{box.x1},{box.y1}", "--slice", "2", "--out", str(tmp_path / "r.npz")]
    assert main([*args, "--no-progress", "--json", "--store-annotation"]) == 0
    summary = json.loads(capsys.readouterr().out)
    saved = store / summary["annotation"]["folder"] / summary["annotation"]["case_file"]
    assert summary["annotation"]["folder"] == principal_folder("bob")
    case = read_training_case(saved)
    np.testing.assert_array_equal(case.gts > 0, np.load(tmp_path / "r.npz")["segs"] > 0)
    assert case.provenance["saved_by"] == "bob"


def test_a_full_annotation_folder_is_resource_exhausted(graphs: dict[str, Path], study, tmp_path: Path) -> None:
    """MEDSAM2_ANNOTATIONS_MAX_BYTES through the service: past it, SaveAnnotation says so and writes nothing."""
    from medsam2.settings import resolve

    settings = resolve(
        ServerSettings,
        argparse.Namespace(),
        {"MEDSAM2_ANNOTATIONS_DIR": str(tmp_path / "store"), "MEDSAM2_ANNOTATIONS_MAX_BYTES": "1"},
    )
    settings = dataclasses.replace(settings, port=0, metrics_port=0, model_repository=graphs["present"])
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    client = Client(f"127.0.0.1:{running.port}")
    try:
        frames, boxes = study
        session = _segment(client, frames, boxes)
        first = client.save_annotation(session.session_id)
        failure = rpc_failure(lambda: client.save_annotation(session.session_id))
        assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the limit is 1" in failure.details()
        assert [p.name for p in (tmp_path / "store" / first.folder).glob("*.npz")] == [first.case_file]
    finally:
        client.close()
        running.stop(1)
