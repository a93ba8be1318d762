"""`inspector db backfill-serials`: the serial number and lot of files recorded before station.serial_pattern was
set (or before schema 6), read from their recorded names by today's pattern, as the daemon reads them at capture."""

from __future__ import annotations

import os
from dataclasses import dataclass

from inspector.base.config import Config
from inspector.base.errors import ConfigError
from inspector.base.serial import capture_name, compile_serial_pattern, match_serial
from inspector.store.store import Store

PAGE_ROWS = 1000


@dataclass(frozen=True)
class Backfill:
    """What a backfill did: rows given a serial, rows whose name the pattern does not match, rows recorded outside
    this config's capture folder (another station's, or a folder since moved: left as they are)."""

    filled: int
    unmatched: int
    outside: int

    def line(self) -> str:
        return (f"{self.filled} file(s) given a serial; {self.unmatched} name(s) do not match station.serial_pattern; "
                f"{self.outside} file(s) recorded outside watch.capture_dir left as they are")


def backfill_serials(store: Store, cfg: Config) -> Backfill:
    """Apply station.serial_pattern to every recorded file without a serial whose path lies in watch.capture_dir,
    relative to it as at capture; rows that already have a serial are never changed."""
    pattern = compile_serial_pattern(cfg.station.serial_pattern)
    if pattern is None:
        raise ConfigError("is empty: set the pattern that reads serial numbers from file names first, e.g. "
                          r"'(?P<lot>L\d+)-(?P<serial>SN\d+)'", "station.serial_pattern", cfg.source)
    root = os.path.realpath(cfg.watch.capture_dir)  # as the daemon records paths
    filled = unmatched = outside = 0
    after = 0
    while page := store.images_without_serial(after, PAGE_ROWS):
        after = page[-1][0]
        found = []
        for image_id, path_raw in page:
            name = capture_name(path_raw, root)
            fields = match_serial(pattern, name) if name is not None else None
            if name is None:
                outside += 1
            elif fields is None:
                unmatched += 1
            else:
                found.append((image_id, fields.serial, fields.lot))
        filled += store.set_serials(found) if found else 0
    return Backfill(filled, unmatched, outside)
