"""Clear messages when a command needs an optional extra that is not installed."""

from __future__ import annotations

import importlib
from types import ModuleType

from medsam2.errors import BackendUnavailable


def require_export_extra(module: str) -> ModuleType:
    """Import a module of the export toolchain or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(
            f"this command needs the export toolchain (torch, sam2, onnx), which is not installed ({exc.name} is "
            "missing): run scripts/bootstrap.sh, or pip install 'medsam2-serving[export]' and "
            "SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2==1.1.0"
        ) from exc
