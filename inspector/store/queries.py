"""The readers of the verdict database: verdicts, rejections and the station's counts (a mixin of Store;
the counting itself is counts.py's)."""

from __future__ import annotations

import fnmatch
import os
import re
from datetime import datetime

import sqlalchemy as sa

from inspector.store import counts
from inspector.base.errors import StoreError
from inspector.store.schema import VERDICTS, WITHDRAWN, images, models, rejections, reviews, verdicts


MAX_ROW_ID = 2**63 - 1  # the largest id any of the databases holds (a 64-bit integer)


def newest_review_label(sha256_column: sa.ColumnElement) -> sa.ScalarSelect:
    """The label of the newest review of a content (correlated on `sha256_column`); NULL when none."""
    return (sa.select(reviews.c.label).where(reviews.c.sha256 == sha256_column)
            .order_by(reviews.c.id.desc()).limit(1).scalar_subquery())


def newest_review_id(sha256_column: sa.ColumnElement) -> sa.ScalarSelect:
    """The id of the newest review of a content, the one a new review supersedes; NULL when none."""
    return sa.select(sa.func.max(reviews.c.id)).where(reviews.c.sha256 == sha256_column).scalar_subquery()


def window(query: sa.Select, column: sa.ColumnElement, since: datetime | None, until: datetime | None,
           station_column: sa.ColumnElement | None = None, station: str | None = None) -> sa.Select:
    """The rows whose `column` is in [since, until) (an end that is None is open) and, given a station, whose
    `station_column` names it: the one period filter of every reader."""
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query.where(station_column == station) if station is not None else query


def moved_place(row) -> str | None:
    """Where an images row says its file was moved, as a path to open: the exact bytes (moved_to_raw, schema 4)
    as os.fsdecode gives them back, else the readable moved_to of a row moved before."""
    raw = row.get("moved_to_raw")
    return os.fsdecode(bytes(raw)) if raw is not None else row.get("moved_to")


def add_places(places: list, moved_to: str | None, path_raw: bytes) -> None:
    """One recorded file's places, where it was moved first (a rescore, the review station read from there)."""
    for place in (moved_to, bytes(path_raw)):
        if place is not None and place not in places:
            places.append(place)


def is_reviewed(sha256_column: sa.ColumnElement) -> sa.ColumnElement:
    """The content has a standing review: its newest review exists and was not withdrawn."""
    return sa.func.coalesce(newest_review_label(sha256_column), WITHDRAWN) != WITHDRAWN


def _content_files(conn, sha256: str) -> list[dict]:
    """The images rows of one content, oldest first (Queries.content_files and .content_history)."""
    return [dict(r._mapping) for r in conn.execute(sa.select(images).where(images.c.sha256 == sha256)
                                                   .order_by(images.c.id))]


# what query_verdicts and verdict_row give of each recorded file: its images row and the verdict it was given
VERDICT_COLUMNS = [
    images.c.id, images.c.station, images.c.first_seen.label("time"), images.c.path, images.c.path_raw,
    images.c.sha256, images.c.size, images.c.mtime_ns, images.c.status, images.c.duplicate_of, images.c.moved_to,
    images.c.moved_to_raw, images.c.serial, images.c.lot, verdicts.c.model_sha256, verdicts.c.p_abnormal,
    verdicts.c.verdict, verdicts.c.reason,
    verdicts.c.threshold, verdicts.c.method, verdicts.c.ready_to_commit_seconds, verdicts.c.inference_seconds,
    verdicts.c.heatmap_path, verdicts.c.heatmap_sha256, verdicts.c.created_at.label("verdict_time"),
    verdicts.c.peak_x, verdicts.c.peak_y, verdicts.c.boxes]


