"""PACS endpoints by name from JSON/TOML files and the environment; bad configs fail fast and say why."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from medsam2.errors import BackendUnavailable, ConfigError, NotFound
from medsam2.pacs.config import PacsEndpoint, load_config


def test_toml_file_with_token_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "pacs.toml"
    path.write_text(
        '[endpoints.hospital]\nurl = "https://pacs.example.org/dicom-web/"\n'
        'token_env = "HOSPITAL_TOKEN"\ntimeout_s = 12\n'
    )
    endpoint = load_config(path, {"HOSPITAL_TOKEN": "s3cret"}).get("hospital")
    assert endpoint.url == "https://pacs.example.org/dicom-web"
    assert endpoint.timeout_s == 12.0
    assert endpoint.headers() == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(endpoint)


def test_json_file_named_by_the_environment_with_basic_auth(tmp_path: Path) -> None:
    path = tmp_path / "pacs.json"
    path.write_text(
        json.dumps(
            {
                "endpoints": {
                    "orthanc": {"url": "http://127.0.0.1:8042/dicom-web", "username": "u", "password_env": "PW"}
                }
            }
        )
    )
    endpoint = load_config(None, {"MEDSAM2_PACS_CONFIG": str(path), "PW": "p"}).get("orthanc")
    assert endpoint.headers() == {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}


def test_environment_defines_and_overrides_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "pacs.toml"
    path.write_text('[endpoints.main]\nurl = "http://a.example/dicom-web"\n')
    config = load_config(
        path,
        {
            "MEDSAM2_PACS_MAIN_URL": "http://b.example/dicom-web",
            "MEDSAM2_PACS_RESEARCH_PACS_URL": "https://c.example/wado",
            "MEDSAM2_PACS_RESEARCH_PACS_TOKEN": "t",
            "MEDSAM2_PACS_RESEARCH_PACS_TIMEOUT_S": "5",
        },
    )
    assert config.get("main").url == "http://b.example/dicom-web"
    research = config.get("research_pacs")
    assert (research.url, research.token, research.timeout_s) == ("https://c.example/wado", "t", 5.0)


def test_unknown_endpoint_lists_the_configured_ones() -> None:
    config = load_config(None, {"MEDSAM2_PACS_A_URL": "http://a.example", "MEDSAM2_PACS_B_URL": "http://b.example"})
    with pytest.raises(NotFound, match=r"unknown PACS endpoint 'c'; configured: a, b"):
        config.get("c")
    with pytest.raises(NotFound, match="configured: none"):
        load_config(None, {}).get("a")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[endpoints.x]\nurl = "ftp://host/x"\n', r"url must be an http\(s\) URL with a host, got 'ftp://host/x'"),
        ('[endpoints.x]\ntoken = "t"\n', "PACS endpoint x in .* has no url"),
        ('[endpoints.x]\nurl = "http://h"\nproxy = "p"\n', r"unknown key\(s\) \['proxy'\]"),
        ('[endpoints.x]\nurl = "http://h"\ntimeout_s = "soon"\n', "timeout_s must be a number, got 'soon'"),
        ('[endpoints.x]\nurl = "http://h"\ntimeout_s = 0\n', "timeout_s must be positive"),
        ('[endpoints.x]\nurl = "http://h"\ntoken_env = "NOPE"\n', "its token_env NOPE is not set"),
        ('[endpoints.x]\nurl = "http://h"\nusername = "u"\n', "needs both username and password"),
        ('[endpoints.x]\nurl = "http://h"\ntoken = "t"\nusername = "u"\npassword = "p"\n', "not both"),
        ('[endpoints.Bad]\nurl = "http://h"\n', "name 'bad' must be|name 'Bad' must be"),
        ("endpoints = 3\n", "needs an 'endpoints' table"),
        ("[endpoints\n", "is not valid TOML"),
    ],
)
def test_bad_files_fail_fast(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pacs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, {})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"cannot read the PACS config /nonexistent/pacs\.json"):
        load_config(Path("/nonexistent/pacs.json"), {})


def test_unreachable_endpoint_is_backend_unavailable(tmp_path: Path) -> None:
    import socket

    from medsam2.pacs.transfer import list_series

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = PacsEndpoint("down", f"http://127.0.0.1:{port}/dicom-web", timeout_s=2)
    with pytest.raises(BackendUnavailable, match=r"cannot reach PACS down to "):
        list_series(endpoint)
