"""The review queue, the home page: one flagged electrode at a time, oldest first, decided with one key.

A decision is `review.record_review`, exactly as `inspector review` records it, with the verdict the operator
saw and the review they saw as current: when another operator decided first, nothing is written and the page
says who did. Undo (Z) is `review.withdraw_review` of the operator's own last decision: a superseding review,
so the electrode waits in the queue again. The last decisions of a login are kept in its session.
"""

from __future__ import annotations

import logging

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for

from inspector.data.dataset import ANOMALY_TYPES
from inspector.base.paths import display_path
from inspector.store.queries import MAX_ROW_ID
from inspector.loop.review import ReviewConflict, queue_place, record_review, withdraw_review
from inspector.store.schema import parse_boxes
from inspector.web import WebError, ext
from inspector.web.auth import audit, reviewer_only

blueprint = Blueprint("queue", __name__)
UNDO_DEPTH = 10  # decisions a session can take back, newest first (the session cookie stays well under 4 KB)
# The keys of the anomaly panel: the top row of a keyboard, one per type of the paper's eleven.
ANOMALY_KEYS = tuple("1234567890-")


def anomaly_choices() -> list[tuple[str, str]]:
    """(key, type) for the anomaly panel, in the paper's order."""
    return list(zip(ANOMALY_KEYS, ANOMALY_TYPES))


def store():
    return ext()["store"]


def form_int(name: str, optional: bool = False) -> int | None:
    text = request.form.get(name, "").strip()
    if not text and optional:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_ROW_ID:
        raise WebError(400, f"The form's {name} is {text[:40]!r}, not a record's number: reload the page.")
    return value


def arg_int(name: str) -> int | None:
    try:
        value = int(request.args[name]) if request.args.get(name) else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value <= MAX_ROW_ID else None


def undo_stack() -> list:
    """This login's last decisions, newest first: [review id, image id, what it was]; another user's are none."""
    return session.get("undo", []) if session.get("undo_user") == g.user.name else []


def set_undo_stack(entries: list) -> None:
    session["undo"], session["undo_user"] = entries[:UNDO_DEPTH], g.user.name


def station_arg() -> str | None:
    return request.values.get("station") or None


@blueprint.route("/")
def home():
    station = station_arg()
    place = queue_place(store(), after=arg_int("after"), at=arg_int("at"), station=station)
    item = place.item
    if item is not None:
        item = {**item, "box_list": parse_boxes(item.get("boxes"))}
    undo = undo_stack()
    return render_template("queue.html", user=g.user, item=item, place=place, station=station,
                           stations=store().station_names(), anomaly_types=anomaly_choices(),
                           undo=undo[0] if undo else None, restarted=arg_int("after") is not None and item is None)


@blueprint.route("/review", methods=["POST"])
@reviewer_only
def decide():
    image_id = form_int("image_id")
    detail = store().image_detail(image_id)
    if detail is None or detail["verdict_row_id"] is None:
        raise WebError(404, f"No scored image {image_id} is known here; nothing was recorded.")
    label = request.form.get("label", "")
    anomalies = request.form.getlist("anomaly") + [request.form.get("other", "")]
    try:
        rec = record_review(store(), detail["sha256"], label, [a for a in anomalies if a.strip()], g.user.name,
                            request.form.get("note", "").strip(), verdict_id=form_int("verdict_id"),
                            expect_current=form_int("review_id", optional=True))
    except ReviewConflict as exc:
        raise WebError(409, str(exc)) from None
    shown = display_path(detail["path"])
    audit(logging.INFO, "review %d by %s from %s: %s for %s", rec.id, rec.reviewer, request.remote_addr, rec.label, shown)
    name = shown.rsplit("/", 1)[-1]
    short = name if len(name) <= 48 else name[:22] + "…" + name[-22:]
    set_undo_stack([[rec.id, image_id, f"{rec.label} for {short}"], *undo_stack()])
    kinds = f" ({', '.join(rec.anomalies)})" if rec.anomalies else ""
    flash(f"Recorded {rec.label}{kinds} for {name} (review {rec.id}). Z takes it back.", "ok")
    target = request.form.get("then")
    if target == "verdict":
        return redirect(url_for("pages.verdict", image_id=image_id), 303)
    return redirect(url_for("queue.home", after=image_id, station=station_arg()), 303)


@blueprint.route("/undo", methods=["POST"])
@reviewer_only
def undo():
    review_id = form_int("review_id")
    stack = undo_stack()
    entry = next((e for e in stack if e[0] == review_id), None)
    if entry is None:
        raise WebError(409, f"Review {review_id} is not one of your last decisions in this login; nothing was "
                            "undone. A decision can be changed on its verdict's page.")
    set_undo_stack([e for e in stack if e[0] != review_id])  # taken back now, or never again possible
    try:
        rec = withdraw_review(store(), review_id, g.user.name, only_by=g.user.name)
    except ReviewConflict as exc:
        raise WebError(409, str(exc)) from None
    audit(logging.INFO, "review %d by %s from %s withdraws review %d", rec.id, rec.reviewer, request.remote_addr,
          review_id)
    flash(f"Took back review {review_id} ({entry[2]}); the electrode waits for a decision again.", "ok")
    return redirect(url_for("queue.home", at=entry[1], station=station_arg()), 303)
