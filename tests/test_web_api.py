"""The review station's JSON API for the MES (/api/v1/) over real HTTP: a real `inspector serve` process on a real
database, API tokens made and revoked by real `inspector token` processes, and every answer checked against the
OpenAPI document the server serves (jsonschema, the document itself by openapi-spec-validator)."""

from __future__ import annotations

import http.client
import json
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode, urlsplit

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from browser import Served
from harness import run_inspector, wait_for
from inspector.cli import cli
from inspector.loop.review import record_review
from inspector.store.schema import images
from inspector.store.store import FileVersion, Verdict, VerdictRecord, open_store
from inspector.web.tokens import TokensFile, token_digest, tokens_path
from web_station import MODEL, PASSWORDS, TOKEN, build_station

ROOT = Path(__file__).resolve().parent.parent
SPEC = json.loads((ROOT / "inspector" / "web" / "openapi.json").read_text())
REGISTRY = Registry().with_resource("urn:inspector-api", DRAFT202012.create_resource(SPEC))


def add_token(config: Path, name: str) -> str:
    done = run_inspector(config, "token", "add", name, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# ---- checking answers against the OpenAPI document -------------------------------------------------------------
def spec_path(path: str) -> str | None:
    """The document's path template of a request path under /api/v1 (None for one it does not name)."""
    rest = path.split("?", 1)[0].removeprefix("/api/v1")
    if rest.startswith("/verdicts/") and "/" not in rest[len("/verdicts/"):]:
        return "/verdicts/{id}"
    return rest if rest in SPEC["paths"] else None


def check_against_spec(path: str, status: int, body: object) -> None:
    """The answer is one the document describes: its status listed for the path, its body valid for that status's
    schema (an address the document does not name: an Error)."""
    template = spec_path(path)
    pointer = "#/components/schemas/Error"
    if template is not None:
        responses = SPEC["paths"][template]["get"]["responses"]
        assert str(status) in responses, f"{status} for {path} is not in the OpenAPI document"
        if "$ref" not in responses[str(status)]:  # the shared responses (components) are the errors
            escaped = template.replace("~", "~0").replace("/", "~1")
            pointer = f"#/paths/{escaped}/get/responses/{status}/content/application~1json/schema"
    Draft202012Validator({"$ref": "urn:inspector-api" + pointer}, registry=REGISTRY).validate(body)


def exchange(url: str, method: str, path: str, headers: dict, body: str | None = None):
    """One request on a new connection: (status, headers, body bytes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request(method, path, body=body, headers=headers)
    answer = conn.getresponse()
    raw = answer.read()
    conn.close()
    return answer.status, answer.headers, raw


def call(url: str, path: str, token: str | None = None, method: str = "GET", headers: dict | None = None):
    """One API request; (status, headers, JSON body) with the body checked against the document."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    status, answer_headers, raw = exchange(url, method, path, sent)
    got = {k.title(): v for k, v in answer_headers.items()}  # one spelling of each name
    if method == "HEAD":
        return status, got, raw
    assert got["Content-Type"] == "application/json", (path, got, raw[:200])
    body = json.loads(raw)
    check_against_spec(path, status, body)
    return status, got, body


def login_cookie(url: str, name: str) -> str:
    """The session cookie of a login through the station's own form (its CSRF token and cookie)."""
    _, headers, page = exchange(url, "GET", "/login", {})
    first = headers["Set-Cookie"].split(";", 1)[0]
    form = urlencode({"name": name, "password": PASSWORDS[name], "csrf_token": TOKEN.search(page.decode()).group(1)})
    status, headers, _ = exchange(url, "POST", "/login", {"Cookie": first, "Content-Type":
                                                           "application/x-www-form-urlencoded"}, form)
    assert status == 302, status
    return headers["Set-Cookie"].split(";", 1)[0]


# ---- one served station for the module (each test makes its own tokens where it changes them) ------------------
def beat(store, name: str, **values) -> None:
    store.beat(dict(name=name, host=f"{name}-host", pid=4242, run_id=f"run-{name}", capture_dir="/capture",
                    model_sha256=MODEL, inspector_version="test", heartbeat_seconds=10.0, scored=5, rejected=1,
                    queued=2, paused_reason=None, status="scored 5", **values))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    st = build_station(tmp_path_factory.mktemp("api") / "station", flagged=4, normal=2, scale=0.05,
                       station_names=("line1", "line2"))
    with open_store(st.cfg.database.url, station="line2") as store:
        # the newest file: a verdict of the normal model, with its peak and boxes
        store.record_verdict(VerdictRecord(FileVersion(str(st.root / "capture" / "boxed.tif"), 10, 1, 7), Verdict(
            "ab" * 32, MODEL, 0.8, "abnormal", None, 0.5, "global", 0.1, 0.2, 30, 40, "[[10, 20, 50, 60]]"),
            "SN0042", "L7"))  # its name's serial and lot, as station.serial_pattern gives them
        record_review(store, st.flagged[0]["sha256"], "abnormal", ["crack"], "ann", "first look")
        record_review(store, st.flagged[0]["sha256"], "normal", [], "ann", "second look")
        beat(store, "line1")
        beat(store, "line2")
        store.station_stopped("line2", "run-line2")
        with store.read() as conn:
            boxed = conn.execute(sa.select(images.c.id).where(images.c.sha256 == "ab" * 32)).scalar_one()
    token = add_token(st.config, "mes")
    with Served(st.config) as server:
        yield SimpleNamespace(st=st, url=server.url, server=server, token=token, boxed=boxed)


def test_the_openapi_document_is_valid_and_served_without_a_token(api):
    validate_spec(SPEC)  # OpenAPI 3.1, every $ref reaching its target
    status, headers, body = call(api.url, "/api/v1/openapi.json")
    assert status == 200 and body == SPEC


def test_verdicts_are_the_records_of_inspector_verdicts_newest_first(api):
    status, headers, body = call(api.url, "/api/v1/verdicts", api.token)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    cli_json = CliRunner().invoke(cli, ["--config", str(api.st.config), "verdicts", "--format", "json"])
    assert cli_json.exit_code == 0, cli_json.output
    assert body == json.loads(cli_json.output)  # one row type: the same fields, the same values, the same order
    assert len(body) == 7 and [r["time"] for r in body] == sorted((r["time"] for r in body), reverse=True)
    assert body[0]["id"] == api.boxed and body[0]["peak"] == [30, 40] and body[0]["boxes"] == [[10, 20, 50, 60]]
    assert all(r["peak"] is None and r["boxes"] is None for r in body[1:])


def test_filters_work_like_the_cli(api):
    def ids(query: str) -> list[int]:
        status, _, body = call(api.url, "/api/v1/verdicts?" + query, api.token)
        assert status == 200, body
        return [r["id"] for r in body]

    everything = call(api.url, "/api/v1/verdicts", api.token)[2]
    by_id = {r["id"]: r for r in everything}
    all_ids = [r["id"] for r in everything]
    assert ids("verdict=abnormal") == [i for i in all_ids if by_id[i]["verdict"] == "abnormal"]
    assert ids("station=line2") == [i for i in all_ids if by_id[i]["station"] == "line2"] != []
    assert ids("station=nowhere") == []
    one = api.st.flagged[1]
    assert ids(f"sha256={one['sha256'].upper()}") == [one["image_id"]]
    assert ids("model=" + MODEL[:8]) == all_ids
    assert ids("path=*electrode-00[12].tif") == [api.st.flagged[2]["image_id"], api.st.flagged[1]["image_id"]]
    assert ids("limit=2") == all_ids[:2] and ids("limit=3&offset=2") == all_ids[2:5]
    since, until = everything[4]["time"], everything[1]["time"]  # ISO 8601 with a zone, as the records give it
    from urllib.parse import quote

    assert ids(f"since={quote(since)}&until={quote(until)}") == all_ids[2:5]
    assert ids("since=2h&verdict=rescan") == [i for i in all_ids if by_id[i]["verdict"] == "rescan"] != []
    assert ids("until=2000-01-01") == []
    assert ids("serial=SN0042") == [api.boxed] == ids("lot=L7") == ids("serial=SN0042&lot=L7")
    assert ids("serial=SN0042&lot=L8") == [] and ids("serial=SN004") == []  # exact, not a prefix
    assert by_id[api.boxed]["serial"] == "SN0042" and by_id[api.boxed]["lot"] == "L7"
    assert all(by_id[i]["serial"] is None and by_id[i]["lot"] is None for i in all_ids if i != api.boxed)


def test_one_verdict_with_its_reviews_and_boxes(api):
    item = api.st.flagged[0]
    status, _, body = call(api.url, f"/api/v1/verdicts/{item['image_id']}", api.token)
    assert status == 200
    listed = {r["id"]: r for r in call(api.url, "/api/v1/verdicts", api.token)[2]}
    assert {k: v for k, v in body.items() if k not in ("review", "reviews")} == listed[item["image_id"]]
    assert body["review"] == "normal"
    assert [(r["label"], r["note"], r["superseded"]) for r in body["reviews"]] == [
        ("normal", "second look", False), ("abnormal", "first look", True)]
    assert body["reviews"][0]["supersedes"] == body["reviews"][1]["id"]
    boxed = call(api.url, f"/api/v1/verdicts/{api.boxed}", api.token)[2]
    assert (boxed["peak"], boxed["boxes"], boxed["review"], boxed["reviews"]) == ([30, 40], [[10, 20, 50, 60]],
                                                                                 None, [])


def test_unknown_and_non_integer_ids_are_404(api):
    for path in ("/api/v1/verdicts/999999", f"/api/v1/verdicts/{2**70}", "/api/v1/verdicts/abc",
                 "/api/v1/verdicts/-1", "/api/v1/verdicts/1.5", "/api/v1/verdicts/1%20OR%201=1", "/api/v1/nothing",
                 "/api/v1/verdicts/"):
        status, headers, body = call(api.url, path, api.token)
        assert status == 404 and body["status"] == 404, path


def test_stations_show_heartbeats_state_and_counts(api):
    status, _, body = call(api.url, "/api/v1/stations", api.token)
    assert status == 200
    assert [(s["name"], s["state"], s["live"]) for s in body] == [("line1", "running", True),
                                                                  ("line2", "stopped", False)]
    line1, line2 = body
    assert (line1["scored_today"], line2["scored_today"]) == (3, 4)  # the files each recorded
    assert line1["host"] == "line1-host" and line1["queued"] == 2 and line2["stopped_at"] is not None
    # line1 recorded flagged 0 (reviewed) and 2, line2 flagged 1 and 3 (a rescan) and the boxed one
    assert (line1["to_review"], line2["to_review"]) == (1, 3)
    assert 0 <= line1["seen_seconds_ago"] < 60


def test_without_a_usable_token_401_with_a_bearer_challenge(api):
    for headers in ({}, {"Authorization": "Basic YW5uOmFubi1wYXNzd29yZC0x"}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer insp_not-a-token-of-this-station"},
                    {"Authorization": "Bearer " + api.token[:-1]}, {"Authorization": f"Bearer {api.token} x"},
                    {"Authorization": "Bearer " + token_digest(api.token)},  # the stored digest is no token
                    {"Authorization": f"Token {api.token}"}):
        for path in ("/api/v1/verdicts", "/api/v1/stations", f"/api/v1/verdicts/{api.boxed}"):
            status, got, body = call(api.url, path, headers=headers)
            assert status == 401 and got["Www-Authenticate"].startswith('Bearer realm="inspector"'), (headers, path)
            assert set(body) == {"status", "error"}
    assert call(api.url, "/api/v1/verdicts", "insp_wrong")[1]["Www-Authenticate"] == \
        'Bearer realm="inspector", error="invalid_token"'
    assert "refused 401 GET /api/v1/verdicts for (no user)" in "".join(api.server.lines)


def test_a_login_cookie_never_authorizes_the_api(api):
    cookie = login_cookie(api.url, "ann")
    status, _, page = exchange(api.url, "GET", "/verdicts", {"Cookie": cookie})
    assert status == 200 and b"electrode" in page  # the cookie is good for the pages
    for path in ("/api/v1/verdicts", "/api/v1/stations"):
        status, headers, body = call(api.url, path, headers={"Cookie": cookie})
        assert status == 401 and "cookie does not count" in body["error"]
    status, headers, _ = call(api.url, "/api/v1/verdicts", api.token, headers={"Cookie": cookie})
    assert status == 200 and "Set-Cookie" not in headers  # the API neither needs nor touches a session


def test_a_token_in_the_address_is_refused_and_never_logged(api):
    for path in (f"/api/v1/verdicts?access_token={api.token}", f"/api/v1/stations?access_token={api.token}"):
        for token in (None, api.token):  # refused even beside a good header: the token is in logs now
            status, headers, body = call(api.url, path, token)
            assert status == 400 and "Authorization header" in body["error"], path
            assert headers["Www-Authenticate"] == 'Bearer realm="inspector", error="invalid_request"'
    status, _, body = call(api.url, f"/api/v1/verdicts?token={api.token}")
    assert status == 401  # no token where it belongs; the stray parameter is not looked at
    assert api.token not in "".join(api.server.lines)


def test_only_get_and_head_are_taken(api):
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/api/v1/verdicts", f"/api/v1/verdicts/{api.boxed}", "/api/v1/stations"):
            status, headers, body = call(api.url, path, api.token, method=method)
            assert status == 405 and headers["Allow"] == "GET, HEAD" and body["status"] == 405, (method, path)
    status, headers, raw = call(api.url, "/api/v1/verdicts?limit=1", api.token, method="HEAD")
    assert status == 200 and raw == b"" and headers["Content-Type"] == "application/json"


def test_bad_filter_values_are_400_with_a_message(api):
    cases = {"verdict=maybe": "verdict", "since=last%20tuesday": "since", "until=13:99": "until",
             "since=1h&until=2h": "until is not later than since", "sha256=abc": "sha256",
             "sha256=" + "g" * 64: "sha256", "model=xyz": "model", "limit=0": "limit", "limit=-5": "limit",
             "limit=ten": "limit", "limit=1e3": "limit", "offset=-1": "offset", "offset=" + str(2**64): "offset",
             "limit=%D9%A3": "limit",  # an Arabic-Indic digit: not a number here
             "path=" + "x" * 600: "longer than", "station=" + "s" * 600: "longer than",
             "verdict=normal&verdict=abnormal": "more than once", "statoin=line1": "unknown query parameter",
             "since=99999999d": "since"}
    for query, said in cases.items():
        status, _, body = call(api.url, "/api/v1/verdicts?" + query, api.token)
        assert status == 400 and said in body["error"], (query, body)
    for path in ("/api/v1/stations?station=line1", f"/api/v1/verdicts/{api.boxed}?x=1"):
        assert call(api.url, path, api.token)[0] == 400


def test_revoking_a_token_refuses_it_on_the_running_server(api):
    config = api.st.config
    token = add_token(config, "line-dashboard")
    assert call(api.url, "/api/v1/stations", token)[0] == 200
    listed = json.loads(run_inspector(config, "token", "list", "--format", "json", timeout=60).stdout)
    entry = next(t for t in listed if t["name"] == "line-dashboard")
    assert entry["last_used_at"] is not None and entry["revoked_at"] is None and entry["scope"] == "read"
    done = run_inspector(config, "token", "revoke", "line-dashboard", timeout=60)
    assert done.returncode == 0 and done.stdout == "revoked API token line-dashboard\n"
    status, headers, body = call(api.url, "/api/v1/stations", token)
    assert status == 401 and "revoked" in body["error"] and 'error="invalid_token"' in headers["Www-Authenticate"]
    assert call(api.url, "/api/v1/stations", api.token)[0] == 200  # the others still work
    assert "refused 401 GET /api/v1/stations for API token line-dashboard" in "".join(api.server.lines)


def test_a_very_large_limit_is_capped(tmp_path):
    st = build_station(tmp_path / "big", flagged=0, normal=0)
    first = datetime(2026, 11, 1, tzinfo=timezone.utc)
    with open_store(st.cfg.database.url, station="line1") as store:
        store.record_outcomes([VerdictRecord(FileVersion(f"/capture/e{i:05d}.tif", 10, i, i), Verdict(
            f"{i:064x}", MODEL, 0.1, "normal", None, 0.5, "global")) for i in range(1005)])
        with store.write() as conn:  # one second apart, in the order written
            for i in range(1005):
                conn.execute(sa.update(images).where(images.c.sha256 == f"{i:064x}")
                             .values(first_seen=first + timedelta(seconds=i)))
    token = TokensFile(tokens_path(st.cfg)).add("mes")
    with Served(st.config) as server:
        for limit in ("1001", "1000000", "9" * 400):
            status, _, body = call(server.url, f"/api/v1/verdicts?limit={limit}", token)
            assert status == 200 and len(body) == 1000
        assert body[0]["path"] == "/capture/e01004.tif" and body[-1]["path"] == "/capture/e00005.tif"
        rest = call(server.url, "/api/v1/verdicts?limit=1000&offset=1000", token)[2]
        assert [r["path"] for r in rest] == [f"/capture/e{i:05d}.tif" for i in range(4, -1, -1)]
        assert len(call(server.url, "/api/v1/verdicts", token)[2]) == 100  # the default


# ---- `inspector token ...` ------------------------------------------------------------------------------------
def test_token_add_prints_the_token_once_and_keeps_only_its_digest(tmp_path):
    st = build_station(tmp_path / "station", flagged=0, normal=0)
    runner = CliRunner()
    added = runner.invoke(cli, ["--config", str(st.config), "token", "add", "mes"])
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert token.startswith("insp_") and len(token) >= 45 and "\n" not in token
    assert "only time it is shown" in added.stderr
    path = tokens_path(st.cfg)
    assert path.parent == st.cfg.users_path.parent and stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and token[5:] not in text and token_digest(token) in text
    again = runner.invoke(cli, ["--config", str(st.config), "token", "add", "mes"])
    assert again.exit_code == 1 and "exists already" in again.output
    bad = runner.invoke(cli, ["--config", str(st.config), "token", "add", "two words"])
    assert bad.exit_code == 1 and "is not a token name" in bad.output
    second = runner.invoke(cli, ["--config", str(st.config), "token", "add", "mes-2"]).stdout.strip()
    assert second != token


def test_token_list_and_revoke(tmp_path):
    st = build_station(tmp_path / "station", flagged=0, normal=0)
    runner = CliRunner()
    config = ["--config", str(st.config)]
    assert "no API tokens" in runner.invoke(cli, [*config, "token", "list"]).output
    runner.invoke(cli, [*config, "token", "add", "mes"])
    runner.invoke(cli, [*config, "token", "add", "erp"])
    assert runner.invoke(cli, [*config, "token", "revoke", "erp"]).output == "revoked API token erp\n"
    again = runner.invoke(cli, [*config, "token", "revoke", "erp"])
    assert again.exit_code == 0 and "revoked already" in again.output
    unknown = runner.invoke(cli, [*config, "token", "revoke", "nobody"])
    assert unknown.exit_code == 1 and "no token nobody" in unknown.output
    table = runner.invoke(cli, [*config, "token", "list"]).output.splitlines()
    assert table[0].split() == ["NAME", "SCOPE", "CREATED", "LAST", "USED", "REVOKED"]
    assert table[1].startswith("erp ") and table[2].startswith("mes ") and table[2].split()[3:] == ["never", "-"]
    listed = json.loads(runner.invoke(cli, [*config, "token", "list", "--format", "json"]).output)
    assert [(t["name"], t["revoked_at"] is not None) for t in listed] == [("erp", True), ("mes", False)]
    assert all("sha256" not in t for t in listed)
    re_added = runner.invoke(cli, [*config, "token", "add", "erp"])
    assert re_added.exit_code == 1 and "revoked: names are kept" in re_added.output


def test_a_damaged_tokens_file_is_a_503_not_a_crash(tmp_path):
    st = build_station(tmp_path / "station", flagged=1, normal=0)
    path = tokens_path(st.cfg)
    path.write_text("{not json")
    with Served(st.config) as server:
        status, _, body = call(server.url, "/api/v1/verdicts", "insp_anything")
        assert status == 503 and "tokens file cannot be read" in body["error"]
        # the server's log line is read by another thread: it may come a moment after the answer
        wait_for(lambda: "not valid JSON" in "".join(server.lines), 10, "the damaged tokens file in the server's log")


def test_a_token_of_another_scope_is_403(api):
    """Every token `token add` makes reads; an entry of a scope the API does not serve (a file from a later
    version, or edited by hand) is refused."""
    path = tokens_path(api.st.cfg)
    data = json.loads(path.read_text())
    data["tokens"]["writer"] = {"sha256": token_digest("insp_writer-token"), "scope": "write",
                                "created_at": "2026-11-01T00:00:00+00:00", "last_used_at": None, "revoked_at": None}
    path.write_text(json.dumps(data))
    status, headers, body = call(api.url, "/api/v1/verdicts", "insp_writer-token")
    assert status == 403 and headers["Www-Authenticate"] == 'Bearer realm="inspector", error="insufficient_scope"'
