"""How long the tests wait for real work: hang guards sized for the slowest machine, never measurements.

Machines of this kind differ five-fold in CPU (AVX-512 BF16 at about 450 GFLOP/s fp32; AVX2 only at 84), and a
run may share its two cores with other work. So a wait here only has to catch a hang: each bound is the time the
work takes on the slow machine under moderate load (its fast-machine time times 5, times 2 for load) with at
least a factor of 3 on top. A test that needs a figure measures it and prints it; it never asserts speed through
a timeout. pytest-timeout's per-test limit (``pyproject.toml``) stays above every bound here.
"""

from __future__ import annotations

SERVER_START_S = 300.0
"""A ``medsam2 serve``, Triton, Orthanc or Chromium start: 1-5 s here, up to about 60 s slow and loaded."""

COMMAND_S = 900.0
"""One CLI command on a small study (``segment``, ``client``, ``verify``, an export): under 60 s here."""

LONG_COMMAND_S = 1500.0
"""A command that runs several protocols or the reference (``bench``, ``parity``, a round trip, fine-tuning):
under 2 minutes here."""

TRITON_CALL_S = 300.0
"""One Triton inference while others queue behind it (eight sessions at once through the CPU Python backend): a
few seconds here. The backend's own default (30 s) is sized for a GPU server, and was exceeded on a loaded
2-core AVX2 machine."""

BROWSER_STEP_MS = 180_000
"""One step in the browser (a page load, a box or a click and its mask): a few seconds here."""

BROWSER_PROPAGATION_MS = 600_000
"""A whole propagation shown in the browser (tens of 512x512 slices): under a minute here."""

TEST_LIMIT_S = 1800
"""pytest-timeout's limit for one test (``--timeout`` in ``pyproject.toml``): above every bound in this module."""
