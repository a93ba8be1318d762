"""Case counts that grow under INSPECTOR_SOAK=1 (`make soak`, about an hour for the whole suite)."""

from __future__ import annotations

import os

SOAK = os.environ.get("INSPECTOR_SOAK", "") not in ("", "0")


def scaled(ci: int, soak: int) -> int:
    """`ci` cases in `make test`, `soak` under `make soak`."""
    return soak if SOAK else ci
