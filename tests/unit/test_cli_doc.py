"""docs/cli.md's exit-code table lists exactly the codes the command can exit with."""

from __future__ import annotations

import re
from pathlib import Path

from medsam2.cli import exit_codes

ROOT = Path(__file__).resolve().parents[2]
INTERRUPTED = 130
"""``medsam2.cli.main`` returns it on Ctrl-C, outside the error mapping."""


def test_exit_code_table_matches_the_mapping() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text.split("## Exit codes", 1)[1]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)}
    mapped = {code for _, code in exit_codes._CODES}
    assert documented == {exit_codes.OK, exit_codes.FAILED_CHECK, exit_codes.USAGE, INTERRUPTED, *mapped}
