"""The rows the store writes for an outcome: a model's verdict, a file version, and the records of a batch
(a file scored, a file rejected, content rescored), each with the one function that inserts it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from inspector.base.errors import StoreError
from inspector.base.paths import display_path
from inspector.store.schema import VERDICTS, images, insert_new, rejections, to_path_raw, utc_now, verdicts


class Regions(Protocol):
    """What region_fields reads of a normalmap.Regions: the map's peak and its boxes, in original pixels."""

    @property
    def peak(self) -> tuple[int, int]: ...

    @property
    def boxes(self) -> tuple[tuple[int, int, int, int], ...]: ...


@dataclass(frozen=True)
class Verdict:
    """A model's verdict on one content: the verdicts row (unique per sha256 and model)."""

    sha256: str
    model_sha256: str
    p_abnormal: float | None
    verdict: str
    reason: str | None
    threshold: float
    method: str
    ready_to_commit_seconds: float | None = None
    inference_seconds: float | None = None
    # where the normal model's map peaks and what it boxes (schema 5): original pixels; boxes as JSON
    peak_x: int | None = None
    peak_y: int | None = None
    boxes: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise StoreError(f"verdict {self.verdict!r} is not one of {', '.join(VERDICTS)}")


def region_fields(regions: Regions | None) -> dict:
    """A prediction's normalmap.Regions (None: no normal model) as a Verdict's peak_x, peak_y and boxes (JSON)."""
    if regions is None:
        return {"peak_x": None, "peak_y": None, "boxes": None}
    return {"peak_x": regions.peak[0], "peak_y": regions.peak[1],
            "boxes": json.dumps([list(b) for b in regions.boxes])}


@dataclass(frozen=True)
class FileVersion:
    """One version of a file in the capture folder: its name's bytes and its stat identity."""

    path_raw: bytes | str
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int | None = None


@dataclass(frozen=True)
class VerdictRecord:
    """A file version scored: its image row, pointing at its content's verdict of the model, with the serial number
    and lot its name gave (station.serial_pattern; None: none)."""

    file: FileVersion
    verdict: Verdict
    serial: str | None = None
    lot: str | None = None


@dataclass(frozen=True)
class RejectionRecord:
    """Why one file version was not scored (sha256 None when it was never read)."""

    file: FileVersion
    sha256: str | None
    reason: str
    message: str


@dataclass(frozen=True)
class RescoreRecord:
    """A verdict `inspector rescore` gave content already recorded (no file version of its own)."""

    verdict: Verdict


def _refresh(conn: Connection, table: sa.Table, same: sa.ColumnElement, f: FileVersion) -> str:
    """This file version has its row already: its inode and ctime are refreshed, and it counts as 'exists'."""
    conn.execute(sa.update(table).where(same).values(inode=f.inode, ctime_ns=f.ctime_ns))
    return "exists"


def _insert_verdict(conn: Connection, r: VerdictRecord, station: str | None) -> str:
    """The content's verdict of this model (unless one is there), then the file version's image row pointing at
    it: 'new', 'duplicate' (the content had a verdict of this model) or 'exists' (this file version has a row)."""
    f, v = r.file, r.verdict
    raw = to_path_raw(f.path_raw)
    now = utc_now()
    fresh = insert_new(conn, verdicts, **dataclasses.asdict(v), created_at=now, station=station)
    verdict_id = conn.execute(sa.select(verdicts.c.id).where(
        verdicts.c.sha256 == v.sha256, verdicts.c.model_sha256 == v.model_sha256)).scalar_one()
    first = None if fresh else conn.execute(sa.select(images.c.path).where(images.c.sha256 == v.sha256)
                                           .order_by(images.c.id).limit(1)).scalar()
    if insert_new(conn, images, path=display_path(raw), path_raw=raw, sha256=v.sha256, size=f.size,
                  mtime_ns=f.mtime_ns, inode=f.inode, ctime_ns=f.ctime_ns, first_seen=now, station=station,
                  status="scored" if fresh else "duplicate", duplicate_of=first, verdict_id=verdict_id,
                  serial=r.serial, lot=r.lot):
        return "new" if fresh else "duplicate"
    return _refresh(conn, images, sa.and_(images.c.path_raw == raw, images.c.sha256 == v.sha256,
                                          images.c.mtime_ns == f.mtime_ns, images.c.inode == f.inode), f)


def _insert_rescore(conn: Connection, r: RescoreRecord, station: str | None) -> str:
    """A verdict of another model for content already recorded: no new image row, one verdict per model."""
    fresh = insert_new(conn, verdicts, **dataclasses.asdict(r.verdict), created_at=utc_now(), station=station)
    return "new" if fresh else "exists"


def _insert_rejection(conn: Connection, r: RejectionRecord, station: str | None) -> str:
    f = r.file
    raw = to_path_raw(f.path_raw)
    if insert_new(conn, rejections, path=display_path(raw), path_raw=raw, sha256=r.sha256, size=f.size,
                  mtime_ns=f.mtime_ns, inode=f.inode, ctime_ns=f.ctime_ns, reason=r.reason, message=r.message,
                  created_at=utc_now(), station=station):
        return "new"
    return _refresh(conn, rejections, sa.and_(rejections.c.path_raw == raw, rejections.c.size == f.size,
                                              rejections.c.mtime_ns == f.mtime_ns, rejections.c.inode == f.inode), f)


Record = VerdictRecord | RejectionRecord | RescoreRecord
# each record's insert: (connection, record, station) -> 'new', 'duplicate' or 'exists'
WRITERS: dict[type, Callable[[Connection, Record, str | None], str]] = {
    VerdictRecord: _insert_verdict, RejectionRecord: _insert_rejection, RescoreRecord: _insert_rescore}
