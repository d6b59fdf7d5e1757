"""Which model made a result: the version folder of a model repository and its provenance record.

A model repository holds one folder per graph (``DIR/<graph>/config.pbtxt``) with numbered version folders
(``DIR/<graph>/<N>/model.onnx``), as Triton lays it out. The provenance of version N is one JSON file,
``DIR/image_encoder/<N>/provenance.json``: Triton ignores extra files in a version folder, and the image encoder
exists in every repository. A version without the file (older exports, a flat folder of graphs) still serves;
its provenance is simply unknown.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from medsam2.errors import ConfigError

PROVENANCE_FILE = "provenance.json"
MODEL_FILES = ("model.onnx", "model.plan")
"""What a Triton version folder holds: an ONNX graph or a TensorRT plan."""
PROVENANCE_GRAPH = "image_encoder"
"""The graph whose version folders carry the provenance record."""


@dataclass(frozen=True, slots=True)
class ModelProvenance:
    """Where a served model came from; every field but ``version`` may be unknown."""

    version: int
    checkpoint_sha256: str | None = None
    base_checkpoint_sha256: str | None = None
    dataset_sha256: str | None = None
    steps: int | None = None
    seed: int | None = None
    untrained: bool | None = None

    @property
    def short_sha(self) -> str:
        """The checkpoint's sha256 shortened to 12 hex digits, or ``unknown``: an algorithm version string."""
        return self.checkpoint_sha256[:12] if self.checkpoint_sha256 else "unknown"

    def to_json(self) -> dict:
        """The record as written to ``provenance.json``."""
        return asdict(self)


def list_versions(repository: Path) -> list[int]:
    """The numbered versions with a graph in ``repository``, oldest first; ``[]`` for a flat folder of graphs.

    A version folder counts only when it holds the graph (``model.onnx`` or ``model.plan``): a flat folder of
    ``<stage>.onnx`` files may still carry its provenance record in ``image_encoder/1/``.
    """
    graph_dir = Path(repository) / PROVENANCE_GRAPH
    if not graph_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in graph_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and any((p / name).is_file() for name in MODEL_FILES)
    )


def newest_version(repository: Path) -> int | None:
    """The highest version number in ``repository``, or None for a flat folder of graphs."""
    versions = list_versions(repository)
    return versions[-1] if versions else None


def provenance_path(repository: Path, version: int) -> Path:
    """Where version ``version``'s provenance record lives."""
    return Path(repository) / PROVENANCE_GRAPH / str(version) / PROVENANCE_FILE


def read_provenance(repository: Path, version: int | None = None) -> ModelProvenance:
    """The provenance of ``version`` (default: the newest); a version without a record has unknown fields."""
    if version is None:
        version = newest_version(repository) or 1
    path = provenance_path(repository, version)
    if not path.is_file():
        return ModelProvenance(version=version)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the model provenance {path}: {exc}") from exc
    known = {f.name for f in fields(ModelProvenance)}
    return ModelProvenance(**{k: v for k, v in data.items() if k in known} | {"version": version})


def write_provenance(repository: Path, provenance: ModelProvenance) -> Path:
    """Write ``provenance`` into its version folder (created if needed)."""
    path = provenance_path(repository, provenance.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(provenance.to_json(), indent=2, sort_keys=True) + "\n")
    return path
