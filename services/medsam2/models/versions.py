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


PINNED_ENSEMBLE_SUFFIX = "_v"
"""``<ensemble>_v<N>``: an ensemble whose steps run version N of every graph (Triton's steps take one version each)."""


def pinned_ensemble_name(ensemble: str, version: int) -> str:
    """The name of ``ensemble`` pinned to model version ``version`` (e.g. ``track_step_v2``).

    A Triton ensemble's config names one version per step, and a model has one config for all its versions, so
    ``track_step`` (steps at ``-1``, the newest) cannot serve a session pinned to an older version; each exported
    version therefore gets an ensemble of its own.
    """
    if version < 1:
        raise ValueError(f"model versions start at 1, got {version}")
    return f"{ensemble}{PINNED_ENSEMBLE_SUFFIX}{version}"


def pinned_ensemble_version(name: str, ensemble: str) -> int | None:
    """The version ``name`` pins ``ensemble`` to, or None when it is not such a name."""
    prefix = ensemble + PINNED_ENSEMBLE_SUFFIX
    tail = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() and not tail.startswith("0") else None
