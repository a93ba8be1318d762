"""Operator review: the final word on an image, kept as history, and the queue of images that wait for one.

Reviews are append-only: a new review of the same content supersedes the previous one
(its `supersedes` column points at it) and both rows stay; a withdrawal (an undo) supersedes
too. The latest review per sha256 is the label; labelset.export_labels writes those images as
a dataset folder load_dataset reads.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from inspector.dataset import LABELS, anomaly_name
from inspector.errors import DatasetError, InspectorError
from inspector.imaging import file_sha256
from inspector.queries import is_reviewed, newest_review_id
from inspector.schema import WITHDRAWN, images, reviews, utc_now, verdicts
from inspector.store import Store

MIN_PREFIX = 8
PENDING_VERDICTS = ("abnormal", "rescan")
LIST_HINT = "`inspector verdicts --path GLOB` lists scored images"


class ReviewError(InspectorError):
    """A review or export that cannot be done as asked (unknown image, bad label, bad rule)."""


class ReviewConflict(ReviewError):
    """The decision was made on a state that changed meanwhile: another review was recorded first."""


ANY = object()  # record_review's expect_current when the caller saw no particular state (the CLI)


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


def parse_anomalies(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Anomaly names -> snake_case types as load_dataset reads them, each once, in the order given.

    ';' and ',' separate names. METHOD.md spellings ("Scratches", "edge cuts") map to the paper's
    eleven types; any other name is a new type, normalized by dataset.anomaly_name (a name with a
    control or line-breaking character is a ReviewError).
    """
    out: list[str] = []
    for name in names:
        for part in (p for p in re.split(r"[;,]", name) if p.strip()):
            try:
                norm = anomaly_name(part)
            except DatasetError as exc:
                raise ReviewError(str(exc)) from None
            if norm not in out:
                out.append(norm)
    return tuple(out)


def default_reviewer() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def _first_path(sha256: str) -> sa.ScalarSelect:
    return (sa.select(images.c.path).where(images.c.sha256 == sha256).order_by(images.c.id).limit(1)
            .scalar_subquery())


def _no_verdict(ref: str, detail: str = "") -> ReviewError:
    return ReviewError(f"no verdict for {ref}{detail}; {LIST_HINT}")


def _ambiguous(ref: str, what: str, rows: list) -> ReviewError:
    listed = ", ".join(f"{r.sha256} ({r.path or 'path unknown'})" for r in rows)
    return ReviewError(f"{what} {ref!r} matches {len(rows)} scored images: {listed}; give more digits of the sha256")


def resolve_image(store: Store, ref: str) -> str:
    """IMAGE|SHA -> sha256: a file (its content), a recorded path (also after a move), or a sha256 prefix."""
    ref = ref.strip()
    with store.read() as conn:
        def scored(sha: str) -> bool:
            return conn.execute(sa.select(verdicts.c.id).where(verdicts.c.sha256 == sha).limit(1)).first() is not None

        if os.path.isfile(ref):
            sha = file_sha256(ref)
            if scored(sha):
                return sha
            raise _no_verdict(ref, f" (its content, sha256 {sha}, was never scored)")
        forms = {ref, os.path.abspath(ref), os.path.realpath(ref)}
        hits = conn.execute(sa.select(images.c.sha256, sa.func.min(images.c.path).label("path"))
                            .where(sa.or_(images.c.path.in_(forms), images.c.moved_to.in_(forms)))
                            .group_by(images.c.sha256)).all()
        hits = [h for h in hits if scored(h.sha256)]
        if len(hits) == 1:
            return hits[0].sha256
        if len(hits) > 1:
            raise _ambiguous(ref, "path", hits)
        if re.fullmatch(r"[0-9a-fA-F]+", ref):
            if len(ref) < MIN_PREFIX:
                raise ReviewError(f"sha256 prefix {ref!r} is too short: give at least {MIN_PREFIX} hex digits, "
                                  f"or the image's path")
            prefix = ref.lower()
            rows = conn.execute(sa.select(verdicts.c.sha256, _first_path_by_column().label("path"))
                                .where(verdicts.c.sha256.like(prefix + "%")).distinct()
                                .order_by(verdicts.c.sha256)).all()
            if len(rows) == 1:
                return rows[0].sha256
            if len(rows) > 1:
                raise _ambiguous(ref, "sha256 prefix", rows)
    raise _no_verdict(ref)


def _first_path_by_column() -> sa.ScalarSelect:
    """The first recorded path of the verdict row's content (correlated on verdicts.sha256)."""
    return (sa.select(images.c.path).where(images.c.sha256 == verdicts.c.sha256).order_by(images.c.id).limit(1)
            .scalar_subquery())


