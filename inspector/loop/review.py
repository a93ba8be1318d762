"""Operator review: the final word on an image, kept as history, and the queue of images that wait for one.

Reviews are append-only (the store keeps them: store/reviews.py, `store.reviews`): a new review of the same content
supersedes the previous one and both rows stay; a withdrawal (an undo) supersedes too. Here: what a review may say
(label, anomaly types, reviewer) and which content a reference means. The latest review per sha256 is the label;
labelset.export_labels writes those images as a dataset folder load_dataset reads.
"""

from __future__ import annotations

import os
import re

from inspector.data.dataset import LABELS, anomaly_name
from inspector.base.errors import DatasetError
from inspector.imaging.read import file_sha256
from inspector.store.reviews import (ANY, QueuePlace, ReviewConflict, ReviewError, ReviewRecord, no_verdict)
from inspector.store.store import Store

__all__ = ["ANY", "QueuePlace", "ReviewConflict", "ReviewError", "ReviewRecord", "count_pending", "latest_reviews",
           "newest_review", "parse_anomalies", "pending_reviews", "query_reviews", "queue_place", "record_review",
           "resolve_image", "withdraw_review"]

MIN_PREFIX = 8


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


def _ambiguous(ref: str, what: str, rows: list) -> ReviewError:
    listed = ", ".join(f"{r.sha256} ({r.path or 'path unknown'})" for r in rows)
    return ReviewError(f"{what} {ref!r} matches {len(rows)} scored images: {listed}; give more digits of the sha256")


def resolve_image(store: Store, ref: str) -> str:
    """IMAGE|SHA -> sha256: a file (its content), a recorded path (also after a move), or a sha256 prefix."""
    ref = ref.strip()
    if os.path.isfile(ref):
        sha = file_sha256(ref)
        if store.reviews.scored(sha):
            return sha
        raise no_verdict(ref, f" (its content, sha256 {sha}, was never scored)")
    hits = store.reviews.scored_at({ref, os.path.abspath(ref), os.path.realpath(ref)})
    if len(hits) == 1:
        return hits[0].sha256
    if len(hits) > 1:
        raise _ambiguous(ref, "path", hits)
    if re.fullmatch(r"[0-9a-fA-F]+", ref):
        if len(ref) < MIN_PREFIX:
            raise ReviewError(f"sha256 prefix {ref!r} is too short: give at least {MIN_PREFIX} hex digits, "
                              f"or the image's path")
        rows = store.reviews.scored_with_prefix(ref.lower())
        if len(rows) == 1:
            return rows[0].sha256
        if len(rows) > 1:
            raise _ambiguous(ref, "sha256 prefix", rows)
    raise no_verdict(ref)


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
    return store.reviews.record(sha256, label, kinds, who, note or "", verdict_id, expect_current)


def withdraw_review(store: Store, review_id: int, reviewer: str | None = None, note: str = "",
                    only_by: str | None = None) -> ReviewRecord:
    """Take back review `review_id` (an undo): a superseding review labelled `withdrawn`, so the image is
    unreviewed again and waits in the queue; nothing is deleted. Only the newest review of its image can be
    withdrawn (ReviewConflict otherwise); `only_by`: refused unless that reviewer recorded it."""
    who = (reviewer or "").strip() or default_reviewer()
    return store.reviews.withdraw(review_id, who, note, only_by)


# The readers, by the names the CLI and the review station call them.
def newest_review(store: Store, sha256: str) -> dict | None:
    """The newest review of a content (the one a new review supersedes), None when it has none."""
    return store.reviews.newest(sha256)


def query_reviews(store: Store, sha256: str | None = None, station: str | None = None) -> list[dict]:
    """Every review row, latest first; `superseded` is True where a later review replaced it."""
    return store.reviews.history(sha256, station)


def pending_reviews(store: Store, sha256: str | None = None, station: str | None = None) -> list[dict]:
    """Abnormal and rescan verdicts nobody has reviewed yet (or whose review was withdrawn), oldest first."""
    return store.reviews.pending(sha256, station)


def count_pending(store: Store, station: str | None = None) -> int:
    """How many electrodes wait for an operator's decision (the review queue's length)."""
    return store.reviews.count_pending(station)


def queue_place(store: Store, after: int | None = None, at: int | None = None,
                station: str | None = None) -> QueuePlace:
    """The first pending electrode past the image `after` (or from the image `at` on) in queue order."""
    return store.reviews.queue_place(after, at, station)


def latest_reviews(store: Store) -> list[dict]:
    """The current label of each reviewed image: its newest review row, oldest image first."""
    return store.reviews.latest()
