"""The review station's audit trail (the `inspector.audit` logger) from real requests to the Flask app: logins,
failed logins, logouts, decisions, withdrawals and refusals (CSRF, 401, 403), each one line with user and address."""

from __future__ import annotations

import logging
import re

import pytest

from inspector.store.store import open_store
from inspector.web.app import create_app
from web_station import PASSWORDS, build_station, logged_in, login, token_of

ADDRESS = "127.0.0.1"  # the test client's remote address


@pytest.fixture
def station(tmp_path):
    return build_station(tmp_path / "station", flagged=2, normal=1, scale=0.05)


@pytest.fixture
def app(station):
    with open_store(station.cfg.database.url, station=station.cfg.station_name) as store:
        yield create_app(station.cfg, store)


@pytest.fixture
def audit(caplog):
    """The audit trail's lines so far, as (level name, message)."""
    caplog.set_level(logging.INFO, logger="inspector.audit")
    return lambda: [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "inspector.audit"]


def test_each_event_is_one_audit_line_with_user_and_address(app, station, audit):
    assert login(app.test_client(), "ann", "wrong").status_code == 401
    ann = logged_in(app, "ann")
    item = station.flagged[0]
    html = ann.get(f"/?at={item['image_id']}").data.decode()
    verdict_id = re.search(r'name="verdict_id" value="(\d+)"', html).group(1)
    token = token_of(html)
    decided = ann.post("/review", data={"csrf_token": token, "image_id": item["image_id"], "verdict_id": verdict_id,
                                        "review_id": "", "label": "abnormal"})
    assert decided.status_code == 303
    assert ann.post("/undo", data={"csrf_token": token, "review_id": "1"}).status_code == 303
    assert ann.post("/logout", data={"csrf_token": token}).status_code == 302
    name = item["path"].name
    lines = audit()
    assert lines[0] == ("WARNING", f"audit: failed login as 'ann' from {ADDRESS}")
    assert lines[1] == ("INFO", f"audit: login: ann (reviewer) from {ADDRESS}")
    assert lines[2][0] == "INFO" and re.fullmatch(rf"audit: review 1 by ann from {re.escape(ADDRESS)}: abnormal for "
                                                   rf".*{re.escape(name)}", lines[2][1]), lines[2]
    assert lines[3] == ("INFO", f"audit: review 2 by ann from {ADDRESS} withdraws review 1")
    assert lines[4] == ("INFO", f"audit: logout: ann from {ADDRESS}")
    assert len(lines) == 5 and all("\n" not in text for _, text in lines)


def test_refused_requests_are_audited(app, station, audit):
    item = station.flagged[0]
    stranger = app.test_client()
    stranger_token = token_of(stranger.get("/login").data)  # a session with its CSRF token, but no login
    assert stranger.post("/review", data={"csrf_token": stranger_token, "image_id": item["image_id"]}).status_code == 401
    vic = logged_in(app, "vic")
    token = token_of(vic.get("/").data)
    assert vic.post("/review", data={"csrf_token": token, "image_id": item["image_id"], "label": "normal"}
                    ).status_code == 403
    assert vic.post("/review", data={"csrf_token": "made-up", "image_id": item["image_id"]}).status_code == 400
    refusals = [(level, text) for level, text in audit() if text.startswith("audit: refused")]
    assert refusals[0] == ("WARNING", f"audit: refused 401 POST /review for (no user) from {ADDRESS}: You are not "
                                      "logged in (or your login has ended): log in and try again.")
    assert refusals[1][1].startswith(f"audit: refused 403 POST /review for vic from {ADDRESS}: vic is a viewer")
    assert refusals[2][1].startswith(f"audit: refused 400 POST /review for vic from {ADDRESS}: This form was refused")
    assert len(refusals) == 3 and {level for level, _ in refusals} == {"WARNING"}


def test_too_many_failed_logins_are_audited(app, audit):
    client = app.test_client()
    for _ in range(5):
        assert login(client, "ann", "wrong").status_code == 401
    assert login(client, "ann", PASSWORDS["ann"]).status_code == 429
    last = audit()[-1]
    assert last[0] == "WARNING" and re.fullmatch(rf"audit: refused login as 'ann' from {re.escape(ADDRESS)}: too many "
                                                 r"failed logins \(wait \d+ s\)", last[1]), last
