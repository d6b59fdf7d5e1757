"""The service's study identity, results and API hygiene, in-process over loopback with the real graphs.

Geometry and modality travel with an upload and come back in the session and the NIfTI affine; per-object
masks and requested encodings; request ids make retries harmless; GetServerInfo tells what the server runs;
and every bad request gets a clear status and leaves the session as it was.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import grpc
import nibabel as nib
import numpy as np
import pytest

from medsam2.api.client import Client, slice_masks
from medsam2.api.convert import decode_mask, geometry_to_pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.graphs import MAX_POINTS
from medsam2.io.geometry import Geometry
from medsam2.models.provenance import ModelProvenance, write_provenance
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2_export.parity import synthetic_volume
from rpc_errors import rpc_failure, rpc_reason

SLICES, ROWS, COLS = 6, 48, 56
SHA = "ab" * 32
UNREACHABLE = "http://127.0.0.1:9/dicom-web"  # the discard port: nothing listens, connections are refused


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, list]:
    return synthetic_volume(seed=12, slices=SLICES, height=ROWS, width=COLS)


@pytest.fixture(scope="module")
def repository(graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test graphs with a provenance record, as an exported model repository carries one."""
    folder = tmp_path_factory.mktemp("repository")
    for onnx in graphs["present"].glob("*.onnx"):
        (folder / onnx.name).symlink_to(onnx)
    write_provenance(folder, ModelProvenance(version=1, checkpoint_sha256=SHA, untrained=True))
    return folder


@pytest.fixture(scope="module")
def server(repository: Path):
    settings = ServerSettings(
        port=0,
        metrics_port=0,
        model_repository=repository,
        max_sessions=6,
        max_study_voxels=SLICES * 512 * 512 * 2,
        pacs_endpoints=(("MEDSAM2_PACS_DOWN_URL", UNREACHABLE), ("MEDSAM2_PACS_DOWN_TIMEOUT_S", "2")),
    )
    running = start_server(settings, OnnxRuntimeBackend(repository, threads=2))
    yield running, f"127.0.0.1:{running.port}"
    running.stop(2)


@pytest.fixture
def client(server) -> Client:
    c = Client(server[1], routing_key="test-study")
    yield c
    c.close()


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, pb.Session | pb.SliceResult):
            list(result)
    return info.value.code(), info.value.details()


GEOMETRY = Geometry(
    origin=(-120.0, -80.5, 300.0),
    row_cosine=(1.0, 0.0, 0.0),
    column_cosine=(0.0, 0.8, -0.6),
    pixel_spacing=(0.7, 0.8),
    slice_step=(0.0, 1.5, 2.0),
)


def _hu(frames: np.ndarray) -> np.ndarray:
    """The uint8 study as CT numbers that reach only part of the abdomen window (-160..240 HU)."""
    return frames.astype(np.int16) - 100


def test_identity_geometry_and_auto_preset_come_back(client: Client, study) -> None:
    frames, boxes = study
    spacing = (2.5, 0.7, 0.8)
    session = client.create_session(
        _hu(frames),
        spacing,
        preset="auto",
        modality="ct",
        geometry=geometry_to_pb(GEOMETRY),
        external_id="ACC-0001",
        identity={
            "study_uid": "1.2.3",
            "series_uid": "1.2.3.4",
            "frame_of_reference_uid": "1.2.3.5",
            "sop_instance_uids": [f"1.2.3.4.{k}" for k in range(SLICES)],
        },
    )
    assert (session.modality, session.preset, session.external_id) == ("CT", "abdomen", "ACC-0001")
    assert (session.study_uid, session.series_uid, session.frame_of_reference_uid) == ("1.2.3", "1.2.3.4", "1.2.3.5")
    assert list(session.geometry.slice_step) == [0.0, 1.5, 2.0] and not session.dicom_results
    assert session.model_version == SHA[:12]
    box = boxes[0]
    client.add_box(session.session_id, 1, 2, (box.x0, box.y0, box.x1, box.y1))
    list(client.propagate(session.session_id))
    data, first = client.result(session.session_id, pb.RESULT_FORMAT_NIFTI_GZ)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert np.allclose(image.affine, GEOMETRY.affine_ras()) and int(image.header["sform_code"]) == 1
    labels, ids = client.result_labels(session.session_id)
    assert np.array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), labels) and ids == [1]
    masks = client.object_masks(session.session_id)
    assert list(masks) == [1] and np.array_equal(masks[1], labels == 1)
    # The upload has UIDs but no source headers: no SEG, and StoreResult says why before touching the PACS.
    code, details = _code(lambda: client.result(session.session_id, pb.RESULT_FORMAT_DICOM_SEG))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "without its source headers" in details
    client.close_session(session.session_id)


