"""The one typed settings object: defaults, overridden by environment variables, then by flags.

Built once in ``main()`` and passed down; nothing reads the environment at import.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from medsam2.checkpoint_download import DEFAULT_BASE_URL
from medsam2.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    """Process-wide settings; each field has an environment variable and a flag."""

    threads: int = 0
    """ONNX Runtime / torch intra-op threads; 0 lets the runtime decide."""
    home: Path = Path.home() / ".cache" / "medsam2"
    """Where downloaded checkpoints and exported graphs are kept."""
    checkpoint_base_url: str = DEFAULT_BASE_URL
    """Base URL of the published checkpoints (a mirror may replace it)."""
    log_level: str = "INFO"
    """Python logging level."""


_ENV = {
    "threads": "MEDSAM2_THREADS",
    "home": "MEDSAM2_HOME",
    "checkpoint_base_url": "MEDSAM2_CHECKPOINT_BASE_URL",
    "log_level": "MEDSAM2_LOG_LEVEL",
}
_HELP = {
    "threads": "intra-op threads for ONNX Runtime and torch (0: runtime default)",
    "home": "folder for downloaded checkpoints and exported graphs",
    "checkpoint_base_url": "base URL of the published checkpoints",
    "log_level": "logging level (DEBUG, INFO, WARNING, ERROR)",
}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting, with its environment variable and default in the help."""
    group = parser.add_argument_group("settings (flag > environment variable > default)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(
            flag, dest=f"setting_{f.name}", default=None, metavar=f.name.upper(),
            help=f"{_HELP[f.name]} [env {_ENV[f.name]}, default {f.default}]",
        )


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting from flags, then the environment, then the default."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(Settings):
        raw = getattr(args, f"setting_{f.name}", None)
        if raw is None:
            raw = environ.get(_ENV[f.name])
        if raw is None:
            continue
        values[f.name] = _convert(f.name, raw, type(f.default))
    return Settings(**values)


def _convert(name: str, raw: str, kind: type) -> object:
    if kind is int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"setting {name} ({_ENV[name]}) must be an integer, got {raw!r}") from None
        if value < 0:
            raise ConfigError(f"setting {name} ({_ENV[name]}) must be >= 0, got {value}")
        return value
    if name == "log_level":
        level = raw.upper()
        if level not in _LOG_LEVELS:
            raise ConfigError(f"setting log_level ({_ENV[name]}) must be one of {sorted(_LOG_LEVELS)}, got {raw!r}")
        return level
    if kind is not str:
        return Path(raw).expanduser()
    return raw
