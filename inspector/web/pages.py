"""The station's other pages: health, status (refreshing itself), verdict search, one verdict's history, reports."""

from __future__ import annotations

import logging
import math
from datetime import datetime

from flask import Blueprint, Response, g, render_template, request

from inspector.base.errors import StoreError
from inspector.store.schema import VERDICTS, parse_boxes
from inspector.web import WebError, ext

log = logging.getLogger("inspector.web")
blueprint = Blueprint("pages", __name__)
# the search's query keys, kept by its pages
FILTERS = ("since", "until", "verdict", "station", "path", "reviewed", "serial", "lot")
MAX_PATTERN = 512
PAGE_ROWS = 50
# The export's HTML report is one self-contained file: inline CSS, data: images, no script at all.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
STATUS_REFRESH_SECONDS = 5
STATUS_TREND_WEEKS = 8  # the status page's trends: the last eight weeks, today included



@blueprint.route("/healthz")
def healthz():
    """For the plant's monitoring, without a login: 200 `ok` while the database answers, else 503."""
    try:
        ext()["store"].schema_version()
    except StoreError as exc:  # the details (paths, hosts) are for the log, not for anyone who asks
        log.warning("healthz: %s", exc)
        return Response("database unavailable\n", 503, mimetype="text/plain")
    return Response("ok\n", 200, mimetype="text/plain")


def overview_of(station: str | None):
    from inspector.loop.overview import station_overview

    return station_overview(ext()["cfg"], ext()["store"], station)


@blueprint.route("/status")
def status():
    """The refreshing panel, and below it the trends of the last STATUS_TREND_WEEKS weeks (drawn once a load)."""
    from inspector.base.times import local_midnight
    from inspector.loop.trends import trend_view

    station = request.args.get("station") or None
    since = local_midnight(datetime.now().astimezone(), 7 * STATUS_TREND_WEEKS - 1)
    return render_template("status.html", user=g.user, view=overview_of(station), station=station,
                           stations=ext()["store"].station_names(), refresh=STATUS_REFRESH_SECONDS,
                           trend_weeks=STATUS_TREND_WEEKS, **trend_view(ext()["store"], since, None, station))


@blueprint.route("/status/panel")
def status_panel():
    """The status page's changing part, fetched by static/status.js every STATUS_REFRESH_SECONDS."""
    station = request.args.get("station") or None
    return render_template("status_panel.html", view=overview_of(station), station=station,
                           now=datetime.now().astimezone())


def time_arg(name: str) -> tuple[str, datetime | None]:
    from inspector.base.times import parse_time

    text = request.args.get(name, "").strip()
    if not text:
        return "", None
    try:
        return text, parse_time(text[:100])
    except ValueError as exc:  # parse_time's own message, also for an age past the year 1
        raise WebError(400, f"{name}: {exc}") from None


def path_arg() -> str | None:
    pattern = request.args.get("path", "").strip()
    if len(pattern) > MAX_PATTERN:
        raise WebError(400, f"The path pattern is longer than {MAX_PATTERN} characters.")
    return pattern or None


def exact_arg(name: str) -> str | None:
    """A serial or lot searched for: matched exactly, surrounding spaces dropped."""
    value = request.args.get(name, "").strip()
    if len(value) > MAX_PATTERN:
        raise WebError(400, f"The {name} is longer than {MAX_PATTERN} characters.")
    return value or None


def search_filters() -> dict:
    """The verdict search's filters from the query string (also the report's period)."""
    since_text, since = time_arg("since")
    until_text, until = time_arg("until")
    verdict = request.args.get("verdict") or None
    if verdict is not None and verdict not in VERDICTS:
        raise WebError(400, f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    reviewed = {"yes": True, "no": False}.get(request.args.get("reviewed", ""))
    return {"since_text": since_text, "since": since, "until_text": until_text, "until": until, "verdict": verdict,
            "station": request.args.get("station") or None, "path": path_arg(),
            "reviewed": reviewed, "reviewed_text": request.args.get("reviewed", ""), "serial": exact_arg("serial"),
            "lot": exact_arg("lot")}


@blueprint.route("/verdicts")
def verdicts():
    f = search_filters()
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    query = dict(since=f["since"], until=f["until"], verdict=f["verdict"], path_glob=f["path"], station=f["station"],
                 reviewed=f["reviewed"], serial=f["serial"], lot=f["lot"])
    store = ext()["store"]
    total = store.count_verdicts(**query)
    pages = max(1, math.ceil(total / PAGE_ROWS))
    page = min(page, pages)
    rows = store.query_verdicts(**query, limit=PAGE_ROWS, offset=(page - 1) * PAGE_ROWS)
    states = store.review_states({r["sha256"] for r in rows})
    args = {k: request.args[k] for k in FILTERS if request.args.get(k)}
    return render_template("verdicts.html", user=g.user, f=f, rows=rows, states=states, total=total, page=page,
                           pages=pages, args=args, stations=store.station_names(), page_rows=PAGE_ROWS,
                           with_serials=any(r["serial"] or r["lot"] for r in rows))


@blueprint.route("/verdict/<int:image_id>")
def verdict(image_id: int):
    from inspector.loop.review import query_reviews

    store = ext()["store"]
    detail = store.image_detail(image_id)
    if detail is None:
        raise WebError(404, f"No recorded image {image_id} is known here.")
    history = store.content_history(detail["sha256"])
    reviews = query_reviews(store, detail["sha256"])
    from inspector.web.queue import anomaly_choices

    detail = {**detail, "box_list": parse_boxes(detail.get("boxes"))}
    return render_template("verdict.html", user=g.user, d=detail, history=history, reviews=reviews,
                           current=reviews[0] if reviews else None, anomaly_types=anomaly_choices())


@blueprint.route("/reports")
def reports():
    return render_template("reports.html", user=g.user, stations=ext()["store"].station_names(), f=search_filters())


@blueprint.route("/reports/view")
def report_view():
    """`inspector export --format html` for the period, rendered now (thumbnails read from the images' files)."""
    return _report("html")


@blueprint.route("/reports/export.csv")
def report_csv():
    return _report("csv")


def _report(fmt: str) -> Response:
    from inspector.loop.export import render_report

    f = search_filters()
    text, _ = render_report(ext()["store"], ext()["cfg"], fmt, f["since"], f["until"], f["station"])
    if fmt == "csv":
        return Response(text, mimetype="text/csv", headers={
            "Content-Disposition": 'attachment; filename="inspector-outcomes.csv"', "Cache-Control": "no-store"})
    return Response(text, mimetype="text/html", headers={"Content-Security-Policy": REPORT_CSP})