def test_store_result_without_dicom_identity_is_refused(client: Client, study) -> None:
    frames, boxes = study
    sid = client.create_session(frames, preset="none").session_id
    box = boxes[0]
    client.add_box(sid, 1, 2, (box.x0, box.y0, box.x1, box.y1))
    list(client.propagate(sid))
    before = client.object_masks(sid)
    code, details = _code(lambda: client.store_result(sid, "down"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "without DICOM identity" in details
    code, details = _code(lambda: client.store_result(sid, "elsewhere"))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown PACS endpoint 'elsewhere'" in details
    code, details = _code(lambda: client.result(sid, pb.RESULT_FORMAT_DICOM_SR))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "without DICOM identity" in details
    after = client.object_masks(sid)
    assert list(after) == list(before) and all(np.array_equal(after[i], before[i]) for i in before)
    client.close_session(sid)


def test_pacs_failures_open_nothing(client: Client) -> None:
    before = len(client.list_sessions())
    code, details = _code(lambda: client.open_pacs("nowhere", "1.2.3"))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown PACS endpoint 'nowhere'" in details and "down" in details
    code, details = _code(lambda: client.open_pacs("down", "1.2.3"))
    assert code == grpc.StatusCode.UNAVAILABLE and "cannot reach PACS down" in details
    assert UNREACHABLE not in details  # clients learn the endpoint's name, never its URL
    code, details = _code(lambda: client.open_pacs("down", ""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "study_uid" in details
    assert len(client.list_sessions()) == before


def test_prompt_replies_honour_the_encoding_and_retries_repeat_nothing(client: Client, study) -> None:
    frames, boxes = study
    header_id = "create-1"
    first = client.create_session(frames, preset="none", request_id=header_id)
    again = client.create_session(frames, preset="none", request_id=header_id)
    assert again.session_id == first.session_id
    sid = first.session_id
    box, other = boxes[0], boxes[1]
    rle = client.add_prompt(
        sid, 1, 2, box=(box.x0, box.y0, box.x1, box.y1), encoding=pb.MASK_ENCODING_RLE, request_id="p-1"
    )
    packed = client.add_prompt(sid, 1, 2, box=(box.x0, box.y0, box.x1, box.y1), request_id="p-2")
    assert rle.objects[0].mask.encoding == pb.MASK_ENCODING_RLE
    assert packed.objects[0].mask.encoding == pb.MASK_ENCODING_BITPACKED
    assert np.array_equal(decode_mask(rle.objects[0].mask), slice_masks(packed)[1])
    # A retry of p-2 is answered with p-2's reply: the retried request did not run again.
    retried = client.add_prompt(sid, 1, 2, box=(box.x0, box.y0, box.x1, box.y1), request_id="p-2")
    assert retried == packed
    # p-2 with another box is another request: refused, never answered with p-2's reply.
    reused = rpc_failure(
        lambda: client.add_prompt(sid, 1, 2, box=(other.x0, other.y0, other.x1, other.y1), request_id="p-2")
    )
    assert reused.code() == grpc.StatusCode.INVALID_ARGUMENT and rpc_reason(reused) == "REQUEST_ID_REUSED"
    fresh = client.add_prompt(sid, 1, 2, box=(other.x0, other.y0, other.x1, other.y1), request_id="p-3")
    assert not np.array_equal(slice_masks(fresh)[1], slice_masks(packed)[1])
    client.close_session(sid)


def test_bad_requests_leave_the_session_unchanged(client: Client, study) -> None:
    frames, boxes = study
    sid = client.create_session(frames, preset="none").session_id
    box = boxes[0]
    client.add_box(sid, 1, 2, (box.x0, box.y0, box.x1, box.y1))
    list(client.propagate(sid))
    masks = client.object_masks(sid)
    x, y = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    cases = [
        (
            lambda: client.add_prompt(sid, 7, 4, points=[(x, y, False)], correction=True),
            grpc.StatusCode.NOT_FOUND,
            "correction for unknown object 7",
        ),
        (
            lambda: client.add_prompt(sid, 1, 4, points=[(x, y, False)], encoding=9),
            grpc.StatusCode.INVALID_ARGUMENT,
            "encoding has the unknown value 9",
        ),
        (
            lambda: client.add_prompt(sid, 1, 4, points=[(x, y, True)] * (MAX_POINTS + 1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "too many points",
        ),
        (
            lambda: client.add_prompt(
                sid, 1, 4, points=[(x, y, True)], object_info=pb.ObjectInfo(colour_rgb=[300, 0, 0])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "colour",
        ),
        (lambda: client.result(sid, 42), grpc.StatusCode.INVALID_ARGUMENT, "format has the unknown value 42"),
        (
            lambda: client.propagate(sid, protocol=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "protocol has the unknown value 5",
        ),
        (
            lambda: client.propagate(sid, direction=8),
            grpc.StatusCode.INVALID_ARGUMENT,
            "direction has the unknown value 8",
        ),
    ]
    for call, status, message in cases:
        code, details = _code(call)
        assert code == status and message in details, (code, details)
    assert client.get_session(sid).object_ids == [1]
    after = client.object_masks(sid)
    assert np.array_equal(after[1], masks[1])
    client.close_session(sid)


def test_server_info(client: Client, server) -> None:
    info = client.server_info()
    assert (info.backend, info.precision) == ("onnxruntime", "fp32")
    assert info.model == pb.ModelInfo(version=1, checkpoint_sha256=SHA, short_sha=SHA[:12], untrained=True)
    assert info.limits.max_sessions == 6 and info.limits.max_study_voxels == SLICES * 512 * 512 * 2
    assert info.limits.max_points == MAX_POINTS and info.limits.max_message_bytes == 64 * 2**20
    assert {"auto", "abdomen", "percentile", "none"} <= set(info.presets)
    assert list(info.pacs_endpoints) == ["down"] and "store-result" in info.capabilities
    assert pb.RESULT_FORMAT_DICOM_SEG in info.result_formats and info.api_version == "medsam2.v1"
    assert info.backend == "onnxruntime" and info.server_version
    json.dumps(list(info.capabilities))  # plain strings


def test_object_masks_keep_overlaps(client: Client, study) -> None:
    frames, boxes = study
    sid = client.create_session(frames, preset="none").session_id
    box = boxes[0]
    for obj_id in (1, 2):  # the same box twice: two objects that overlap completely
        client.add_box(sid, obj_id, 2, (box.x0, box.y0, box.x1, box.y1))
    list(client.propagate(sid))
    masks = client.object_masks(sid)
    labels, ids = client.result_labels(sid)
    assert ids == [1, 2] and masks[1].any()
    assert np.array_equal(masks[1], masks[2])  # the label map can only show one of them
    # Equal sizes tie, and the lower id wins (io.labels' one overlap rule).
    assert not (labels == 2).any() and np.array_equal(labels == 1, masks[1])
    data, _ = client.result(sid, pb.RESULT_FORMAT_OBJECT_MASKS_NPZ)
    with np.load(io.BytesIO(data)) as npz:
        assert sorted(npz.files) == ["object_1", "object_2", "spacing"]
    client.close_session(sid)


def test_get_image_returns_the_study_as_loaded_with_its_affine(client: Client, study) -> None:
    frames, boxes = study
    voxels = _hu(frames)
    spacing = (2.5, 0.7, 0.8)
    kept = client.create_session(voxels, spacing, preset="auto", geometry=geometry_to_pb(GEOMETRY), keep_image=True)
    plain = client.create_session(voxels, spacing, preset="auto", geometry=geometry_to_pb(GEOMETRY))
    assert kept.image_kept and not plain.image_kept
    # The kept voxels count in the session's state, byte for byte.
    assert kept.state_bytes - plain.state_bytes == voxels.nbytes
    image = nib.Nifti1Image.from_bytes(gzip.decompress(client.image(kept.session_id)))
    assert image.get_data_dtype() == np.int16  # the intensities as loaded (HU), not the model's 8-bit input
    assert np.array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), voxels)
    assert np.allclose(image.affine, GEOMETRY.affine_ras()) and int(image.header["sform_code"]) == 1
    # The result's NIfTI lies on the same grid: a viewer overlays the one on the other.
    box = boxes[0]
    client.add_box(kept.session_id, 1, 2, (box.x0, box.y0, box.x1, box.y1))
    data, _ = client.result(kept.session_id, pb.RESULT_FORMAT_NIFTI_GZ)
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert labels.shape == image.shape and np.allclose(labels.affine, image.affine)
    # Chunks are bounded by chunk_bytes and tile the file.
    chunks = list(
        client.stub.GetImage(pb.GetImageRequest(session_id=kept.session_id, chunk_bytes=4096), metadata=client.metadata)
    )
    assert len(chunks) > 1 and all(len(c.data) <= 4096 for c in chunks)
    assert [c.offset for c in chunks] == [i * 4096 for i in range(len(chunks))]
    assert sum(len(c.data) for c in chunks) == chunks[0].total_bytes
    assert chunks[0].format == pb.RESULT_FORMAT_NIFTI_GZ and list(chunks[0].shape) == [SLICES, ROWS, COLS]
    # A session opened without keep_image says how to get one; an unknown session is NOT_FOUND.
    code, details = _code(lambda: client.image(plain.session_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "did not keep its image" in details
    assert "keep_image" in details
    code, details = _code(lambda: client.image("f" * 32))
    assert code == grpc.StatusCode.NOT_FOUND
    client.close_session(kept.session_id)
    client.close_session(plain.session_id)
    code, details = _code(lambda: client.image(kept.session_id))
    assert code == grpc.StatusCode.NOT_FOUND and "was closed" in details
