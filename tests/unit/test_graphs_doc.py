"""docs/graphs.md is generated from the contract in ``medsam2.graphs`` and fresh: a graph, tensor, dtype or shape
changed in graphs.py without running scripts/gen_graphs_doc.py fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from medsam2.graphs import ENSEMBLES, GRAPHS, TRITON_GRAPHS, TensorSpec

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_graphs_doc", ROOT / "scripts" / "gen_graphs_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_graphs_doc_is_fresh() -> None:
    assert (ROOT / "docs" / "graphs.md").read_text() == _generator().render(), "run scripts/gen_graphs_doc.py"


def test_every_graph_and_tensor_of_the_contract_is_documented() -> None:
    text = _generator().render()
    for spec in (*GRAPHS.values(), *ENSEMBLES.values(), *TRITON_GRAPHS.values()):
        assert f"### `{spec.stage.value}`\n" in text
        for tensor in (*spec.inputs, *spec.outputs):
            assert f"| `{tensor.name}` | `{np.dtype(tensor.dtype).name}` |" in text


def test_shapes_name_their_dynamic_axes() -> None:
    generator = _generator()
    image = TensorSpec("image", np.uint8, (-1, -1, 512, 512), "")
    memory = TensorSpec("memory", np.float32, (-1, -1, 64, 32, 32), "")
    assert generator._shape(image) == "`[B,C,512,512]`"
    assert generator._shape(memory) == "`[B,S,64,32,32]`"
    with pytest.raises(SystemExit, match="dynamic axis 2"):
        generator._shape(TensorSpec("odd", np.float32, (-1, 4, -1), ""))
