"""Issue 26, cases 2, 3 and 13 through Flask's test client on a real station (database, scans, users file):
sessions end on the server, the login throttle holds under the tricks that got past it, images are not cached."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from inspector.store.store import open_store
from inspector.web.app import create_app
from inspector.web.auth import NAME_FAILURES, LoginThrottle
from inspector.web.users import UsersFile
from web_station import PASSWORDS, build_station

from attack_helpers import TOKEN


@pytest.fixture
def station(tmp_path):
    return build_station(tmp_path / "station", flagged=2, normal=1, scale=0.05)


@pytest.fixture
def app(station):
    with open_store(station.cfg.database.url, station=station.cfg.station_name) as store:
        yield create_app(station.cfg, store)


def login(client, name: str, password: str | None = None, address: str = "127.0.0.1"):
    client.environ_base["REMOTE_ADDR"] = address
    page = client.get("/login").data.decode()
    return client.post("/login", data={"name": name, "password": password or PASSWORDS[name],
                                       "csrf_token": TOKEN.search(page).group(1)})


def saved_cookie(client) -> str:
    return client.get_cookie("inspector_session").value


def with_cookie(app, value: str):
    other = app.test_client()
    other.set_cookie("inspector_session", value)
    return other


# ---- case 2: sessions end on the server ------------------------------------------------------------------------
def test_a_cookie_saved_before_logout_is_dead_after_it(app, station):
    client = app.test_client()
    assert login(client, "ann").status_code == 302
    stolen = saved_cookie(client)
    page = client.get("/").data.decode()
    assert client.post("/logout", data={"csrf_token": TOKEN.search(page).group(1)}).status_code == 302
    replayed = with_cookie(app, stolen)
    assert replayed.get("/").status_code == 302, "the saved cookie still reads pages after the logout"
    item = station.flagged[0]
    refused = replayed.post("/review", data={"csrf_token": TOKEN.search(page).group(1), "image_id": item["image_id"],
                                             "verdict_id": "1", "label": "normal"})
    assert refused.status_code in (400, 401)
    assert login(app.test_client(), "ann").status_code == 302  # and she can log in again


def test_a_role_changed_and_changed_back_does_not_revive_old_sessions(app, station):
    client = app.test_client()
    assert login(client, "ann").status_code == 302
    stolen = saved_cookie(client)
    users = UsersFile(station.cfg.users_path)
    users.set_role("ann", "viewer")
    users.set_role("ann", "reviewer")
    assert with_cookie(app, stolen).get("/").status_code == 302


# ---- case 3: the login throttle -----------------------------------------------------------------------------
def test_a_successful_login_does_not_reset_the_address_counter(app):
    client = app.test_client()
    for i in range(19):  # 19 guesses over four names, each name below its own limit
        assert login(client, f"guess{i % 4}", "wrong-password", "10.9.9.9").status_code == 401
    assert login(client, "ann", address="10.9.9.9").status_code == 302  # the attacker's own account
    assert login(client, "guess4", "wrong-password", "10.9.9.9").status_code == 401  # the 20th failure
    blocked = login(app.test_client(), "vic", "wrong-password", "10.9.9.9")
    assert blocked.status_code == 429, "the own login reset the address's counter"


def test_parallel_guesses_on_one_name_get_no_more_checks_than_the_limit(app):
    answers = []
    clients = [app.test_client() for _ in range(40)]
    tokens = []
    for i, client in enumerate(clients):
        client.environ_base["REMOTE_ADDR"] = f"10.1.{i}.1"  # one address each: only the name counts
        tokens.append(TOKEN.search(client.get("/login").data.decode()).group(1))
    start = threading.Barrier(len(clients))

    def guess(client, token):
        start.wait()
        answers.append(client.post("/login", data={"name": "vic", "password": "wrong-password",
                                                    "csrf_token": token}).status_code)

    threads = [threading.Thread(target=guess, args=pair) for pair in zip(clients, tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(answers) == [401] * NAME_FAILURES + [429] * (40 - NAME_FAILURES), sorted(answers)


def median_login_seconds(app, names: list[str]) -> float:
    times = []
    for i, name in enumerate(names):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.2.{i}.{len(name)}"
        token = TOKEN.search(client.get("/login").data.decode()).group(1)
        start = time.perf_counter()
        answer = client.post("/login", data={"name": name, "password": "wrong-password", "csrf_token": token})
        times.append(time.perf_counter() - start)
        assert answer.status_code == 401
    return statistics.median(times)


def test_every_name_costs_a_password_hash(app):
    """A name that cannot be a user's (a space in it) is answered no faster than one that could: no timing tell."""
    median_login_seconds(app, ["warm-up"])
    possible = median_login_seconds(app, [f"bob{i}" for i in range(5)])
    impossible = median_login_seconds(app, [f"bob smith{i}" for i in range(5)])
    assert impossible > 0.5 * possible, (impossible, possible)


def test_a_flood_of_junk_names_does_not_make_the_throttle_forget_a_victim():
    throttle = LoginThrottle()
    for _ in range(NAME_FAILURES):
        throttle.failed(["name:vic"])
    assert throttle.wait_seconds(["name:vic"]) > 0
    for i in range(20_001):
        throttle.failed([f"name:junk-{i}"])
    assert throttle.wait_seconds(["name:vic"]) > 0, "the victim's failures were forgotten"


# ---- case 13: scans are not cached -----------------------------------------------------------------------------
def test_scan_images_are_served_no_store(app, station):
    client = app.test_client()
    assert login(client, "ann").status_code == 302
    item = next(i for i in station.flagged if i["verdict"] == "abnormal")
    for what in ("window.png", "heatmap.png", "original"):
        answer = client.get(f"/image/{item['image_id']}/{what}")
        assert answer.status_code == 200, what
        assert answer.headers["Cache-Control"] == "no-store", what