def record_review(store: Store, sha256: str, label: str, anomalies: tuple[str, ...] | list[str] = (),
                  reviewer: str | None = None, note: str = "", *, verdict_id: int | None = None,
                  expect_current: object = ANY) -> ReviewRecord:
    """Append a review; it supersedes the previous review of the content.

    It records the verdict `verdict_id` (the one the operator judged; it must be a verdict of this content),
    else the model's latest verdict at this moment. `expect_current`: the id of the newest review the operator
    saw (None: none); when another review was recorded since, nothing is written and ReviewConflict says by whom.
    """
    if label not in LABELS:
        raise ReviewError(f"label {label!r} is not normal or abnormal")
    kinds = parse_anomalies(list(anomalies))
    who = (reviewer or "").strip() or default_reviewer()
    with store.write() as conn:
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
            raise _no_verdict(f"sha256 {sha256}")
        previous = _newest_review(conn, sha256)
        if expect_current is not ANY and (previous.id if previous is not None else None) != expect_current:
            raise ReviewConflict(f"{_shown(conn, sha256)} was reviewed meanwhile: {_describe(previous)}; "
                                 "your decision was not recorded")
        return _append(conn, store, sha256, label, kinds, who, note or "", verdict.verdict, verdict.model_sha256,
                       verdict.p_abnormal, previous)


def withdraw_review(store: Store, review_id: int, reviewer: str | None = None, note: str = "",
                    only_by: str | None = None) -> ReviewRecord:
    """Take back review `review_id` (an undo): a superseding review labelled `withdrawn`, so the image is
    unreviewed again and waits in the queue; nothing is deleted. Only the newest review of its image can be
    withdrawn (ReviewConflict otherwise); `only_by`: refused unless that reviewer recorded it."""
    who = (reviewer or "").strip() or default_reviewer()
    with store.write() as conn:
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
            raise ReviewError(f"review {review_id} was recorded by {target.reviewer}, not {only_by}: record a new "
                              "decision on the image instead")
        return _append(conn, store, target.sha256, WITHDRAWN, (), who, note or f"withdraws review {review_id}",
                       target.model_verdict, target.model_sha256, None, target)


def _append(conn, store: Store, sha256: str, label: str, kinds: tuple[str, ...], who: str, note: str,
            model_verdict: str | None, model_sha256: str | None, p_abnormal: float | None, previous) -> ReviewRecord:
    """The one insert of a review row (a decision or a withdrawal), superseding `previous` (None: the first)."""
    now = utc_now()
    new_id = conn.execute(sa.insert(reviews).values(
        sha256=sha256, label=label, anomalies=";".join(kinds), reviewer=who, note=note, model_verdict=model_verdict,
        model_sha256=model_sha256, supersedes=previous.id if previous is not None else None, created_at=now,
        station=store.station)).inserted_primary_key[0]
    path = conn.execute(sa.select(_first_path(sha256))).scalar()
    return ReviewRecord(int(new_id), sha256, path, label, kinds, who, note, model_verdict, model_sha256, p_abnormal,
                        now, dict(previous._mapping) if previous is not None else None)


def newest_review(store: Store, sha256: str) -> dict | None:
    """The newest review of a content (the one a new review supersedes), None when it has none."""
    with store.read() as conn:
        row = _newest_review(conn, sha256)
    return dict(row._mapping) if row is not None else None


REVIEW_LOCK_CLASS = 0x1E57  # PostgreSQL advisory locks (two-key form) on one content's reviews


