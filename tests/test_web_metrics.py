"""The review station's /metrics (web/metrics.py): the plant-wide gauges from a real database (heartbeat age per
station, reviews pending), scraped over real HTTP from `inspector serve` with the bearer token of web.metrics_token
and refused without it; without a token, answered to this host's own clients only (Flask's test client gives the
request another address)."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from email.message import Message

import pytest

from browser import Served
from inspector.store.store import open_store
from inspector.web.app import create_app
from scrape import samples, value
from web_station import build_station

TOKEN = "metrics-token-0123456789abcdef"


def by_station(found: list, metric: str) -> dict[str, float]:
    return {s.labels["station"]: s.value for s in found if s.name == metric}


def beat(cfg, name: str, heartbeat_seconds: float) -> None:
    with open_store(cfg.database.url, station=name) as store:
        store.beat(dict(name=name, host="box", pid=os.getpid(), run_id=f"run-{name}", capture_dir="/capture",
                        model_sha256="cd" * 32, inspector_version="test", heartbeat_seconds=heartbeat_seconds,
                        scored=0, rejected=0, queued=0, paused_reason=None, status="scored 0"))


def get(url: str, headers: dict | None = None) -> tuple[int, str, Message]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def test_a_real_scrape_with_the_token_reads_the_database(tmp_path):
    st = build_station(tmp_path / "station", flagged=4, normal=2, scale=0.1,
                       extra_config=f'[web]\nmetrics_token = "{TOKEN}"\n')
    beat(st.cfg, "line1", 10.0)
    beat(st.cfg, "line2", 0.01)  # misses its heartbeats from now on
    beat(st.cfg, "line3", 10.0)
    with open_store(st.cfg.database.url, station="line3") as store:
        store.station_stopped("line3", "run-line3")  # a clean stop: no heartbeat age to alert on
    time.sleep(0.1)
    with Served(st.config) as server:
        status, body, headers = get(f"{server.url}/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, body
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        found = samples(body)
        assert value(found, "inspector_database_up") == 1
        assert value(found, "inspector_reviews_pending") == 4  # the flagged scans, none decided yet
        ages = by_station(found, "inspector_heartbeat_age_seconds")
        assert set(ages) == {"line1", "line2"} and ages["line2"] >= 0.1 and ages["line1"] < 60
        assert by_station(found, "inspector_heartbeat_interval_seconds") == {"line1": 10.0, "line2": 0.01}
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}, {"Authorization": TOKEN}):
            status, body, answer = get(f"{server.url}/metrics", headers)
            assert status == 401 and "inspector_" not in body, (headers, body)
            assert answer["WWW-Authenticate"] == 'Bearer realm="inspector metrics"'
    log = "".join(server.lines)
    assert log.count("audit: refused 401 GET /metrics for (no user) from 127.0.0.1") == 3, log


def test_without_a_token_the_real_server_refuses_what_a_proxy_on_this_host_passes_on(tmp_path):
    """Over real HTTP (waitress): a request from this host carrying a proxy's forwarding header comes from someone
    else; waitress drops such headers of untrusted peers before the app sees them, so the app must be told."""
    st = build_station(tmp_path / "station", flagged=1, normal=1, scale=0.1)
    with Served(st.config) as server:
        assert get(f"{server.url}/metrics")[0] == 200  # this host's own scraper
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host"):
            status, body, _ = get(f"{server.url}/metrics", {header: "203.0.113.9"})
            assert status == 403 and "inspector_" not in body, header


@pytest.fixture
def no_token_app(tmp_path):
    st = build_station(tmp_path / "station", flagged=2, normal=1, scale=0.1)
    with open_store(st.cfg.database.url, station="line1") as store:
        yield create_app(st.cfg, store)


def test_without_a_token_only_this_hosts_own_clients_may_scrape(no_token_app):
    client = no_token_app.test_client()
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        answer = client.get("/metrics", environ_base={"REMOTE_ADDR": address})
        assert answer.status_code == 200, address
        assert value(samples(answer.get_data(as_text=True)), "inspector_reviews_pending") == 2
    for address in ("10.0.0.7", "192.168.1.20", "::ffff:10.0.0.7", "fe80::1"):
        answer = client.get("/metrics", environ_base={"REMOTE_ADDR": address})
        assert answer.status_code == 403, address
        assert "inspector_" not in answer.get_data(as_text=True)
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):  # a proxy on this host passing others on
        answer = client.get("/metrics", headers={header: "203.0.113.9"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert answer.status_code == 403, header


def test_a_token_is_asked_of_local_clients_too_and_opens_it_to_others(tmp_path):
    st = build_station(tmp_path / "station", flagged=1, normal=1, scale=0.1,
                       extra_config=f'[web]\nmetrics_token = "{TOKEN}"\n')
    with open_store(st.cfg.database.url, station="line1") as store:
        client = create_app(st.cfg, store).test_client()
        assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 401
        answer = client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"},
                            environ_base={"REMOTE_ADDR": "10.0.0.7"})
        assert answer.status_code == 200
        openmetrics = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}",
                                                      "Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
        assert openmetrics.get_data(as_text=True).endswith("# EOF\n")


def test_a_database_that_cannot_answer_is_a_gauge_not_an_error(no_token_app, monkeypatch):
    from inspector.base.errors import StoreError

    store = no_token_app.extensions["inspector"]["store"]

    def away():
        raise StoreError("the database server does not answer")

    monkeypatch.setattr(store, "station_rows", away)
    answer = no_token_app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert answer.status_code == 200
    found = samples(answer.get_data(as_text=True))
    assert value(found, "inspector_database_up") == 0
    assert not [s for s in found if s.name == "inspector_reviews_pending"]
