"""Every relative link in README.md and docs/*.md resolves: the file (or folder) exists, and a ``#anchor`` names a
heading of the page it points into, spelled as GitHub spells heading anchors."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def _prose(text: str) -> str:
    """The text without code: a link written inside code is an example, not a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link target of a Markdown page: inline links, images and reference definitions."""
    prose = _prose(text)
    return _INLINE.findall(prose) + _REFERENCE.findall(prose)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links and emphasis as their words), lower case, punctuation
    dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets ``-1``, ``-2``... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken(page: Path) -> list[str]:
    """The relative links of ``page`` that do not resolve, each with the reason."""
    problems = []
    for target in links(page.read_text()):
        if _SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest.read_text()):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    assert broken(page) == []


def test_the_readme_links_into_docs() -> None:
    """The checker sees the README's links at all (a parser that finds none would pass every page)."""
    targets = links((ROOT / "README.md").read_text())
    assert sum(t.startswith("docs/") for t in targets) >= 5


def test_broken_links_and_anchors_are_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `serve` command: settings\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n\n"
        "[ok](other.md) [ok](other.md#the-serve-command-settings) [ok](other.md#twice-1) [ok](#here)\n"
        "![missing](img/none.png) [missing](gone.md) [bad anchor](other.md#nowhere) [bad](#not-here)\n"
        "[web](https://example.org/x.md) `[code](not-a-link.md)`\n\n"
        "```\n[fenced](not-a-link-either.md)\n```\n\n"
        "[ref]: also-gone.md\n"
    )
    assert broken(page) == [
        f"img/none.png: no such file {tmp_path / 'img/none.png'}",
        f"gone.md: no such file {tmp_path / 'gone.md'}",
        "other.md#nowhere: no heading #nowhere in other.md",
        "#not-here: no heading #not-here in page.md",
        f"also-gone.md: no such file {tmp_path / 'also-gone.md'}",
    ]
