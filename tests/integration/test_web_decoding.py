"""The page's own NIfTI reader and mask decoder (web/src/volume.js, run by node) against nibabel and the service."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from google.protobuf import json_format

from medsam2.api.convert import encode_mask
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs node (v20) to run the page's code")


def _decode(path: Path, masks: list[dict] | None = None, tmp: Path | None = None) -> dict:
    args = ["node", str(REPO / "web" / "test" / "decode.mjs"), str(path)]
    if masks is not None:
        (tmp / "masks.json").write_text(json.dumps(masks))
        args.append(str(tmp / "masks.json"))
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def _expected(voxels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(voxels).tobytes()).hexdigest()


def test_a_real_mr_reads_as_the_service_expects_it() -> None:
    image = nib.load(ANATOMICAL)
    got = _decode(ANATOMICAL)["volume"]
    data = np.asanyarray(image.dataobj)
    # The page uploads [slices, rows, columns] in C order: NIfTI's own x-fastest memory order.
    assert got["shape"] == [data.shape[2], data.shape[1], data.shape[0]]
    assert got["spacing"] == pytest.approx([float(z) for z in image.header.get_zooms()[::-1]])
    # A real big-endian int16 file: the page swaps it to the little-endian bytes the service takes.
    assert image.header.endianness == ">" and got["dtype"] == "DATA_TYPE_INT16"
    assert got["sha256"] == _expected(data.transpose(2, 1, 0).astype("<i2"))


def test_gzipped_and_scaled_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(40, 300, size=(7, 6, 5)).astype(np.float32)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)  # nibabel stores the floats as int16 with a slope and an intercept
    plain = tmp_path / "scaled.nii"
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.6, 2.0, 1.0]), header), plain)
    stored = nib.load(plain)
    assert stored.header.get_data_dtype() == np.int16 and stored.dataobj.slope != 1.0 and stored.dataobj.inter != 0
    gzipped = tmp_path / "scaled.nii.gz"
    gzipped.write_bytes(gzip.compress(plain.read_bytes()))
    expected = stored.get_fdata(dtype=np.float32).transpose(2, 1, 0)
    for path in (plain, gzipped):
        got = _decode(path)["volume"]
        assert got["dtype"] == "DATA_TYPE_FLOAT32" and got["shape"] == [5, 6, 7]
        assert got["spacing"] == pytest.approx([2.0, 0.6, 0.5])
        assert got["sha256"] == _expected(expected.astype("<f4"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an image at all\n" * 30, "is not a NIfTI image (no NIfTI-1 header)"),
        (b"tiny", "too short"),
        (gzip.compress(b"x" * 400, mtime=0), "no NIfTI-1 header"),
        (b"\x1f\x8bbroken gzip", "does not decompress"),
    ],
    # Named ids: pytest-xdist's workers each collect, and must agree on every test's id.
    ids=["text", "tiny", "gzip-of-text", "broken-gzip"],
)
def test_files_that_are_not_images_are_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "upload.nii.gz"
    path.write_bytes(content)
    assert message in _decode(path)["error"] and "upload.nii.gz" in _decode(path)["error"]


def test_a_4d_file_is_refused_with_its_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "fmri.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.uint8), np.eye(4)), path)
    assert "4 dimensions 4×5×6×3" in _decode(path)["error"]


def test_masks_the_service_sends_decode_to_the_same_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    masks = [rng.random((13, 21)) > 0.6, np.zeros((4, 9), bool), np.ones((3, 3), bool)]
    messages = [
        json_format.MessageToDict(encode_mask(m, encoding)) | {"rows": m.shape[0], "columns": m.shape[1]}
        for m in masks
        for encoding in (pb.MASK_ENCODING_BITPACKED, pb.MASK_ENCODING_RLE)
    ]
    decoded = _decode(ANATOMICAL, messages, tmp_path)["masks"]
    for index, mask in enumerate(m for m in masks for _ in range(2)):
        assert decoded[index] == "".join("1" if v else "0" for v in mask.ravel())
