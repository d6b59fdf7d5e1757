"""Conformance corpus: every DICOM file pydicom and pydicom-data ship, through the segment pipeline.

The table says what each file must give: a SEG and a NIfTI (geometry checked against SimpleITK's reading of
the same DICOM, the SEG checked by dicom3tools' ``dciodvfy`` with no errors), a NIfTI with the SEG refused
before inference, or a named error on reading.  Never a traceback.  A file that is in neither package is
skipped (pydicom-data is installed by scripts/test_deps.sh); a file in a package but not in the table fails,
so new corpus files are noticed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import patience
from dicom_conformance import assert_same_itk_geometry, dciodvfy_errors, segment_in_process
from medsam2.errors import InvalidInput
from medsam2.io.errors import CorruptDicom, InvalidSegmentation, IrregularStack, NotAnImage, NotDicom

SEG_AND_NIFTI = frozenset(
    """
CT_small.dcm ExplVR_BigEnd.dcm GDCMJ2K_TextGBR.dcm J2K_pixelrep_mismatch.dcm JPEG-LL.dcm JPEG2000.dcm
JPEG2000_UNC.dcm JPGExtended.dcm JPGLosslessP14SV1_1s_1f_8b.dcm MR-SIEMENS-DICOM-WithOverlays.dcm MR2_J2KI.dcm
MR2_J2KR.dcm MR2_UNCI.dcm MR2_UNCR.dcm MR_small.dcm MR_small_RLE.dcm MR_small_bigendian.dcm MR_small_expb.dcm
MR_small_implicit.dcm MR_small_jp2klossless.dcm MR_small_jpeg_ls_lossless.dcm MR_small_padded.dcm OBXXXX1A.dcm
OBXXXX1A_expb.dcm OBXXXX1A_rle.dcm OT-PAL-8-face.dcm RG3_J2KI.dcm RG3_J2KR.dcm RG3_UNCI.dcm RG3_UNCR.dcm
SC_jpeg_no_color_transform.dcm SC_jpeg_no_color_transform_2.dcm SC_rgb.dcm SC_rgb_16bit.dcm SC_rgb_32bit.dcm
SC_rgb_dcmtk_+eb+cr.dcm SC_rgb_dcmtk_+eb+cy+n1.dcm SC_rgb_dcmtk_+eb+cy+n2.dcm SC_rgb_dcmtk_+eb+cy+np.dcm
SC_rgb_dcmtk_+eb+cy+s2.dcm SC_rgb_dcmtk_+eb+cy+s4.dcm SC_rgb_dcmtk_ebcr_dcmd.dcm SC_rgb_dcmtk_ebcyn1_dcmd.dcm
SC_rgb_dcmtk_ebcyn2_dcmd.dcm SC_rgb_dcmtk_ebcynp_dcmd.dcm SC_rgb_dcmtk_ebcys2_dcmd.dcm SC_rgb_dcmtk_ebcys4_dcmd.dcm
SC_rgb_expb.dcm SC_rgb_expb_16bit.dcm SC_rgb_expb_32bit.dcm SC_rgb_gdcm2k_uncompressed.dcm SC_rgb_gdcm_KY.dcm
SC_rgb_jpeg.dcm SC_rgb_jpeg_app14_dcmd.dcm SC_rgb_jpeg_dcmd.dcm SC_rgb_jpeg_dcmtk.dcm SC_rgb_jpeg_gdcm.dcm
SC_rgb_jpeg_lossy_gdcm.dcm SC_rgb_rle.dcm SC_rgb_rle_16bit.dcm SC_rgb_rle_32bit.dcm SC_rgb_small_odd.dcm
SC_rgb_small_odd_big_endian.dcm SC_rgb_small_odd_jpeg.dcm SC_ybr_full_422_uncompressed.dcm
SC_ybr_full_uncompressed.dcm US1_J2KI.dcm US1_J2KR.dcm US1_UNCI.dcm US1_UNCR.dcm eCT_Supplemental.dcm
examples_jpeg2k.dcm examples_overlay.dcm examples_palette.dcm examples_rgb_color.dcm explicit_VR-UN.dcm
gdcm-US-ALOKA-16.dcm gdcm-US-ALOKA-16_big.dcm image_dfl.dcm mlut_18.dcm vlut_04.dcm CT5N
""".split()
)
"""Files that give both a SEG (dciodvfy: no errors) and a NIfTI at SimpleITK's geometry."""

