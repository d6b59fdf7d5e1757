"""The server's annotation store: corrected sessions saved as MedSAM2 npz training cases, one folder per principal.

``SaveAnnotation`` writes here; ``medsam2 finetune --dataset <root>/<principal>`` reads a folder as it is. A
principal's cases never land in another's folder, and the folder name is derived from the principal so that
no name (``..``, slashes, an mTLS subject) can point outside the root.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsam2.datasets.annotations import check_annotation_folder, save_annotation
from medsam2.errors import CapacityExceeded, PreconditionFailed
from medsam2.models.download import file_sha256

DEFAULT_MAX_BYTES_PER_PRINCIPAL = 20 * 2**30
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class SavedCase:
    """One case written to the store."""

    folder: str
    """The principal's folder, relative to the store's root."""
    case_file: str
    sha256: str
    size_bytes: int


def principal_folder(principal: str) -> str:
    """A principal's folder name: its safe characters plus a short hash, so distinct principals never share one."""
    digest = hashlib.sha256(principal.encode()).hexdigest()[:8]
    readable = _UNSAFE.sub("_", principal).strip("._")[:48] or "principal"
    return f"{readable}-{digest}"


class AnnotationStore:
    """A folder on the server's disk (or a mounted volume) that collects training cases."""

    def __init__(self, root: Path | None, *, max_bytes_per_principal: int = DEFAULT_MAX_BYTES_PER_PRINCIPAL) -> None:
        self.root = Path(root) if root is not None else None
        self.max_bytes_per_principal = max_bytes_per_principal
        """A principal's folder stops taking cases at this size: saving is not a way to fill the server's disk."""
        if self.root is not None:
            # A store that cannot be written is a start-up error, not a surprise at the first save.
            check_annotation_folder(self.root)

    @property
    def enabled(self) -> bool:
        """Whether SaveAnnotation can write anywhere."""
        return self.root is not None

    def require(self) -> Path:
        """The store's root; ``PreconditionFailed`` when no store is configured."""
        if self.root is None:
            raise PreconditionFailed(
                "this server keeps no annotations: start it with --annotations-dir (MEDSAM2_ANNOTATIONS_DIR)",
                reason="ANNOTATION_STORE_DISABLED",
            )
        return self.root

    def save(
        self,
        principal: str,
        name: str,
        imgs: np.ndarray,
        labels: np.ndarray,
        spacing: tuple[float, float, float],
        *,
        modality: str,
        video: bool,
        provenance: dict[str, Any],
    ) -> SavedCase:
        """Write one case into ``principal``'s folder and describe it."""
        folder = principal_folder(principal)
        used = sum(p.stat().st_size for p in (self.require() / folder).glob("*.npz"))
        if used >= self.max_bytes_per_principal:
            raise CapacityExceeded(
                f"your annotation folder {folder} holds {used} bytes, the limit is {self.max_bytes_per_principal}: "
                "train on it and move the cases out, or ask for a larger --annotations-max-bytes",
                reason="ANNOTATION_QUOTA",
            )
        path = save_annotation(
            self.require() / folder, name, imgs, labels, spacing, modality=modality, video=video, provenance=provenance
        )
        return SavedCase(folder, path.name, file_sha256(path), path.stat().st_size)
