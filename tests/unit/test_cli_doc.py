"""docs/cli.md's exit-code table lists exactly the codes the command can exit with, and the flags docs/cli.md and
docs/settings.md name are flags of their commands."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from medsam2.cli import exit_codes
from medsam2.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
INTERRUPTED = 130
"""``medsam2.cli.main`` returns it on Ctrl-C, outside the error mapping."""


def test_exit_code_table_matches_the_mapping() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text.split("## Exit codes", 1)[1]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)}
    mapped = {code for _, code in exit_codes._CODES}
    assert documented == {exit_codes.OK, exit_codes.FAILED_CHECK, exit_codes.USAGE, INTERRUPTED, *mapped}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_flag_of_the_command_table_is_a_flag_of_its_command() -> None:
    """A synopsis in docs/cli.md names only flags its command's ``--help`` lists (a renamed flag fails here)."""
    text = (ROOT / "docs" / "cli.md").read_text()
    rows = re.findall(r"^\| `medsam2 ([^`]+)` \|", text, re.M)
    assert len(rows) >= 10
    wrong = {}
    for synopsis in rows:
        parser, words = build_parser(), synopsis.split()
        while words and words[0] in _subcommands(parser):  # e.g. checkpoint random, dataset synthetic
            parser = _subcommands(parser)[words.pop(0)]
        unknown = set(re.findall(r"--[a-z][a-z0-9-]*", synopsis)) - _options(parser)
        if unknown:
            wrong[synopsis.split(" --")[0]] = sorted(unknown)
    assert not wrong


def test_every_flag_of_the_settings_tables_is_a_flag_of_medsam2_or_serve() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"^\| `(--[a-z][a-z0-9-]*)", text, re.M))
    known = _options(build_parser()) | _options(_subcommands(build_parser())["serve"])
    assert {"--threads", "--pacs-config", "--pacs-endpoint"} <= documented
    assert documented <= known
