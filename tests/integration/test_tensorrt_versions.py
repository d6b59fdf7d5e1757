"""The TensorRT release is written once (``tensorrt_build.TENSORRT_VERSION``, Triton's); everything else agrees.

Plans load only in the TensorRT that built them: the build image, pyproject's ``tensorrt`` extra, the Triton
image of the Dockerfile and the chart must all name the Triton release whose TensorRT the build pins.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from medsam2_export.tensorrt_build import TENSORRT_VERSION, TRITON_RELEASE

ROOT = Path(__file__).resolve().parents[2]


def _arg(dockerfile: str, name: str) -> str:
    text = (ROOT / "deploy" / "docker" / dockerfile).read_text()
    match = re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE)
    assert match, f"{dockerfile} has no ARG {name}"
    return match.group(1)


def test_build_image_pins_the_tensorrt_of_the_triton_image() -> None:
    assert _arg("build.Dockerfile", "TENSORRT_VERSION") == TENSORRT_VERSION


def test_constraints_pin_the_same_tensorrt() -> None:
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    for part in ("tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-cu12-bindings"):
        assert pins[part] == TENSORRT_VERSION, part


def test_triton_image_is_the_pinned_release() -> None:
    assert _arg("triton.Dockerfile", "TRITON_IMAGE") == f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"


def test_tensorrt_extra_pins_the_same_version() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["tensorrt"] == [f"tensorrt-cu12=={TENSORRT_VERSION}"]


def test_chart_serves_the_pinned_triton_release() -> None:
    chart = ROOT / "deploy" / "helm" / "medsam2"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert values["triton"]["image"]["tag"] == f"{TRITON_RELEASE}-py3"
    example = yaml.safe_load((chart / "ci" / "gpu-values.yaml").read_text())
    assert example["triton"]["image"]["tag"] == f"{TRITON_RELEASE}-py3"


def test_docs_name_the_pinned_versions() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert f"tensorrt-cu12=={TENSORRT_VERSION}" in text and f"tritonserver:{TRITON_RELEASE}-py3" in text
