"""Typed settings: flag beats environment beats default, and bad values name their variable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from medsam2.errors import ConfigError
from medsam2.settings import Settings, add_settings_arguments, settings_from


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_apply_without_flags_or_environment() -> None:
    assert settings_from(parse(), {}) == Settings()


def test_environment_beats_default_and_flag_beats_environment() -> None:
    env = {"MEDSAM2_THREADS": "3", "MEDSAM2_HOME": "/tmp/h"}
    assert settings_from(parse(), env).threads == 3
    assert settings_from(parse(), env).home == Path("/tmp/h")
    assert settings_from(parse("--threads", "1"), env).threads == 1


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"MEDSAM2_THREADS": "two"}, r"threads \(MEDSAM2_THREADS\) must be an integer"),
        ({"MEDSAM2_THREADS": "-1"}, r"MEDSAM2_THREADS\) must be >= 0"),
        ({"MEDSAM2_LOG_LEVEL": "LOUD"}, r"log_level \(MEDSAM2_LOG_LEVEL\) must be one of"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        settings_from(parse(), env)


def test_log_level_is_case_insensitive() -> None:
    assert settings_from(parse("--log-level", "debug"), {}).log_level == "DEBUG"