class Queries:
    """Read-only queries; each runs in one short read transaction of the Store it is mixed into."""

    def _verdict_select(self, since, until, verdict, model, columns, station=None, reviewed=None,
                        sha256=None, serial=None, lot=None) -> sa.Select:
        if model:  # the verdicts this model gave these images, at capture or by `inspector rescore`
            if not re.fullmatch(r"[0-9a-fA-F]{1,64}", model):
                raise StoreError(f"model {model!r} is not a sha256 or a prefix of one (hex digits)")
            on = sa.and_(verdicts.c.sha256 == images.c.sha256, verdicts.c.model_sha256.like(model.lower() + "%"))
            query = sa.select(*columns).select_from(images.join(verdicts, on))
        else:  # the verdict each image got when it was captured
            query = sa.select(*columns).select_from(images.outerjoin(verdicts, images.c.verdict_id == verdicts.c.id))
        query = window(query, images.c.first_seen, since, until, images.c.station, station)
        if verdict is not None:
            if verdict not in VERDICTS:
                raise StoreError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
            query = query.where(verdicts.c.verdict == verdict)
        if serial is not None:
            query = query.where(images.c.serial == serial)
        if lot is not None:
            query = query.where(images.c.lot == lot)
        if reviewed is not None:
            query = query.where(is_reviewed(images.c.sha256) if reviewed else ~is_reviewed(images.c.sha256))
        if sha256 is not None:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
                raise StoreError(f"sha256 {sha256!r} is not a content sha256 (64 hex digits)")
            query = query.where(images.c.sha256 == sha256.lower())
        return query

    def _glob(self, query: sa.Select, path_glob: str | None) -> tuple[sa.Select, str | None]:
        """Filter by a shell pattern over the whole path in SQL: GLOB on SQLite, LIKE elsewhere.

        Returns the query and the pattern left for Python (a [...] class on a database without GLOB).
        """
        if path_glob is None:
            return query, None
        if self.engine.dialect.name == "sqlite":
            return query.where(images.c.path.op("GLOB")(path_glob)), None
        if "[" in path_glob:
            return query, path_glob
        like = "".join({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(c, c) for c in path_glob)
        return query.where(images.c.path.like(like, escape="\\")), None

    def query_verdicts(self, since: datetime | None = None, until: datetime | None = None,
                       verdict: str | None = None, path_glob: str | None = None, model: str | None = None,
                       limit: int | None = None, station: str | None = None, reviewed: bool | None = None,
                       offset: int = 0, sha256: str | None = None, serial: str | None = None,
                       lot: str | None = None) -> list[dict]:
        """One row per image path with its verdict, newest first; path_glob matches the whole path; station: only
        the files that station recorded; reviewed: only images with (True) or without (False) a standing review;
        sha256: only the files of this content; serial, lot: only files whose name gave exactly this serial, lot;
        offset: rows skipped first (pages)."""
        query, left = self._glob(self._verdict_select(since, until, verdict, model, VERDICT_COLUMNS, station,
                                                      reviewed, sha256, serial, lot), path_glob)
        query = query.order_by(images.c.first_seen.desc(), images.c.id.desc())
        if left is None:
            query = query.limit(limit).offset(offset or None)
        out = []
        skip = offset if left is not None else 0
        with self.read() as conn:
            for row in conn.execute(query):
                if left is not None and not fnmatch.fnmatchcase(row.path, left):
                    continue
                if skip:
                    skip -= 1
                    continue
                item = dict(row._mapping)
                item["duplicate"] = row.status == "duplicate"
                out.append(item)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def verdict_row(self, image_id: int) -> dict | None:
        """The row query_verdicts gives for one recorded file, by its id (the capture verdict); None for an id the
        database does not know."""
        if not 0 <= image_id <= MAX_ROW_ID:
            return None
        query = self._verdict_select(None, None, None, None, VERDICT_COLUMNS).where(images.c.id == image_id)
        with self.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else dict(row._mapping, duplicate=row.status == "duplicate")

    def review_states(self, shas: set[str] | list[str]) -> dict[str, dict]:
        """The newest review of each content (reviews supersede, never overwrite; a `withdrawn` one means none
        stands) with `count`, how many it has; contents without a review are left out."""
        out: dict[str, dict] = {}
        shas = sorted(set(shas))
        with self.read() as conn:
            for start in range(0, len(shas), 500):
                chunk = shas[start:start + 500]
                counts = dict(conn.execute(sa.select(reviews.c.sha256, sa.func.count()).where(
                    reviews.c.sha256.in_(chunk)).group_by(reviews.c.sha256)).all())
                newest = sa.select(sa.func.max(reviews.c.id)).where(reviews.c.sha256.in_(chunk)).group_by(
                    reviews.c.sha256)
                for row in conn.execute(sa.select(reviews).where(reviews.c.id.in_(newest))):
                    out[row.sha256] = {**dict(row._mapping), "count": int(counts[row.sha256])}
        return out

    def station_names(self) -> list[str]:
        """Every station that recorded a file or wrote a heartbeat here, by name."""
        from inspector.store.schema import stations

        with self.read() as conn:
            names = set(conn.execute(sa.select(images.c.station).distinct()).scalars())
            names |= set(conn.execute(sa.select(stations.c.name)).scalars())
        return sorted(n for n in names if n)

    def image_detail(self, image_id: int) -> dict | None:
        """One recorded file version by its id: the images row, the verdict it was given (`verdict_*` keys, None
        before one) and that verdict's model metadata (`meta_json`); None for an id the database does not know
        (also one past the 64-bit ids any database can hold)."""
        if not 0 <= image_id <= MAX_ROW_ID:
            return None
        cols = [*images.c, verdicts.c.id.label("verdict_row_id"), verdicts.c.model_sha256, verdicts.c.p_abnormal,
                verdicts.c.verdict, verdicts.c.reason, verdicts.c.threshold, verdicts.c.method,
                verdicts.c.heatmap_path, verdicts.c.heatmap_sha256, verdicts.c.created_at.label("verdict_time"),
                verdicts.c.boxes, verdicts.c.peak_x, verdicts.c.peak_y,
                verdicts.c.station.label("verdict_station"), models.c.meta_json, models.c.path.label("model_path")]
        query = (sa.select(*cols)
                 .select_from(images.outerjoin(verdicts, images.c.verdict_id == verdicts.c.id)
                              .outerjoin(models, models.c.sha256 == verdicts.c.model_sha256))
                 .where(images.c.id == image_id))
        with self.read() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row is not None else None

    def content_history(self, sha256: str) -> dict:
        """Everything recorded of one content: every verdict (one per model, at capture or by rescore), newest
        first, and every file version that held it, oldest first (`files`: content_files's, in the same read)."""
        with self.read() as conn:
            given = conn.execute(sa.select(verdicts, models.c.path.label("model_path"))
                                 .select_from(verdicts.outerjoin(models, models.c.sha256 == verdicts.c.model_sha256))
                                 .where(verdicts.c.sha256 == sha256)
                                 .order_by(verdicts.c.created_at.desc(), verdicts.c.id.desc())).all()
            files = _content_files(conn, sha256)
        return {"verdicts": [dict(r._mapping) for r in given], "files": files}

    def content_files(self, sha256: str) -> list[dict]:
        """Every file version (images row) that held one content, oldest first."""
        with self.read() as conn:
            return _content_files(conn, sha256)

    def rescore_todo(self, model_sha256: str, since: datetime | None = None,
                     until: datetime | None = None) -> list[dict]:
        """Recorded contents without a verdict of this model, oldest first: one entry per sha256 with every
        place its file was recorded at (`places`: moved_to or path_raw, in the order to try) and the verdict
        it was given at capture (`verdict`, `model_sha256`)."""
        done = sa.select(verdicts.c.sha256).where(verdicts.c.model_sha256 == model_sha256)
        query = (sa.select(images.c.sha256, images.c.path_raw, images.c.moved_to, images.c.moved_to_raw, verdicts.c.verdict,
                           verdicts.c.model_sha256)
                 .select_from(images.join(verdicts, images.c.verdict_id == verdicts.c.id))
                 .where(images.c.sha256.not_in(done)).order_by(images.c.id))
        query = window(query, images.c.first_seen, since, until)
        todo: dict[str, dict] = {}
        with self.read() as conn:
            for row in conn.execute(query):
                entry = todo.setdefault(row.sha256, {"sha256": row.sha256, "places": [], "verdict": row.verdict,
                                                     "model_sha256": row.model_sha256})
                add_places(entry["places"], moved_place(row._mapping), row.path_raw)
        return list(todo.values())

    def recorded_places(self, sha256: str, first: dict | None = None) -> list:
        """Every place a content was recorded at, in the order to try it: the file version `first` (an images
        row) before the others, each one's moved_to before its capture path, oldest file first."""
        places: list = []
        if first is not None:
            add_places(places, moved_place(first), first["path_raw"])
        with self.read() as conn:
            for row in conn.execute(sa.select(images.c.moved_to, images.c.moved_to_raw, images.c.path_raw)
                                    .where(images.c.sha256 == sha256).order_by(images.c.id)):
                add_places(places, moved_place(row._mapping), row.path_raw)
        return places

    def count_verdicts(self, since: datetime | None = None, until: datetime | None = None,
                       verdict: str | None = None, path_glob: str | None = None, model: str | None = None,
                       station: str | None = None, reviewed: bool | None = None, sha256: str | None = None,
                       serial: str | None = None, lot: str | None = None) -> int:
        """How many rows query_verdicts would return without a limit (for "50 of N shown")."""
        query, left = self._glob(self._verdict_select(since, until, verdict, model, [images.c.path], station,
                                                      reviewed, sha256, serial, lot), path_glob)
        with self.read() as conn:
            if left is not None:
                return sum(fnmatch.fnmatchcase(p, left) for p in conn.execute(query).scalars())
            return int(conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one())

    def query_rejections(self, since: datetime | None = None, until: datetime | None = None,
                         limit: int | None = None, station: str | None = None) -> list[dict]:
        """Files that got no verdict and why, newest first."""
        query = window(sa.select(rejections), rejections.c.created_at, since, until, rejections.c.station, station)
        query = query.order_by(rejections.c.created_at.desc(), rejections.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def count_rejections(self, since: datetime | None = None, until: datetime | None = None,
                         station: str | None = None) -> int:
        query = window(sa.select(sa.func.count()).select_from(rejections), rejections.c.created_at, since, until,
                       rejections.c.station, station)
        with self.read() as conn:
            return int(conn.execute(query).scalar_one())

    def status_counts(self, today_start_utc: datetime, station: str | None = None) -> dict:
        """Model in use, counts by verdict (one per electrode: counts.count_electrodes) and by rejection reason
        (today and total), last verdict time, and per station the files recorded today; `station`: only that
        station's files."""
        with self.read() as conn:
            return counts.status_counts(conn, today_start_utc, station)

    def station_counts_today(self, today_start_utc: datetime) -> dict:
        """status_counts' two per-station maps alone: the files recorded and rejected today by station
        (`images_today_by_station`, `rejections_today_by_station`)."""
        with self.read() as conn:
            return counts.today_by_station(conn, today_start_utc)

    def model_in_use(self, station: str | None = None) -> dict | None:
        """The model of the newest capture verdict (counts.newest_verdict_model), None before any verdict."""
        with self.read() as conn:
            return counts.newest_verdict_model(conn, station)[0]

    def model_metas(self) -> dict[str, str | None]:
        """sha256 -> stored metadata (JSON text) of every model that scored."""
        with self.read() as conn:
            return {row.sha256: row.meta_json for row in conn.execute(sa.select(models.c.sha256, models.c.meta_json))}
