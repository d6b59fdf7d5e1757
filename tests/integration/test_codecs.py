"""The ``codecs`` extra: with pylibjpeg's plug-ins 12-bit and lossless JPEG decode; without them the error names
the transfer syntax and the extra.  "Without" is a subprocess in which the plug-in packages cannot be imported
(an import hook hides them), so the same installed environment serves both sides honestly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import patience
from medsam2.io.volumes import read_volume

PLUGIN_PACKAGES = ("pylibjpeg", "libjpeg", "openjpeg", "rle")
_HIDE_PLUGINS = textwrap.dedent(f"""
    import sys

    class _HidePlugins:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {PLUGIN_PACKAGES!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
            return None

    sys.meta_path.insert(0, _HidePlugins())
    from medsam2.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def _file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is in pydicom-data, which is not installed")
    return Path(path)


def _without_plugins(*args: str) -> subprocess.CompletedProcess[str]:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "services"), str(repo / "export")])}
    return subprocess.run(
        [sys.executable, "-c", _HIDE_PLUGINS, *args],
        capture_output=True,
        text=True,
        timeout=patience.COMMAND_S,
        env=env,
        check=False,
    )


def test_the_plugins_are_installed() -> None:
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import JPEGExtended12Bit, JPEGLossless

    for uid in (JPEGExtended12Bit, JPEGLossless):
        assert "pylibjpeg" in get_decoder(uid).available_plugins


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG-LL.dcm"])
def test_with_the_extra_12_bit_and_lossless_jpeg_decode(name: str) -> None:
    volume = read_volume(_file(name))
    assert volume.voxels.shape[0] == 1 and volume.voxels.std() > 0
    assert np.issubdtype(volume.voxels.dtype, np.integer)


@pytest.mark.parametrize(
    ("name", "syntax", "uid"),
    [
        ("JPGExtended.dcm", "JPEG Extended (Process 2 and 4)", "1.2.840.10008.1.2.4.51"),  # Pillow tries, fails
        ("JPEG-LL.dcm", "JPEG Lossless, Non-Hierarchical, First-Order Prediction", "1.2.840.10008.1.2.4.70"),
    ],
)
def test_without_the_extra_the_error_names_syntax_and_extra(name: str, syntax: str, uid: str, tmp_path: Path) -> None:
    source = _file(name)
    run = _without_plugins(
        "segment",
        str(source),
        "--out",
        str(tmp_path / "r.nii.gz"),
        "--slice",
        "0",
        "--box",
        "1,1,5,5",
        "--graphs",
        str(tmp_path / "not-needed"),
    )
    assert run.returncode == 2, run.stderr
    assert syntax in run.stderr and uid in run.stderr, run.stderr
    assert "pip install 'medsam2-serving[codecs]'" in run.stderr and str(source) in run.stderr
    assert "Traceback" not in run.stderr and "ERROR" not in run.stderr
    assert not (tmp_path / "r.nii.gz").exists()