_NO_GEOMETRY = (InvalidInput, r"frames have no patient geometry .* write \.nii\.gz")
_NO_FRAME_OF_REFERENCE = (InvalidSegmentation, r"no Frame Of Reference UID, but it is required by the IOD.*\.nii\.gz")
_RETIRED_CLASS = (InvalidSegmentation, r"Ultrasound Image Storage, is one highdicom has no IOD for.*\.nii\.gz")
NIFTI_ONLY: dict[str, tuple[type[Exception], str]] = {
    # Cine loops (ultrasound, secondary capture) without positions: no multi-frame SEG can place them.
    **{
        name: _NO_GEOMETRY
        for name in (
            "OBXXXX1A_2frame.dcm",
            "OBXXXX1A_expb_2frame.dcm",
            "OBXXXX1A_rle_2frame.dcm",
            "SC_rgb_2frame.dcm",
            "SC_rgb_16bit_2frame.dcm",
            "SC_rgb_32bit_2frame.dcm",
            "SC_rgb_expb_2frame.dcm",
            "SC_rgb_expb_16bit_2frame.dcm",
            "SC_rgb_expb_32bit_2frame.dcm",
            "SC_rgb_rle_2frame.dcm",
            "SC_rgb_rle_16bit_2frame.dcm",
            "SC_rgb_rle_32bit_2frame.dcm",
            "color3d_jpeg_baseline.dcm",
            "examples_ybr_color.dcm",
        )
    },
    # CT images that lack their (Type 1) FrameOfReferenceUID: a SEG over CT must share one.
    **{
        name: _NO_FRAME_OF_REFERENCE
        for name in ("693_J2KI.dcm", "693_J2KR.dcm", "693_UNCI.dcm", "693_UNCR.dcm", "bad_sequence.dcm")
    },
    # The retired Ultrasound Image Storage class (1.2.840.10008.5.1.4.1.1.6), unknown to highdicom.
    "color-pl.dcm": _RETIRED_CLASS,
    "color-px.dcm": _RETIRED_CLASS,
}
"""Files that give a NIfTI, with the SEG refused before inference by the named error."""

_NOT_IMAGE = (NotAnImage, r"not an image")
_NO_SOP_CLASS = (CorruptDicom, r"no SOPClassUID")
_NO_UIDS = (CorruptDicom, r"lacks SeriesInstanceUID, StudyInstanceUID")
_ZERO_SPACING = (IrregularStack, r"PixelSpacing is \[0\.0, 0\.0\]; a pixel needs a positive size")
_NO_GROUPS = (IrregularStack, r"Enhanced MR Image Storage object whose functional groups give no plane position")
_UNDECODABLE = (CorruptDicom, r"every installed decoder failed on this JPEG")
REFUSED: dict[str, tuple[type[Exception], str]] = {
    **{
        name: _NOT_IMAGE
        for name in (
            "ExplVR_BigEndNoMeta.dcm",
            "ExplVR_LitEndNoMeta.dcm",
            "badVR.dcm",
            "liver.dcm",
            "liver_1frame.dcm",
            "liver_expb.dcm",
            "liver_expb_1frame.dcm",
            "reportsi.dcm",
            "reportsi_with_empty_number_tags.dcm",
            "rtdose.dcm",
            "rtdose_1frame.dcm",
            "rtdose_expb.dcm",
            "rtdose_expb_1frame.dcm",
            "rtdose_rle.dcm",
            "rtdose_rle_1frame.dcm",
            "rtplan.dcm",
            "rtplan_truncated.dcm",
            "rtstruct.dcm",
            "test-SR.dcm",
            "waveform_ecg.dcm",
        )
    },
    **{
        name: _NO_SOP_CLASS
        for name in (
            "UN_sequence.dcm",
            "empty_charset_LEI.dcm",
            "meta_missing_tsyntax.dcm",
            "nested_priv_SQ.dcm",
            "no_meta_group_length.dcm",
            "priv_SQ.dcm",
        )
    },
    # pydicom's JPEG-LS codec samples: pixel data with a bare header, no study or series.
    **{
        name: _NO_UIDS
        for name in (
            "JPEGLSNearLossless_08.dcm",
            "JPEGLSNearLossless_16.dcm",
            "SC_rgb_jls_lossy_line.dcm",
            "SC_rgb_jls_lossy_sample.dcm",
        )
    },
    **{name: _ZERO_SPACING for name in ("RG1_J2KI.dcm", "RG1_J2KR.dcm", "RG1_UNCI.dcm", "RG1_UNCR.dcm")},
    **{
        name: _NO_GROUPS
        for name in (
            "emri_small.dcm",
            "emri_small_RLE.dcm",
            "emri_small_big_endian.dcm",
            "emri_small_jpeg_2k_lossless.dcm",
            "emri_small_jpeg_ls_lossless.dcm",
        )
    },
    # Damaged on purpose in pydicom's tests: libjpeg and Pillow both fail; the J2K header is unreadable.
    "JPEG-lossy.dcm": _UNDECODABLE,
    "JPEG2000-embedded-sequence-delimiter.dcm": _UNDECODABLE,
    "MR_truncated.dcm": (CorruptDicom, r"truncated or corrupt: its DICOM elements end at byte"),
    "emri_small_jpeg_2k_lossless_too_short.dcm": (CorruptDicom, r"truncated or corrupt"),
    "no_meta.dcm": (NotDicom, r"not a DICOM file"),
}
"""Files refused on reading, each with a named error."""