def _lock_content(conn, sha256: str) -> None:
    """Reviews of one content one at a time, so two operators' decisions cannot both supersede the same review: a
    PostgreSQL advisory lock on the content until the commit (no table privilege needed, so a role that may not
    write reviews is told so by the insert); SQLite's writer is alone anyway."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(sha256.encode()) - 2**31  # an int4, the same in every process
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:cls, :key)"), {"cls": REVIEW_LOCK_CLASS, "key": key})


def _newest_review(conn, sha256: str):
    return conn.execute(sa.select(reviews).where(reviews.c.sha256 == sha256)
                        .order_by(reviews.c.id.desc()).limit(1)).first()


def _shown(conn, sha256: str) -> str:
    from inspector.paths import display_path

    path = conn.execute(sa.select(_first_path(sha256))).scalar()
    return display_path(path) if path else f"image {sha256[:12]}"


def _describe(review) -> str:
    if review is None:
        return "its review was taken back"
    from inspector.times import format_local

    kinds = f" ({review.anomalies.replace(';', ', ')})" if review.anomalies else ""
    return f"{review.label}{kinds} by {review.reviewer} at {format_local(review.created_at)} (review {review.id})"


def query_reviews(store: Store, sha256: str | None = None, station: str | None = None) -> list[dict]:
    """Every review row, latest first; `superseded` is True where a later review replaced it."""
    later = reviews.alias("later")
    superseded = sa.exists(sa.select(later.c.id).where(later.c.supersedes == reviews.c.id))
    path = (sa.select(images.c.path).where(images.c.sha256 == reviews.c.sha256).order_by(images.c.id).limit(1)
            .scalar_subquery())
    query = sa.select(reviews, superseded.label("superseded"), path.label("path")).order_by(reviews.c.id.desc())
    if sha256 is not None:
        query = query.where(reviews.c.sha256 == sha256)
    if station is not None:  # reviews of the images that station recorded, wherever they were entered
        query = query.where(reviews.c.sha256.in_(sa.select(images.c.sha256).where(images.c.station == station)))
    with store.read() as conn:
        return [dict(row._mapping, superseded=bool(row.superseded)) for row in conn.execute(query)]


def _pending_query(station: str | None) -> sa.Select:
    """Abnormal and rescan capture verdicts of files whose content has no standing review, oldest first."""
    query = (sa.select(images.c.first_seen.label("time"), images.c.path, images.c.sha256, images.c.moved_to,
                       verdicts.c.verdict, verdicts.c.p_abnormal, verdicts.c.reason, verdicts.c.heatmap_path,
                       verdicts.c.boxes, verdicts.c.peak_x, verdicts.c.peak_y,
                       verdicts.c.model_sha256, images.c.id.label("image_id"), verdicts.c.id.label("verdict_id"),
                       images.c.station, verdicts.c.threshold, newest_review_id(images.c.sha256).label("review_id"))
             .select_from(images.join(verdicts, images.c.verdict_id == verdicts.c.id))
             .where(verdicts.c.verdict.in_(PENDING_VERDICTS), images.c.status != "duplicate",
                    ~is_reviewed(images.c.sha256))
             .order_by(images.c.first_seen.asc(), images.c.id.asc()))
    return query.where(images.c.station == station) if station is not None else query


def pending_reviews(store: Store, sha256: str | None = None, station: str | None = None) -> list[dict]:
    """Abnormal and rescan verdicts nobody has reviewed yet (or whose review was withdrawn), oldest first
    (duplicates of a file shown once)."""
    query = _pending_query(station)
    if sha256 is not None:
        query = query.where(images.c.sha256 == sha256)
    with store.read() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def count_pending(store: Store, station: str | None = None) -> int:
    """How many electrodes wait for an operator's decision (the review queue's length)."""
    query = sa.select(sa.func.count()).select_from(_pending_query(station).order_by(None).subquery())
    with store.read() as conn:
        return int(conn.execute(query).scalar_one())


@dataclass(frozen=True)
class QueuePlace:
    """One electrode of the review queue, how many wait before it (skipped) and after it, and the next one."""

    item: dict | None
    before: int
    after: int
    next_item: dict | None = None


def queue_place(store: Store, after: int | None = None, at: int | None = None,
                station: str | None = None) -> QueuePlace:
    """The first pending electrode past the image `after` (or from the image `at` on) in queue order; from the
    oldest when neither is given or the id is unknown. None as the item when no electrode waits there."""
    base = _pending_query(station)
    with store.read() as conn:
        query = base
        cursor_id = after if after is not None else at
        cursor = None
        if cursor_id is not None:
            cursor = conn.execute(sa.select(images.c.first_seen, images.c.id).where(images.c.id == cursor_id)).first()
        if cursor is not None:
            later = images.c.first_seen > cursor.first_seen
            same = sa.and_(images.c.first_seen == cursor.first_seen,
                           images.c.id > cursor.id if after is not None else images.c.id >= cursor.id)
            query = query.where(sa.or_(later, same))
        found = conn.execute(query.limit(2)).all()
        row = found[0] if found else None
        total = conn.execute(sa.select(sa.func.count()).select_from(base.order_by(None).subquery())).scalar_one()
        if row is None:
            before = total if cursor is not None else 0
            return QueuePlace(None, before, 0)
        earlier = sa.or_(images.c.first_seen < row.time,
                         sa.and_(images.c.first_seen == row.time, images.c.id < row.image_id))
        before = conn.execute(sa.select(sa.func.count())
                              .select_from(base.order_by(None).where(earlier).subquery())).scalar_one()
    return QueuePlace(dict(row._mapping), int(before), int(total) - int(before) - 1,
                      dict(found[1]._mapping) if len(found) > 1 else None)


def latest_reviews(store: Store) -> list[dict]:
    """The current label of each reviewed image: its newest review row, oldest image first (an image whose
    newest review was withdrawn has none)."""
    newest = sa.select(sa.func.max(reviews.c.id)).group_by(reviews.c.sha256)
    query = sa.select(reviews).where(reviews.c.id.in_(newest), reviews.c.label != WITHDRAWN).order_by(reviews.c.id)
    with store.read() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


