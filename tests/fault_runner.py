"""TEST-ONLY: run `inspector watch` with faults injected at the daemon's named fault points.

    python tests/fault_runner.py watch --config C      (with the environment below)

INSPECTOR_FAULT=after_read|after_infer|after_commit|mid_move (INSPECTOR_FAULT_AFTER=N passes spared):
SIGKILL this process there. INSPECTOR_FAULT=enospc: store writes fail as a full disk while the file
$INSPECTOR_FAULT_FILE exists (for machines where no small file system can be mounted). The service
code has no such settings: this runner hands its own `Faults` object to `daemon.start_watch`, as
`inspector watch` hands it `faults.NO_FAULTS`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from inspector.base.errors import InspectorError, StoreError


class EnvironmentFaults:
    """The faults the environment above names (a faults.Faults)."""

    def __init__(self, environ: dict[str, str]):
        self.fault = environ.get("INSPECTOR_FAULT", "")
        self.full_flag = environ.get("INSPECTOR_FAULT_FILE", "")
        self.spared = int(environ.get("INSPECTOR_FAULT_AFTER") or 0)
        self.seen: dict[str, int] = {}

    def point(self, name: str) -> None:
        if not self.fault:
            return
        full = self.fault == "enospc" and os.path.exists(self.full_flag)
        if full and name.startswith("store:record_"):
            raise StoreError("database: disk full (simulated by INSPECTOR_FAULT=enospc); free space on its disk")
        if self.fault == name:
            self.seen[name] = self.seen.get(name, 0) + 1
            if self.seen[name] > self.spared:
                os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    """`inspector watch` (daemon.start_watch, as cli/watch.py calls it) with this runner's faults."""
    parser = argparse.ArgumentParser(prog="fault_runner.py")
    parser.add_argument("command", choices=["watch"])
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        from inspector.base.configfile import load_config
        from inspector.station.daemon import start_watch

        return start_watch(load_config(args.config), faults=EnvironmentFaults(dict(os.environ)))
    except InspectorError as exc:  # the CLI's `Error: ...`, exit 1
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
