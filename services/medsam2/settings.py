"""Typed settings: defaults, overridden by environment variables, then by flags.

Each settings class is a frozen dataclass whose fields carry their environment
variable and help text; ``add_arguments`` shows them in ``--help`` and
``resolve`` builds the object once in ``main()``.  Nothing reads the
environment at import.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from medsam2.errors import ConfigError

T = TypeVar("T")
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def setting(default: Any, env: str, help: str, choices: tuple[str, ...] = (), minimum: float = 0) -> Any:
    """A settings field with its environment variable, help text, (text) allowed values and (numbers) least value."""
    return field(default=default, metadata={"env": env, "help": help, "choices": choices, "minimum": minimum})


def prefixed_setting(prefix: str, pattern: str, help: str) -> Any:
    """A field of ``(VARIABLE, value)`` pairs: every environment variable ``prefix*`` matching ``pattern`` (a regex
    on the whole name), and each repeated flag ``VARIABLE=value``, the flags last (so they win)."""
    return field(default=(), metadata={"env": f"{prefix}*", "help": help, "prefix": prefix, "pattern": pattern})


EMBEDDED_BACKENDS = ("onnxruntime", "openvino")
"""In-process runtimes of the ONNX graphs; ONNX Runtime is the portable default, OpenVINO an optional extra."""
PRECISIONS = ("auto", "fp32", "bf16", "mixed")
"""Compute precisions; ``auto`` is the backend's default on this CPU (``medsam2.backends.select``)."""


def backend_setting(choices: tuple[str, ...] = EMBEDDED_BACKENDS) -> Any:
    """The ``backend`` field, shared by ``serve`` and ``segment`` so both read MEDSAM2_BACKEND alike."""
    return setting("onnxruntime", "MEDSAM2_BACKEND", f"inference backend: {'|'.join(choices)}", choices)


def precision_setting() -> Any:
    """The ``precision`` field, shared by ``serve`` and ``segment`` (MEDSAM2_PRECISION)."""
    return setting(
        "auto",
        "MEDSAM2_PRECISION",
        "compute precision: auto (the backend's default on this CPU), fp32, bf16 (openvino, on CPUs "
        "with AVX-512 BF16 or AMX), mixed (openvino: bf16 encoder and memory attention, fp32 heads)",
        PRECISIONS,
    )


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """Which in-process backend runs the graphs, and in which precision (``segment``)."""

    backend: str = backend_setting(("onnxruntime", "openvino", "torch"))
    precision: str = precision_setting()


DEFAULT_BASE_URL = "https://huggingface.co/wanglab/MedSAM2/resolve/main"
"""Where the published checkpoints live; a mirror can stand in for it (``checkpoint_base_url``)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Process-wide settings shared by every command."""

    threads: int = setting(0, "MEDSAM2_THREADS", "intra-op threads for ONNX Runtime and torch (0: one per core)")
    home: Path = setting(
        Path.home() / ".cache" / "medsam2", "MEDSAM2_HOME", "folder for downloaded checkpoints and exported graphs"
    )
    checkpoint_base_url: str = setting(
        DEFAULT_BASE_URL, "MEDSAM2_CHECKPOINT_BASE_URL", "base URL of the published checkpoints"
    )
    log_level: str = setting("INFO", "MEDSAM2_LOG_LEVEL", "logging level (DEBUG, INFO, WARNING, ERROR)")


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per field of ``cls``, with its environment variable and default in the help."""
    group = parser.add_argument_group(f"{title} (flag > environment variable > default)")
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        if "prefix" in f.metadata:
            group.add_argument(
                "--" + f.name.replace("_", "-").removesuffix("s"),
                dest=f"setting_{f.name}",
                action="append",
                default=None,
                metavar=f"{f.metadata['prefix']}..=VALUE",
                help=f"{f.metadata['help']} [env {f.metadata['env']}; repeat the flag for more]",
            )
            continue
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"setting_{f.name}",
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} [env {f.metadata['env']}, default {default}]",
        )


def resolve(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from flags, then the environment, then the defaults."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(cls):
        if "prefix" in f.metadata:
            values[f.name] = _prefixed(f.name, f.metadata, environ, getattr(args, f"setting_{f.name}", None) or [])
            continue
        raw = getattr(args, f"setting_{f.name}", None)
        if raw is None:
            raw = environ.get(f.metadata["env"])
        if raw is None:
            continue
        values[f.name] = _convert(f.name, f.metadata["env"], raw, f.default, f.metadata.get("minimum", 0))
        choices = f.metadata.get("choices") or ()
        if choices and values[f.name] not in choices:
            raise ConfigError(
                f"setting {f.name} ({f.metadata['env']}) must be one of {', '.join(choices)}, got {raw!r}"
            )
    return cls(**values)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The process-wide settings' flags."""
    add_arguments(parser, Settings, "settings")


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The process-wide settings."""
    return resolve(Settings, args, environ)


def _prefixed(
    name: str, meta: Mapping[str, Any], environ: Mapping[str, str], flags: list[str]
) -> tuple[tuple[str, str], ...]:
    pattern = re.compile(meta["pattern"])
    pairs = {k: v for k, v in sorted(environ.items()) if k.startswith(meta["prefix"]) and pattern.fullmatch(k)}
    for flag in flags:
        variable, sep, value = flag.partition("=")
        if not sep or not pattern.fullmatch(variable):
            raise ConfigError(
                f"setting {name}: expected {meta['prefix']}..=VALUE matching {meta['pattern']}, got {flag!r}"
            )
        pairs[variable] = value
    return tuple(pairs.items())


def _convert(name: str, env: str, raw: str, default: Any, minimum: float = 0) -> Any:
    if isinstance(default, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"setting {name} ({env}) must be true or false, got {raw!r}")
    if isinstance(default, (int, float)):
        try:
            value = type(default)(raw)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ConfigError(f"setting {name} ({env}) must be {kind}, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"setting {name} ({env}) must be >= {minimum:g}, got {value}")
        return value
    if name == "log_level":
        level = raw.upper()
        if level not in _LOG_LEVELS:
            raise ConfigError(f"setting log_level ({env}) must be one of {sorted(_LOG_LEVELS)}, got {raw!r}")
        return level
    if isinstance(default, Path):
        return Path(raw).expanduser()
    return raw
