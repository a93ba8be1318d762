"""The reviews table as the store keeps it (`store.reviews`): appended decisions and withdrawals, each content's
newest review, and the queue of electrodes that wait for one.

Reviews are append-only: a new review of the same content supersedes the previous one (its `supersedes` column
points at it) and both rows stay; a withdrawal (an undo) supersedes too. The reviews of one content are written one
at a time: a PostgreSQL advisory transaction lock on the content (SQLite's single writer does the same).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from inspector.store.database import Database
from inspector.base.errors import InspectorError
from inspector.base.paths import display_path
from inspector.store.queries import is_reviewed, newest_review_id
from inspector.store.schema import WITHDRAWN, audits, images, reviews, utc_now, verdicts

PENDING_VERDICTS = ("abnormal", "rescan")
LIST_HINT = "`inspector verdicts --path GLOB` lists scored images"
REVIEW_LOCK_CLASS = 0x1E57  # PostgreSQL advisory locks (two-key form) on one content's reviews
ANY = object()  # Reviews.record's expect_current when the caller saw no particular state (the CLI)


class ReviewError(InspectorError):
    """A review or export that cannot be done as asked (unknown image, bad label, bad rule)."""


class ReviewConflict(ReviewError):
    """The decision was made on a state that changed meanwhile: another review was recorded first."""


@dataclass(frozen=True)
class ReviewRecord:
    """A review just written, with the row it supersedes (None for the first review of an image)."""

    id: int
    sha256: str
    path: str | None
    label: str
    anomalies: tuple[str, ...]
    reviewer: str
    note: str
    model_verdict: str | None
    model_sha256: str | None
    p_abnormal: float | None
    created_at: datetime
    previous: dict | None = None


@dataclass(frozen=True)
class QueuePlace:
    """One electrode of the review queue, how many wait before it (skipped) and after it, and the next one."""

    item: dict | None
    before: int
    after: int
    next_item: dict | None = None


def no_verdict(ref: str, detail: str = "") -> ReviewError:
    return ReviewError(f"no verdict for {ref}{detail}; {LIST_HINT}")


def _first_path(sha256: sa.ColumnElement | str) -> sa.ScalarSelect:
    """The first recorded path of a content (a value, or a column the subquery correlates on)."""
    return (sa.select(images.c.path).where(images.c.sha256 == sha256).order_by(images.c.id).limit(1)
            .scalar_subquery())


def _pending_query(station: str | None) -> sa.Select:
    """Abnormal and rescan capture verdicts, and normal ones picked for an audit (store.audits), of files whose
    content has no standing review, oldest first."""
    audited = sa.and_(verdicts.c.verdict == "normal", images.c.sha256.in_(sa.select(audits.c.sha256)))
    query = (sa.select(images.c.first_seen.label("time"), images.c.path, images.c.sha256, images.c.moved_to,
                       verdicts.c.verdict, verdicts.c.p_abnormal, verdicts.c.reason, verdicts.c.heatmap_path,
                       verdicts.c.boxes, verdicts.c.peak_x, verdicts.c.peak_y,
                       verdicts.c.model_sha256, images.c.id.label("image_id"), verdicts.c.id.label("verdict_id"),
                       images.c.station, images.c.serial, images.c.lot, verdicts.c.threshold,
                       newest_review_id(images.c.sha256).label("review_id"))
             .select_from(images.join(verdicts, images.c.verdict_id == verdicts.c.id))
             .where(sa.or_(verdicts.c.verdict.in_(PENDING_VERDICTS), audited), images.c.status != "duplicate",
                    ~is_reviewed(images.c.sha256))
             .order_by(images.c.first_seen.asc(), images.c.id.asc()))
    return query.where(images.c.station == station) if station is not None else query


def _count(conn: Connection, query: sa.Select) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(query.order_by(None).subquery())).scalar_one())


class Reviews:
    """The reviews of one store (store.reviews); each method is one short transaction."""

    def __init__(self, db: Database):
        self.db = db

    # ---- which content a reference means ----------------------------------------------------------
    def scored(self, sha256: str) -> bool:
        """The content has a verdict (of any model)."""
        with self.db.read() as conn:
            return conn.execute(sa.select(verdicts.c.id).where(verdicts.c.sha256 == sha256).limit(1)).first() \
                is not None

    def scored_at(self, paths: set[str]) -> list[Row]:
        """(sha256, path) of each scored content recorded at one of these paths, as captured or as moved to."""
        with self.db.read() as conn:
            hits = conn.execute(sa.select(images.c.sha256, sa.func.min(images.c.path).label("path"))
                                .where(sa.or_(images.c.path.in_(paths), images.c.moved_to.in_(paths)))
                                .where(sa.exists(sa.select(verdicts.c.id).where(verdicts.c.sha256 == images.c.sha256)))
                                .group_by(images.c.sha256)).all()
        return list(hits)

    def scored_with_prefix(self, prefix: str) -> list[Row]:
        """(sha256, first path) of each scored content whose sha256 starts with `prefix` (lower-case hex)."""
        with self.db.read() as conn:
            return list(conn.execute(sa.select(verdicts.c.sha256, _first_path(verdicts.c.sha256).label("path"))
                                     .where(verdicts.c.sha256.like(prefix + "%")).distinct()
                                     .order_by(verdicts.c.sha256)).all())

    # ---- decisions ------------------------------------------------------------------------------
    def record(self, sha256: str, label: str, anomalies: tuple[str, ...], reviewer: str, note: str,
               verdict_id: int | None = None, expect_current: object = ANY) -> ReviewRecord:
        """Append a review superseding the content's newest, with the verdict `verdict_id` (one of this content)
        or the model's latest verdict; ReviewConflict when the newest review is not `expect_current`."""
        with self.db.write() as conn:
            _lock_content(conn, sha256)
            if verdict_id is not None:
                verdict = conn.execute(sa.select(verdicts).where(verdicts.c.id == verdict_id)).first()
                if verdict is None or verdict.sha256 != sha256:
                    raise ReviewError(f"verdict {verdict_id} is not a verdict of image {sha256[:12]}; "
                                      f"nothing recorded; {LIST_HINT}")
            else:
                verdict = conn.execute(sa.select(verdicts).where(verdicts.c.sha256 == sha256)
                                       .order_by(verdicts.c.created_at.desc(), verdicts.c.id.desc()).limit(1)).first()
            if verdict is None:
                raise no_verdict(f"sha256 {sha256}")
            previous = _newest_review(conn, sha256)
            if expect_current is not ANY and (previous.id if previous is not None else None) != expect_current:
                raise ReviewConflict(f"{_shown(conn, sha256)} was reviewed meanwhile: {_describe(previous)}; "
                                     "your decision was not recorded")
            return self._append(conn, sha256, label, anomalies, reviewer, note, verdict.verdict,
                                verdict.model_sha256, verdict.p_abnormal, previous)

    def withdraw(self, review_id: int, reviewer: str, note: str, only_by: str | None = None) -> ReviewRecord:
        """Append a withdrawal of the newest review `review_id` (ReviewConflict when it is not the newest)."""
        with self.db.write() as conn:
            target = conn.execute(sa.select(reviews).where(reviews.c.id == review_id)).first()
            if target is None:
                raise ReviewError(f"no review {review_id}; `inspector reviews` lists them")
            _lock_content(conn, target.sha256)
            newest = _newest_review(conn, target.sha256)
            if newest.id != target.id:
                raise ReviewConflict(f"review {review_id} of {_shown(conn, target.sha256)} was already superseded: "
                                     f"{_describe(newest)}; nothing was undone")
            if target.label == WITHDRAWN:
                raise ReviewError(f"review {review_id} is itself a withdrawal: the image already waits for review")
            if only_by is not None and target.reviewer != only_by:
                raise ReviewError(f"review {review_id} was recorded by {target.reviewer}, not {only_by}: record a "
                                  "new decision on the image instead")
            return self._append(conn, target.sha256, WITHDRAWN, (), reviewer, note or f"withdraws review {review_id}",
                                target.model_verdict, target.model_sha256, None, target)

    def _append(self, conn: Connection, sha256: str, label: str, kinds: tuple[str, ...], who: str, note: str,
                model_verdict: str | None, model_sha256: str | None, p_abnormal: float | None,
                previous: Row | None) -> ReviewRecord:
        """The one insert of a review row (a decision or a withdrawal), superseding `previous` (None: the first)."""
        now = utc_now()
        new_id = conn.execute(sa.insert(reviews).values(
            sha256=sha256, label=label, anomalies=";".join(kinds), reviewer=who, note=note,
            model_verdict=model_verdict, model_sha256=model_sha256,
            supersedes=previous.id if previous is not None else None, created_at=now,
            station=self.db.station)).inserted_primary_key[0]
        path = conn.execute(sa.select(_first_path(sha256))).scalar()
        return ReviewRecord(int(new_id), sha256, path, label, kinds, who, note, model_verdict, model_sha256,
                            p_abnormal, now, dict(previous._mapping) if previous is not None else None)

    # ---- readers --------------------------------------------------------------------------------
    def newest(self, sha256: str) -> dict | None:
        """The newest review of a content (the one a new review supersedes), None when it has none."""
        with self.db.read() as conn:
            row = _newest_review(conn, sha256)
        return dict(row._mapping) if row is not None else None

    def history(self, sha256: str | None = None, station: str | None = None) -> list[dict]:
        """Every review row, latest first; `superseded` is True where a later review replaced it; station: the
        reviews of the images that station recorded, wherever they were entered."""
        later = reviews.alias("later")
        superseded = sa.exists(sa.select(later.c.id).where(later.c.supersedes == reviews.c.id))
        query = (sa.select(reviews, superseded.label("superseded"), _first_path(reviews.c.sha256).label("path"))
                 .order_by(reviews.c.id.desc()))
        if sha256 is not None:
            query = query.where(reviews.c.sha256 == sha256)
        if station is not None:
            query = query.where(reviews.c.sha256.in_(sa.select(images.c.sha256).where(images.c.station == station)))
        with self.db.read() as conn:
            return [dict(row._mapping, superseded=bool(row.superseded)) for row in conn.execute(query)]

    def latest(self) -> list[dict]:
        """The current label of each reviewed image: its newest review row, oldest image first (an image whose
        newest review was withdrawn has none)."""
        newest = sa.select(sa.func.max(reviews.c.id)).group_by(reviews.c.sha256)
        query = sa.select(reviews).where(reviews.c.id.in_(newest), reviews.c.label != WITHDRAWN).order_by(reviews.c.id)
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # ---- the queue ------------------------------------------------------------------------------
    def pending(self, sha256: str | None = None, station: str | None = None) -> list[dict]:
        """Abnormal and rescan verdicts, and normal ones picked for an audit, nobody has reviewed yet (or whose
        review was withdrawn), oldest first (duplicates of a file shown once)."""
        query = _pending_query(station)
        if sha256 is not None:
            query = query.where(images.c.sha256 == sha256)
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def count_pending(self, station: str | None = None) -> int:
        """How many electrodes wait for an operator's decision (the review queue's length)."""
        with self.db.read() as conn:
            return _count(conn, _pending_query(station))

    def count_pending_by_station(self) -> dict[str | None, int]:
        """count_pending of every station at once, by station name (a station with none waiting is left out)."""
        pending = _pending_query(None).order_by(None).subquery()
        with self.db.read() as conn:
            return {name: int(n) for name, n in conn.execute(sa.select(pending.c.station, sa.func.count())
                                                             .group_by(pending.c.station))}

    def queue_place(self, after: int | None = None, at: int | None = None, station: str | None = None) -> QueuePlace:
        """The first pending electrode past the image `after` (or from the image `at` on) in queue order; from the
        oldest when neither is given or the id is unknown. None as the item when no electrode waits there."""
        base = _pending_query(station)
        with self.db.read() as conn:
            query = base
            cursor_id = after if after is not None else at
            cursor = None
            if cursor_id is not None:
                cursor = conn.execute(sa.select(images.c.first_seen, images.c.id)
                                      .where(images.c.id == cursor_id)).first()
            if cursor is not None:
                later = images.c.first_seen > cursor.first_seen
                same = sa.and_(images.c.first_seen == cursor.first_seen,
                               images.c.id > cursor.id if after is not None else images.c.id >= cursor.id)
                query = query.where(sa.or_(later, same))
            found = conn.execute(query.limit(2)).all()
            row = found[0] if found else None
            total = _count(conn, base)
            if row is None:
                return QueuePlace(None, total if cursor is not None else 0, 0)
            earlier = sa.or_(images.c.first_seen < row.time,
                             sa.and_(images.c.first_seen == row.time, images.c.id < row.image_id))
            before = _count(conn, base.where(earlier))
        return QueuePlace(dict(row._mapping), before, total - before - 1,
                          dict(found[1]._mapping) if len(found) > 1 else None)


def _lock_content(conn: Connection, sha256: str) -> None:
    """Reviews of one content one at a time, so two operators' decisions cannot both supersede the same review: a
    PostgreSQL advisory lock on the content until the commit (no table privilege needed, so a role that may not
    write reviews is told so by the insert); SQLite's writer is alone anyway."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(sha256.encode()) - 2**31  # an int4, the same in every process
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:cls, :key)"), {"cls": REVIEW_LOCK_CLASS, "key": key})


def _newest_review(conn: Connection, sha256: str) -> Row | None:
    return conn.execute(sa.select(reviews).where(reviews.c.sha256 == sha256)
                        .order_by(reviews.c.id.desc()).limit(1)).first()


def _shown(conn: Connection, sha256: str) -> str:
    path = conn.execute(sa.select(_first_path(sha256))).scalar()
    return display_path(path) if path else f"image {sha256[:12]}"


def _describe(review: Row | None) -> str:
    if review is None:
        return "its review was taken back"
    from inspector.base.times import format_local

    kinds = f" ({review.anomalies.replace(';', ', ')})" if review.anomalies else ""
    return f"{review.label}{kinds} by {review.reviewer} at {format_local(review.created_at)} (review {review.id})"
