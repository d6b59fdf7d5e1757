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


def test_server_limits_come_from_the_serve_settings_by_name() -> None:
    from medsam2.server.config import ServerSettings
    from medsam2.server.pacs_fetches import PacsFetchLimits
    from medsam2.server.sessions import Limits
    from medsam2.server.uploads import UploadLimits

    s = ServerSettings(
        max_sessions=3,
        max_study_voxels=5,
        max_state_bytes=7,
        session_ttl_s=11.0,
        max_sessions_per_principal=2,
        max_state_bytes_per_principal=6,
        max_concurrent_uploads=9,
        upload_idle_timeout_s=1.5,
        upload_deadline_s=60.0,
        max_uploads_per_principal=4,
        max_concurrent_pacs_fetches=8,
        max_pacs_fetches_per_principal=3,
    )
    assert Limits.from_settings(s) == Limits(
        max_sessions=3,
        max_study_voxels=5,
        max_state_bytes=7,
        idle_ttl_s=11.0,
        max_sessions_per_principal=2,
        max_state_bytes_per_principal=6,
    )
    assert UploadLimits.from_settings(s) == UploadLimits(
        max_concurrent=9, idle_timeout_s=1.5, deadline_s=60.0, max_per_principal=4
    )
    assert PacsFetchLimits.from_settings(s) == PacsFetchLimits(max_concurrent=8, max_per_principal=3)
    # One place for every default: the limits' own defaults are the settings' defaults.
    defaults = ServerSettings()
    assert Limits() == Limits.from_settings(defaults)
    assert UploadLimits() == UploadLimits.from_settings(defaults)
    assert PacsFetchLimits() == PacsFetchLimits.from_settings(defaults)


def test_pacs_endpoints_are_serve_settings_from_the_environment_and_flags(tmp_path: Path) -> None:
    from medsam2.server.app import pacs_studies
    from medsam2.server.config import ServerSettings
    from medsam2.settings import add_arguments, resolve

    parser = argparse.ArgumentParser()
    add_arguments(parser, ServerSettings, "server settings")
    assert "--pacs-endpoint" in parser.format_help() and "--pacs-config" in parser.format_help()
    config = tmp_path / "pacs.toml"
    config.write_text(
        '[endpoints.hospital]\nurl = "https://pacs.example.org/dicom-web"\ntoken_env = "HOSPITAL_TOKEN"\n'
    )
    env = {
        "MEDSAM2_PACS_CONFIG": str(config),
        "MEDSAM2_PACS_ORTHANC_URL": "http://127.0.0.1:8042/dicom-web",
        "MEDSAM2_PACS_ORTHANC_TIMEOUT_S": "5",
        "MEDSAM2_PACS_UNRELATED": "ignored",
    }
    args = parser.parse_args(["--pacs-endpoint", "MEDSAM2_PACS_ORTHANC_TIMEOUT_S=7"])
    settings = resolve(ServerSettings, args, env)
    assert settings.pacs_config == config
    assert dict(settings.pacs_endpoints) == {
        "MEDSAM2_PACS_ORTHANC_URL": "http://127.0.0.1:8042/dicom-web",
        "MEDSAM2_PACS_ORTHANC_TIMEOUT_S": "7",  # the flag beats the environment
    }
    secrets = {"HOSPITAL_TOKEN": "s3cret", "MEDSAM2_PACS_OTHER_URL": "http://x.example", "MEDSAM2_PACS_CONFIG": "/x"}
    studies = pacs_studies(settings, secrets)
    assert studies is not None
    endpoints = studies.config.endpoints
    assert sorted(endpoints) == ["hospital", "orthanc"]  # an endpoint variable among the secrets is no second way in
    assert endpoints["orthanc"].timeout_s == 7.0 and endpoints["hospital"].token == "s3cret"
    config.write_text(
        '[endpoints.hospital]\nurl = "https://pacs.example.org/dicom-web"\ntoken_env = "MEDSAM2_PACS_KEY"\n'
    )
    studies = pacs_studies(settings, {"MEDSAM2_PACS_KEY": "k3y"})  # not an endpoint's variable: a secret
    assert studies is not None and studies.config.endpoints["hospital"].token == "k3y"
    assert pacs_studies(ServerSettings(), {"MEDSAM2_PACS_X_URL": "http://x.example"}) is None
    with pytest.raises(ConfigError, match="pacs_endpoints"):
        resolve(ServerSettings, parser.parse_args(["--pacs-endpoint", "HOSPITAL_URL"]), {})
