"""Numbered model versions in a model repository: which version to load, and the next free number."""

from __future__ import annotations

from pathlib import Path

from medsam2.errors import NotFound
from medsam2.models.provenance import ModelProvenance, list_versions, newest_version, read_provenance


def choose_version(folder: Path, version: int | None = None) -> tuple[int | None, ModelProvenance | None]:
    """The version of ``folder`` to load (default: the newest) and its provenance; (None, None) for flat graphs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"graphs folder not found: {folder}")
    versions = list_versions(folder)
    if not versions:
        if version not in (None, 1):
            raise NotFound(f"{folder} is a flat folder of graphs without versions; version {version} does not exist")
        return None, None
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise NotFound(
            f"model version {chosen} is not in {folder}: it has {', '.join(map(str, versions))}",
            field="version",
            reason="MODEL_VERSION_NOT_FOUND",
        )
    return chosen, read_provenance(folder, chosen)


def next_version(repository: Path) -> int:
    """One past the newest version (1 for an empty or new repository)."""
    return (newest_version(repository) or 0) + 1
