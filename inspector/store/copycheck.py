"""What `inspector db copy` found per table: its counts, the source's and the target's row checksums, the report."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

EXAMPLES = 3  # differing keys named per table


def _canon(value: Any) -> Any:
    """A value as the same JSON on any database (bytes and times tagged, floats exact)."""
    kind = type(value)
    if kind is str or kind is int or value is None:
        return value
    if kind is bytes or kind is memoryview:
        return ["b", bytes(value).hex()]
    if isinstance(value, datetime):
        return ["t", value.isoformat()]
    if kind is float:
        return ["f", repr(value)]
    return value


def row_text(values: list[Any]) -> str:
    """Values (a key, a row) as canonical JSON: the same text from any database."""
    return json.dumps([_canon(v) for v in values], separators=(",", ":"))


def row_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _join(digests: set[bytes]) -> bytes:
    return b"".join(sorted(digests))


@dataclass
class TableCopy:
    """One table's counts and checksums. Per natural key (ordered by its sha256, the same order on any
    database whatever its collation) the distinct row digests of the source, and of the target's rows of
    that key; only the keys whose target rows differ are kept for the target side."""

    name: str
    source_rows: int = 0
    new: int = 0
    there: int = 0
    no_station: int = 0
    source: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    differs: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    examples: dict[bytes, str] = field(default_factory=dict, repr=False)

    def add_source(self, key: bytes, row: bytes) -> None:
        have = self.source.get(key, b"")
        parts = {have[i:i + 32] for i in range(0, len(have), 32)}
        if row not in parts:
            self.source[key] = _join(parts | {row})

    def compare(self, key: bytes, target_rows: set[bytes], describe: Callable[[], str]) -> None:
        found = _join(target_rows)
        if found == self.source[key]:
            self.differs.pop(key, None)
            self.examples.pop(key, None)
        else:
            self.differs[key] = found
            if len(self.examples) < EXAMPLES:
                self.examples[key] = describe()

    def checksum(self, side: str) -> str:
        out = hashlib.sha256()
        for key in sorted(self.source):
            rows = self.source[key] if side == "source" else self.differs.get(key, self.source[key])
            out.update(key + len(rows).to_bytes(4, "big") + rows)
        return out.hexdigest()

    @property
    def matches(self) -> bool:
        return not self.differs


@dataclass
class CopySummary:
    source: str
    target: str
    target_schema: str
    station: str | None
    tables: list[TableCopy] = field(default_factory=list)
    plant_model: str | None = None  # set when the copy changed the target's promoted model

    @property
    def matches(self) -> bool:
        return all(t.matches for t in self.tables)

    def lines(self) -> list[str]:
        """The per-table report `inspector db copy` prints."""
        head = ["TABLE", "SOURCE ROWS", "NEW", "ALREADY THERE", "SOURCE SHA256", "TARGET SHA256", "MATCH"]
        rows = [[t.name, str(t.source_rows), str(t.new), str(t.there), t.checksum("source")[:16],
                 t.checksum("target")[:16], "yes" if t.matches else "NO"] for t in self.tables]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        out = [f"source  {self.source}", f"target  {self.target} (schema {self.target_schema})"]
        out += ["  ".join(c.rjust(w) if 0 < i < 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                for r in [head, *rows]]
        unnamed = sum(t.no_station for t in self.tables)
        if unnamed and self.station:
            out.append(f"{unnamed} row(s) without a station (recorded before schema 3) are station {self.station} "
                       "in the target")
        elif unnamed:
            out.append(f"{unnamed} row(s) have no station (recorded before schema 3) and were copied without one: "
                       "give --station NAME to name them (the same name on every run)")
        if self.plant_model:
            out.append(f"note: the target's promoted model is now {self.plant_model}, copied from the source: "
                       "its daemons load it once their model.path holds that file")
        copied, there = sum(t.new for t in self.tables), sum(t.there for t in self.tables)
        if self.matches:
            out.append(f"every table matches: {copied} row(s) copied, {there} already there")
        return out

    def mismatch(self) -> str:
        """The one-line error when some table does not match."""
        parts = [f"{t.name} ({len(t.differs)} row(s)" + (f", e.g. {'; '.join(t.examples.values())})" if t.examples
                                                          else ")") for t in self.tables if not t.matches]
        return (f"the target does not hold every source row as it is in the source: {', '.join(parts)}; a row of "
                "the same natural key is there with other values (recorded by another station, or changed in the "
                "target since); the other rows were copied")
