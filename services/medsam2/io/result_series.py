"""How a result's SEG and SR series are numbered and described, so readers can tell results apart and pair them.

Every result used to be "MedSAM2 segmentation" number 900 and "MedSAM2
measurements" number 901: two results of one study looked the same in a
viewer's series list.  Now the SEG's SeriesNumber comes from the time it is
built (two numbers per second, so the SR takes the SEG's number + 1 and a later
result never reuses them), and both descriptions name the objects and the time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_BASE = 1000
"""Result numbers start above the small numbers scanners give image series."""
_SPAN = (2**31 - 1 - _BASE) // 2
"""SeriesNumber is a signed 32-bit IS: seconds wrap after about 34 years, beyond any study's life."""
MAX_DESCRIPTION = 64
"""SeriesDescription is LO: at most 64 characters."""


def seg_series_number(now: datetime | None = None) -> int:
    """The SEG's SeriesNumber: even, from the build time in seconds; its SR takes this + 1."""
    seconds = int(((now or datetime.now(UTC)) - _EPOCH).total_seconds())
    return _BASE + 2 * (seconds % _SPAN)


def stamp(now: datetime | None = None) -> str:
    """The build time as descriptions show it: '2026-12-07 15:40Z'."""
    return f"{(now or datetime.now(UTC)).astimezone(UTC):%Y-%m-%d %H:%MZ}"


def describe(prefix: str, labels: Sequence[str], when: str) -> str:
    """'<prefix> <labels, comma-separated> <when>' in 64 characters, shortening only the labels."""
    names = ", ".join(labels) or "no objects"
    room = MAX_DESCRIPTION - len(prefix) - len(when) - 2
    if len(names) > room:
        names = names[: max(room - 3, 0)].rstrip(", ") + "..."
    return f"{prefix} {names} {when}"
