"""TEST-ONLY: run the inspector CLI with faults injected at the daemon's named fault points.

    python tests/fault_runner.py watch --config C      (with the environment below)

INSPECTOR_FAULT=after_read|after_infer|after_commit|mid_move (INSPECTOR_FAULT_AFTER=N passes spared):
SIGKILL this process there. INSPECTOR_FAULT=enospc: store writes fail as a full disk while the file
$INSPECTOR_FAULT_FILE exists (for machines where no small file system can be mounted). The service
code has no such settings: this runner replaces inspector.scoring.fault_point before the CLI starts.
"""

from __future__ import annotations

import os
import signal
import sys

import inspector.scoring
from inspector.cli import main
from inspector.errors import StoreError

_SEEN: dict[str, int] = {}


def inject(point: str) -> None:
    fault = os.environ.get("INSPECTOR_FAULT")
    if not fault:
        return
    full = fault == "enospc" and os.path.exists(os.environ.get("INSPECTOR_FAULT_FILE", ""))
    if full and point.startswith("store:record_"):
        raise StoreError("database: disk full (simulated by INSPECTOR_FAULT=enospc); free space on its disk")
    if fault == point:
        _SEEN[point] = _SEEN.get(point, 0) + 1
        if _SEEN[point] > int(os.environ.get("INSPECTOR_FAULT_AFTER") or 0):
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    inspector.scoring.fault_point = inject
    main(sys.argv[1:])
