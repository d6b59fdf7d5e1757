"""Where the stage graphs for a command come from: a graphs folder, or a checkpoint exported once and cached."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from medsam2.errors import DownloadError
from medsam2.graphs import GRAPHS, GRAPHS_REVISION
from medsam2.models.download import RECOMMENDED_CHECKPOINT, download_checkpoint, file_sha256, resolve_checkpoint
from medsam2.models.extras import require_export_extra
from medsam2.settings import Settings

log = logging.getLogger(__name__)

UNTRAINED_SEED = 0
BANNER = "!" * 78


def contract_fingerprint() -> str:
    """Short hash of the graph contract and revision, so cached exports are redone when either changes."""
    text = repr((GRAPHS_REVISION, sorted((s.value, g.inputs, g.outputs) for s, g in GRAPHS.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def checkpoint_fingerprint(path: Path) -> str:
    """First 16 hex digits of the checkpoint's sha256."""
    return file_sha256(Path(path))[:16]


def resolve_default_checkpoint(settings: Settings) -> tuple[Path, bool]:
    """The recommended published checkpoint (present or downloaded), else an untrained one; returns (path, trained)."""
    folder = settings.home / "checkpoints"
    published = folder / resolve_checkpoint(RECOMMENDED_CHECKPOINT).filename
    if published.is_file():
        return published, True
    try:
        return download_checkpoint(RECOMMENDED_CHECKPOINT, folder, base_url=settings.checkpoint_base_url).path, True
    except DownloadError as exc:
        log.warning("could not download %s: %s", RECOMMENDED_CHECKPOINT, exc)
    untrained = folder / f"untrained-seed{UNTRAINED_SEED}.pt"
    if not untrained.is_file():
        require_export_extra("medsam2_export.model").write_random_checkpoint(UNTRAINED_SEED, untrained)
    return untrained, False


def warn_untrained(path: Path) -> None:
    """The loud warning for results of an untrained checkpoint."""
    log.warning(
        "\n%s\n  USING AN UNTRAINED RANDOM CHECKPOINT (%s).\n  The segmentation is MEANINGLESS. "
        "Download real weights: medsam2 checkpoint download MedSAM2_latest --out %s\n%s",
        BANNER,
        path,
        path.parent,
        BANNER,
    )


def is_untrained(path: Path) -> bool:
    """Whether a checkpoint file was written by ``checkpoint random`` (it carries an 'untrained' record)."""
    if path.name.startswith("untrained"):
        return True
    try:
        torch = require_export_extra("torch")
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable file is reported by the loader later, with a precise message
        return False
    return isinstance(blob, dict) and "untrained" in blob


def graphs_for_checkpoint(checkpoint: Path, settings: Settings) -> Path:
    """ONNX graphs of ``checkpoint``, exported into the cache on first use."""
    folder = settings.home / "graphs" / f"{checkpoint_fingerprint(checkpoint)}-{contract_fingerprint()}"
    if all((folder / f"{stage.value}.onnx").is_file() for stage in GRAPHS):
        return folder
    model = require_export_extra("medsam2_export.model")
    exporter = require_export_extra("medsam2_export.onnx_export")
    log.info("exporting the stage graphs of %s to %s (once per checkpoint)", checkpoint, folder)
    exporter.export_all(model.load_model(checkpoint), folder)
    return folder