# Single images whose slice spacing SimpleITK and we choose differently (neither is in the file): a 2-D image
# has no slice spacing, SimpleITK says 1 mm or SliceThickness, we say SliceThickness or 1 mm.
_MULTI_SLICE = frozenset({"CT5N", "eCT_Supplemental.dcm"})


def corpus_roots() -> list[Path]:
    """pydicom's test files and pydicom-data's files (when installed)."""
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # the pydicom-data package

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return roots


def corpus() -> dict[str, Path]:
    """Every corpus file by name (and the 5-slice CT series CT5N as a folder)."""
    files = {p.name: p for root in corpus_roots() for p in root.glob("*.dcm")}
    files["CT5N"] = corpus_roots()[0] / "dicomdirtests" / "98892001" / "CT5N"
    return files


def test_the_table_covers_the_corpus() -> None:
    files = corpus()
    table = SEG_AND_NIFTI | set(NIFTI_ONLY) | set(REFUSED)
    assert not (SEG_AND_NIFTI & set(NIFTI_ONLY)) and not (SEG_AND_NIFTI & set(REFUSED))
    assert sorted(set(files) - table) == []
    assert len(files) >= 80  # pydicom alone; about 150 with pydicom-data


@pytest.fixture(scope="module")
def backend(graphs: dict[str, Path]):
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(graphs["present"], threads=2)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed: run scripts/test_deps.sh")
    return path


def _cases(names) -> list:
    files = corpus()
    return [pytest.param(name, id=name) for name in sorted(names) if name in files]


@pytest.mark.parametrize("name", _cases(SEG_AND_NIFTI))
def test_seg_and_nifti(name: str, backend, dciodvfy: str, tmp_path: Path) -> None:
    source = corpus()[name]
    outcome = segment_in_process(source, {"seg": tmp_path / "r.dcm", "nifti": tmp_path / "r.nii.gz"}, backend)
    assert outcome.read_error is None and not outcome.refused, (outcome.read_error, outcome.refused)
    assert dciodvfy_errors(outcome.written["seg"]) == []
    assert_same_itk_geometry(outcome.written["nifti"], source, compare_slice_spacing=name in _MULTI_SLICE)


@pytest.mark.parametrize("name", _cases(NIFTI_ONLY))
def test_seg_refused_before_inference_nifti_written(name: str, backend, tmp_path: Path) -> None:
    error, match = NIFTI_ONLY[name]
    source = corpus()[name]
    outcome = segment_in_process(source, {"seg": tmp_path / "r.dcm", "nifti": tmp_path / "r.nii.gz"}, backend)
    assert outcome.read_error is None
    refusal = outcome.refused.get("seg")
    assert isinstance(refusal, error) and re.search(match, str(refusal)), refusal
    assert str(source) in str(refusal)  # the refusal names the file
    assert not (tmp_path / "r.dcm").exists()
    assert_same_itk_geometry(outcome.written["nifti"], source, compare_slice_spacing=False)


@pytest.mark.parametrize("name", _cases(REFUSED))
def test_refused_on_reading(name: str, backend, tmp_path: Path) -> None:
    error, match = REFUSED[name]
    outcome = segment_in_process(corpus()[name], {"nifti": tmp_path / "r.nii.gz"}, backend)
    assert isinstance(outcome.read_error, error) and re.search(match, str(outcome.read_error)), outcome.read_error
    assert name in str(outcome.read_error)


# A few real command-line runs: exit codes, and nothing like a traceback on stderr.
CLI_CASES = [
    ("CT_small.dcm", ".dcm", 0, None),
    ("OT-PAL-8-face.dcm", ".dcm", 0, None),  # no file meta, PALETTE COLOR
    ("RG1_UNCR.dcm", ".nii.gz", 2, "PixelSpacing is [0.0, 0.0]"),
    ("emri_small.dcm", ".dcm", 2, "functional groups give no plane position"),
    ("SC_rgb_2frame.dcm", ".dcm", 2, "write .nii.gz"),
]


@pytest.mark.parametrize(("name", "suffix", "code", "message"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_exit_codes_without_tracebacks(
    name: str, suffix: str, code: int, message: str | None, graphs: dict[str, Path], tmp_path: Path
) -> None:
    files = corpus()
    if name not in files:
        pytest.skip(f"{name} is in pydicom-data, which is not installed")
    out = tmp_path / f"r{suffix}"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "services"), str(repo / "export")])}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "medsam2.cli.main",
            "--threads",
            "2",
            "segment",
            str(files[name]),
            "--out",
            str(out),
            "--slice",
            "0",
            "--box",
            "1,1,2,2",
            "--graphs",
            str(graphs["present"]),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=patience.COMMAND_S,
        env=env,
        check=False,
    )
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr and "Warning" not in run.stderr, run.stderr
    if message is not None:
        assert message in run.stderr and str(files[name]) in run.stderr
    else:
        assert out.exists()
