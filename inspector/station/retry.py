"""The daemon's store-retry policy, shared by its scoring side and its mover: a store write waits out a
full disk, a locked or an unreachable database (nothing is lost or moved meanwhile), with a bounded backoff,
and gives up only when the daemon is asked to stop."""

from __future__ import annotations

import logging
import threading
from typing import Callable, TypeVar

from inspector.base.errors import StoreError
from inspector.station.faults import NO_FAULTS, Faults

log = logging.getLogger("inspector.daemon")

MAX_BACKOFF_SECONDS = 10.0  # a database back after an outage is used again within this
FIRST_BACKOFF_SECONDS = 0.5

T = TypeVar("T")


class Stopped(Exception):
    """A stop was requested while the database was unavailable: give up the batch, commit nothing."""


class StoreRetry:
    """Store calls retried until they succeed or `stop` is set; `paused_reason` says why the daemon waits."""

    def __init__(self, stop: threading.Event, faults: Faults = NO_FAULTS):
        self.stop = stop
        self.faults = faults
        self.paused_reason: str | None = None  # the first part of the store's message while it is away

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args), retried on StoreError; raises Stopped when a stop comes while waiting."""
        delay = FIRST_BACKOFF_SECONDS
        while True:
            try:
                self.faults.point(f"store:{getattr(fn, '__name__', '')}")
                result = fn(*args)
            except StoreError as exc:
                if self.paused_reason is None:
                    log.error("database unavailable, pausing (files stay in place; retrying): %s", exc)
                self.paused_reason = str(exc).split(";")[0]
                if self.stop.wait(delay):
                    raise Stopped() from exc
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            if self.paused_reason is not None:
                log.info("database available again; resuming")
                self.paused_reason = None
            return result
