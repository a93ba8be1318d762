"""The read-only JSON API for the MES and other programs: /api/v1/ (docs/API.md; the contract is openapi.json beside
this file, served at /api/v1/openapi.json).

Only an API token authorizes (`Authorization: Bearer TOKEN`, tokens.py); a login cookie never does, so no request
here can be forged by a web page in an operator's browser, and the API takes no CSRF token. Every answer is JSON,
errors too ({"status": ..., "error": ...}); only GET (and HEAD) is taken.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path

from flask import Blueprint, Response, g, request

from inspector.base.times import TIME_FORMS, parse_time, today_start_utc
from inspector.loop.record import review_record, verdict_record
from inspector.base.times import iso_time
from inspector.store.queries import MAX_ROW_ID
from inspector.store.schema import VERDICTS, WITHDRAWN
from inspector.web import WebError, ext
from inspector.web.tokens import SCOPES, TokenError

log = logging.getLogger("inspector.web")
blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
OPENAPI = Path(__file__).resolve().parent / "openapi.json"
OPEN_ENDPOINTS = {"api.openapi"}  # the contract itself is no secret: tools read it before they hold a token
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000  # a larger limit is taken as MAX_LIMIT: page on with offset
MAX_TEXT = 512  # the longest filter value taken (a path pattern, a station name)
TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9._~+/-]{1,256}=*")  # RFC 6750's b64token, bounded
# The query parameters of /verdicts.
VERDICT_PARAMS = ("since", "until", "station", "verdict", "sha256", "model", "path", "serial", "lot", "limit",
                  "offset")


class AuthError(WebError):
    """A request without a usable token: 401 (or 400, 403) with the Bearer challenge of RFC 6750."""

    def __init__(self, message: str, error: str | None = "invalid_token", status: int = 401):
        super().__init__(status, message, 'Bearer realm="inspector"' + (f', error="{error}"' if error else ""))


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    text = json.dumps(body, ensure_ascii=False, allow_nan=False)
    response = Response(text + "\n", status, mimetype="application/json", headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def json_error(status: int, message: str, challenge: str | None = None) -> Response:
    """Every error of the API (the app's handlers answer with it for /api/ paths)."""
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    if status == 401 and not challenge:
        headers["WWW-Authenticate"] = 'Bearer realm="inspector"'
    if status == 405:
        headers["Allow"] = "GET, HEAD"
    return json_response({"status": status, "error": message}, status, headers)


@blueprint.before_request
def require_token():
    """The request's token, or a refusal: a token in the address is refused (addresses are logged), a cookie is
    not looked at."""
    g.api_token = None
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if "access_token" in request.args:
        raise AuthError("The token was sent in the address; it goes in the Authorization header only (addresses "
                        "are logged): revoke this token (`inspector token revoke NAME`) and add another.",
                        "invalid_request", 400)
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("This API needs an API token: send `Authorization: Bearer TOKEN` (an administrator makes "
                        "one with `inspector token add NAME`); a login cookie does not count here.", None)
    token = token.strip()
    if not TOKEN_SYNTAX.fullmatch(token):
        raise AuthError("The Authorization header holds no valid bearer token.")
    tokens = ext()["tokens"]
    entry = tokens.find(token)
    if entry is None:
        raise AuthError("This token is not one of this station's API tokens (`inspector token list` shows them).")
    g.api_token = entry.name
    if entry.revoked_at:
        raise AuthError(f"The API token {entry.name} was revoked at {entry.revoked_at}.")
    if entry.scope not in SCOPES:
        raise AuthError(f"The API token {entry.name} has no scope this API serves.", "insufficient_scope", 403)
    tokens.note_use(entry)
    return None


@blueprint.errorhandler(TokenError)
def tokens_file_error(exc: TokenError):
    log.error("API tokens file: %s", exc)
    return json_error(503, "The station's API tokens file cannot be read: the server log says why; an "
                           "administrator fixes it (`inspector token list` on the station).")


# ---- the query string ----------------------------------------------------------------------------------
def query_args(allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string as one value per name; a name this address does not take, or one given twice, is a 400
    (a misspelt filter must not quietly return everything)."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        taken = ", ".join(allowed) or "no parameters"
        raise WebError(400, f"unknown query parameter {unknown[0][:64]!r}: this address takes {taken}")
    for name in request.args:
        if len(request.args.getlist(name)) > 1:
            raise WebError(400, f"{name} is given more than once")
    args = {name: request.args[name] for name in request.args}
    for name, value in args.items():
        if len(value) > MAX_TEXT:
            raise WebError(400, f"{name} is longer than {MAX_TEXT} characters")
    return args


def time_value(args: dict[str, str], name: str) -> datetime | None:
    if not args.get(name, "").strip():
        return None
    try:
        return parse_time(args[name])
    except ValueError:
        raise WebError(400, f"{name}: {args[name][:64]!r} is not a time: use {TIME_FORMS}; "
                            "ISO 8601 with a zone (2026-11-22T08:00:00Z) means the same on every host") from None


def int_value(args: dict[str, str], name: str, default: int, lowest: int) -> int:
    text = args.get(name, "").strip()
    if not text:
        return default
    if not re.fullmatch(r"[0-9]+", text) or int(text) < lowest:  # at most MAX_TEXT digits: query_args
        raise WebError(400, f"{name}: {text[:64]!r} is not a whole number of at least {lowest}")
    return int(text)


def hex_value(args: dict[str, str], name: str, lengths: str) -> str | None:
    text = args.get(name, "").strip().lower()
    if not text:
        return None
    if not re.fullmatch(rf"[0-9a-f]{{{lengths}}}", text):
        digits = "64 hex digits" if lengths == "64" else "a sha256 or a prefix of one (hex digits)"
        raise WebError(400, f"{name}: {text[:80]!r} is not {digits}")
    return text


def verdict_filters(args: dict[str, str]) -> dict:
    """The store's filters from the query string (what `inspector verdicts` takes), each checked: a bad value is
    a 400 that says why, never a 500."""
    verdict = args.get("verdict") or None
    if verdict is not None and verdict not in VERDICTS:
        raise WebError(400, f"verdict: {verdict[:64]!r} is not one of {', '.join(VERDICTS)}")
    since, until = time_value(args, "since"), time_value(args, "until")
    if since is not None and until is not None and until <= since:
        raise WebError(400, "until is not later than since: the window holds no time")
    return {"since": since, "until": until, "verdict": verdict, "station": args.get("station") or None,
            "sha256": hex_value(args, "sha256", "64"), "model": hex_value(args, "model", "1,64"),
            "path_glob": args.get("path") or None, "serial": args.get("serial") or None, "lot": args.get("lot") or None}


# ---- the endpoints -----------------------------------------------------------------------------------
@blueprint.route("/verdicts", provide_automatic_options=False)
def verdicts():
    """Recorded files and their capture verdicts, newest first (the rows `inspector verdicts` lists)."""
    args = query_args(VERDICT_PARAMS)
    filters = verdict_filters(args)
    limit = min(int_value(args, "limit", DEFAULT_LIMIT, 1), MAX_LIMIT)
    offset = int_value(args, "offset", 0, 0)
    if offset > MAX_ROW_ID:
        raise WebError(400, f"offset is past the largest row count a database holds ({MAX_ROW_ID})")
    rows = ext()["store"].query_verdicts(**filters, limit=limit, offset=offset)
    return json_response([verdict_record(r) for r in rows])


@blueprint.route("/verdicts/<int:image_id>", provide_automatic_options=False)
def verdict(image_id: int):
    """One recorded file's verdict with its boxes and every review of its content, newest first."""
    query_args(())
    store = ext()["store"]
    row = store.verdict_row(image_id)
    if row is None:
        raise WebError(404, f"no recorded file {image_id} is known here")
    reviews = store.reviews.history(row["sha256"])
    standing = reviews[0]["label"] if reviews and reviews[0]["label"] != WITHDRAWN else None  # newest first
    return json_response({**verdict_record(row), "review": standing, "reviews": [review_record(r) for r in reviews]})


@blueprint.route("/stations", provide_automatic_options=False)
def stations():
    """Every station's heartbeat as `inspector status` shows it, with today's counts and its review queue."""
    from inspector.loop.overview import station_states

    query_args(())
    store = ext()["store"]
    counts = store.station_counts_today(today_start_utc())
    pending = store.reviews.count_pending_by_station()
    beats, now = store.station_rows()
    out = []
    for s in station_states(beats, now, counts):
        out.append({
            "name": s["name"], "state": s["state"], "live": s["state"] == "running", "host": s["host"],
            "pid": s["pid"], "run_id": s["run_id"], "capture_dir": s["capture_dir"], "status": s["status"],
            "model_sha256": s["model_sha256"], "inspector_version": s["inspector_version"],
            "started_at": iso_time(s["started_at"]), "last_seen": iso_time(s["last_seen"]),
            "stopped_at": iso_time(s["stopped_at"]), "seen_seconds_ago": round(s["seen_seconds_ago"], 3),
            "heartbeat_seconds": s["heartbeat_seconds"], "scored": s["scored"], "rejected": s["rejected"],
            "queued": s["queued"], "paused_reason": s["paused_reason"], "scored_today": s["scored_today"],
            "rejected_today": s["rejected_today"], "to_review": pending.get(s["name"], 0)})
    return json_response(out)


@blueprint.route("/openapi.json", provide_automatic_options=False)
def openapi():
    """The API's contract (OpenAPI 3.1), without a token."""
    return Response(OPENAPI.read_bytes(), mimetype="application/json", headers={"Cache-Control": "no-cache"})
