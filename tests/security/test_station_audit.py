"""Issue 26, cases 11 and 12 on a real `inspector serve`: its log is the audit trail (logins, failures, logouts,
decisions, withdrawals, refusals, each one line with the user and the address), and it notices a users file
opened to other users or deleted, without showing anyone the file's path."""

from __future__ import annotations

import os
import re
import time

import pytest

from attack_helpers import Client, served_station

LEVEL = r"\b(INFO|WARNING) (.* )?"  # a line of the station's own log format, not Python's last-resort output


@pytest.fixture
def served(tmp_path):
    with served_station(tmp_path / "station") as (st, server):
        yield st, server


def logged(server, pattern: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(server.lines):
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line matches {pattern!r}:\n" + "".join(server.lines))


def test_the_audit_trail_names_user_and_address_for_each_event(served):
    st, server = served
    ann, vic, stranger = Client(server.url), Client(server.url), Client(server.url)
    assert stranger.log_in("ann", "not-her-password") == 401
    assert ann.log_in("ann") == 302 and vic.log_in("vic") == 302
    item = st.flagged[0]
    page = ann.request("GET", f"/?at={item['image_id']}")[2]
    verdict_id = re.search(r'name="verdict_id" value="(\d+)"', page).group(1)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = {"csrf_token": token, "image_id": item["image_id"], "verdict_id": verdict_id, "review_id": "",
            "label": "normal"}
    assert ann.request("POST", "/review", form)[0] == 303
    assert ann.request("POST", "/undo", {"csrf_token": token, "review_id": "1"})[0] == 303
    vic_token = re.search(r'name="csrf_token" value="([^"]+)"', vic.request("GET", "/")[2]).group(1)
    assert vic.request("POST", "/review", {**form, "csrf_token": vic_token})[0] == 403
    assert ann.request("POST", "/logout", {"csrf_token": token})[0] == 302
    name = item["path"].name
    logged(server, LEVEL + r"failed login as 'ann' from 127\.0\.0\.1")
    logged(server, LEVEL + r"login: ann \(reviewer\) from 127\.0\.0\.1")
    logged(server, LEVEL + rf"review 1 by ann from 127\.0\.0\.1: normal for .*{re.escape(name)}")
    logged(server, LEVEL + r"review 2 by ann from 127\.0\.0\.1 withdraws review 1")
    logged(server, LEVEL + r"refused 403 POST /review for vic from 127\.0\.0\.1: vic is a viewer")
    logged(server, LEVEL + r"logout: ann from 127\.0\.0\.1")


def test_a_users_file_opened_to_others_is_reported_while_serving(served):
    st, server = served
    users = st.cfg.users_path
    os.chmod(users, 0o644)
    assert Client(server.url).request("GET", "/login")[0] == 200
    logged(server, rf"WARNING .*users file {re.escape(str(users))} is readable or writable by other users \(mode 0644\)")
    os.chmod(users, 0o666)
    Client(server.url).request("GET", "/login")
    logged(server, r"WARNING .*\(mode 0666\)")


def test_a_deleted_users_file_is_logged_never_shown(served):
    st, server = served
    users = st.cfg.users_path
    users.unlink()
    status, _, text = Client(server.url).request("GET", "/login")
    assert status == 200 and "No users yet" in text
    assert str(users) not in text and str(st.root) not in text, "the login page shows where the users file is"
    logged(server, rf"WARNING .*users file {re.escape(str(users))} does not exist")
