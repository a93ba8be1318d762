"""The named instants in a file's handling where a fault can be injected, and the service's no-op.

Points: after_read, after_infer, after_commit (per file: committed, not yet reported or moved), mid_move
(renamed, not yet checked) and store:NAME (before each store write the daemon retries). The daemon is handed a
`Faults`; the service passes `NO_FAULTS`, the reliability tests their own (tests/fault_runner.py): the service
reads no test settings.
"""

from __future__ import annotations

from typing import Protocol


class Faults(Protocol):
    def point(self, name: str) -> None:
        """Called at the named instant; may raise (a store write failing) or end the process."""


class NoFaults:
    """The service's faults: none."""

    def point(self, name: str) -> None:
        return None


NO_FAULTS: Faults = NoFaults()
