"""The review station's pages through Flask's test client on a real database and real scans: logins and roles,
CSRF, escaping, id-only file access, decisions exactly as `inspector review` records them, conflicts and undo."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from inspector.cli import cli
from inspector.store.schema import reviews
from inspector.store.store import open_store
from inspector.web.app import create_app
from web_station import EVIL_NAME, PASSWORDS, build_station, logged_in, login, token_of

PROXY_SECRET = "proxy-secret-0123456789"
FROM_PROXY = {"HTTP_X_INSPECTOR_PROXY_SECRET": PROXY_SECRET}  # what the proxy adds to every request


@pytest.fixture
def station(tmp_path):
    return build_station(tmp_path / "station", flagged=4, normal=2, scale=0.1, evil=True)


@pytest.fixture
def app(station):
    with open_store(station.cfg.database.url, station=station.cfg.station_name) as store:
        yield create_app(station.cfg, store)


def review_rows(station) -> list[dict]:
    with open_store(station.cfg.database.url) as store, store.read() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(reviews).order_by(reviews.c.id))]


def verdict_id_of(station, item: dict) -> int:
    with open_store(station.cfg.database.url) as store:
        return store.image_detail(item["image_id"])["verdict_row_id"]


def decide(client, item: dict, label: str = "normal", review_id: str = "", **extra):
    """POST the decision form as the queue page for `item` holds it (its CSRF token, verdict and current review)."""
    html = client.get(f"/?at={item['image_id']}").data.decode()
    found = re.search(r'name="verdict_id" value="(\d+)"', html)
    data = {"csrf_token": token_of(html), "image_id": item["image_id"], "review_id": review_id, "label": label,
            "verdict_id": found.group(1) if found else "", **extra}
    return client.post("/review", data=data)


# ---- who may do what -----------------------------------------------------------------------------------------
def test_healthz_answers_without_a_login_and_everything_else_needs_one(app, station):
    client = app.test_client()
    health = client.get("/healthz")
    assert (health.status_code, health.data, health.mimetype) == (200, b"ok\n", "text/plain")
    item = station.flagged[0]
    for url in ("/", "/status", "/status/panel", "/verdicts", f"/verdict/{item['image_id']}", "/reports",
                "/reports/view", f"/image/{item['image_id']}/window.png", f"/image/{item['image_id']}/original"):
        answer = client.get(url)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login?next="), url
    refused = client.post("/review", data={"image_id": item["image_id"], "label": "normal"})
    assert refused.status_code in (400, 401)  # no session: no CSRF token, no user; either way nothing written
    assert review_rows(station) == []


def test_login_sets_a_signed_httponly_samesite_cookie_and_a_wrong_password_is_refused(app):
    client = app.test_client()
    bad = login(client, "ann", "not-her-password")
    assert bad.status_code == 401 and b"Wrong name or password." in bad.data
    assert login(client, "nobody", "whatever-123").status_code == 401
    good = login(client, "ann")
    assert good.status_code == 302 and good.headers["Location"] == "/"
    cookie = next(h for h in good.headers.getlist("Set-Cookie") if h.startswith("inspector_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/").status_code == 200
    forged = app.test_client()  # a cookie value that was not signed with the station's key
    forged.set_cookie("inspector_session", "eyJ1c2VyIjoiYW5uIn0.forged.signature")
    assert forged.get("/").status_code == 302


def test_failed_logins_are_throttled_per_name(app):
    client = app.test_client()
    for _ in range(5):
        assert login(client, "vic", "wrong-password").status_code == 401
    blocked = login(client, "vic")  # the right password, but too many failures just now
    assert blocked.status_code == 429 and b"Too many failed logins" in blocked.data


def test_login_redirects_only_inside_the_site(app):
    client = app.test_client()
    page = client.get("/login")
    for target, expected in (("/verdicts?verdict=abnormal", "/verdicts?verdict=abnormal"), ("//evil.example/", "/"),
                             ("https://evil.example/", "/"), ("/\\evil.example", "/"), ("/\t/evil.example", "/"),
                             ("/\n/evil.example", "/"), ("/ /evil.example", "/")):
        client = app.test_client()
        page = client.get("/login")
        answer = client.post("/login", data={"name": "ann", "password": PASSWORDS["ann"], "next": target,
                                             "csrf_token": token_of(page.data)})
        assert answer.headers["Location"] == expected, target


def test_a_post_without_its_csrf_token_is_refused(app, station):
    client = logged_in(app)
    item = station.flagged[0]
    for data in ({"image_id": item["image_id"], "label": "normal"},
                 {"image_id": item["image_id"], "label": "normal", "csrf_token": "made-up"}):
        answer = client.post("/review", data=data)
        assert answer.status_code == 400 and b"This form was refused" in answer.data
    assert app.test_client().post("/login", data={"name": "ann", "password": PASSWORDS["ann"]}).status_code == 400
    assert review_rows(station) == []


def test_a_viewer_reads_but_cannot_record(app, station):
    client = logged_in(app, "vic")
    page = client.get("/")
    assert page.status_code == 200 and b"You are a viewer" in page.data and b'id="form-normal"' not in page.data
    item = station.flagged[0]
    answer = client.post("/review", data={"csrf_token": token_of(page.data), "image_id": item["image_id"],
                                          "verdict_id": verdict_id_of(station, item), "label": "normal"})
    assert answer.status_code == 403 and b"vic is a viewer" in answer.data
    assert client.post("/undo", data={"csrf_token": token_of(page.data), "review_id": "1"}).status_code == 403
    assert review_rows(station) == []


def test_a_new_password_a_new_role_or_a_removed_user_ends_the_sessions(app, station):
    client = logged_in(app)
    assert client.get("/").status_code == 200
    config = str(station.config)
    result = CliRunner().invoke(cli, ["user", "passwd", "ann", "--password-stdin", "--config", config],
                                input="a-new-password\n")
    assert result.exit_code == 0, result.output
    assert client.get("/").status_code == 302  # logged out
    assert login(client, "ann", "a-new-password").status_code == 302 and client.get("/").status_code == 200
    assert CliRunner().invoke(cli, ["user", "role", "ann", "viewer", "--config", config]).exit_code == 0
    assert client.get("/").status_code == 302
    viewer = logged_in(app, "vic")
    assert CliRunner().invoke(cli, ["user", "remove", "vic", "--config", config]).exit_code == 0
    assert viewer.get("/").status_code == 302


def test_the_proxy_header_is_believed_only_from_a_trusted_proxy(tmp_path):
    st = build_station(tmp_path / "p", flagged=1, normal=0, scale=0.1,
                       extra_config='[web]\nremote_user_header = "X-Remote-User"\ntrusted_proxies = ["10.0.0.0/24"]\n'
                                    f'proxy_secret = "{PROXY_SECRET}"\n')
    with open_store(st.cfg.database.url) as store:
        app = create_app(st.cfg, store)
        proxied = app.test_client()
        proxied.environ_base.update(REMOTE_ADDR="10.0.0.7", HTTP_X_REMOTE_USER="ann", **FROM_PROXY)
        page = proxied.get("/")
        assert page.status_code == 200 and b'id="form-normal"' in page.data and b"Log out" not in page.data
        outsider = app.test_client()
        outsider.environ_base.update(REMOTE_ADDR="192.168.1.9", HTTP_X_REMOTE_USER="ann", **FROM_PROXY)
        assert outsider.get("/").status_code == 302  # the header is ignored: log in like anyone
        stranger = app.test_client()
        stranger.environ_base.update(REMOTE_ADDR="10.0.0.7", HTTP_X_REMOTE_USER="mallory", **FROM_PROXY)
        refused = stranger.get("/")
        assert refused.status_code == 403 and b"mallory" in refused.data and b"inspector user add mallory" in refused.data


# ---- escaping and file access ---------------------------------------------------------------------------------
def test_a_file_name_with_markup_is_shown_as_text_everywhere(app, station):
    client = logged_in(app)
    evil = station.flagged[0]
    assert evil["path"].name == EVIL_NAME
    for url in ("/", f"/verdict/{evil['image_id']}", "/verdicts"):
        html = client.get(url).data.decode()
        assert "<img src=x onerror" not in html, url
        assert "&lt;img src=x onerror=alert(1)&gt;.tif" in html, url
    decided = decide(client, evil, "abnormal", note="<script>alert(2)</script>")
    assert decided.status_code == 303
    html = client.get(f"/verdict/{evil['image_id']}").data.decode()
    assert "<script>alert(2)" not in html and "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "script-src 'self'" in client.get("/").headers["Content-Security-Policy"]


def test_files_are_served_by_id_only_and_never_by_a_path_from_the_request(app, station):
    client = logged_in(app)
    for url in ("/image/../../../../etc/passwd", "/image/..%2F..%2F..%2Fetc%2Fpasswd/window.png",
                "/static/../../../../etc/passwd", "/static/..%2F..%2Fconfig.py", "/image/-1/original",
                "/image/99999/original", "/image/1e3/window.png", "/verdict/..%2F1", "/image/%2Fetc%2Fpasswd/original"):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert b"root:" not in answer.data and b"import" not in answer.data, url


def test_the_images_of_a_verdict_and_the_16_bit_original(app, station):
    client = logged_in(app)
    item = station.flagged[0]
    window = client.get(f"/image/{item['image_id']}/window.png")
    assert window.status_code == 200 and window.mimetype == "image/png"
    decoded = cv2.imdecode(np.frombuffer(window.data, np.uint8), cv2.IMREAD_UNCHANGED)
    import tifffile

    scan = tifffile.imread(item["path"])
    assert decoded.shape[:2] == scan.shape  # full resolution, as the network's conversion made it
    heat = client.get(f"/image/{item['image_id']}/heatmap.png")
    assert heat.status_code == 200 and heat.data.startswith(b"\x89PNG")
    rescan = next(i for i in station.flagged if i["verdict"] == "rescan")
    assert client.get(f"/image/{rescan['image_id']}/heatmap.png").status_code == 404
    original = client.get(f"/image/{item['image_id']}/original")
    assert original.status_code == 200 and original.data == item["path"].read_bytes()
    assert "attachment" in original.headers["Content-Disposition"]
    # moved by the daemon: served from the place the database recorded
    moved = item["path"].parent / "processed" / "x.tif"
    moved.parent.mkdir()
    item["path"].rename(moved)
    with open_store(station.cfg.database.url) as store:
        store.record_moved(str(item["path"]), item["sha256"], str(moved))
    assert client.get(f"/image/{item['image_id']}/original").data == moved.read_bytes()
    # changed since it was scored: refused with the reason, never shown as if it were the scored scan
    moved.write_bytes(moved.read_bytes()[:-10] + b"0123456789")
    stale = client.get(f"/image/{item['image_id']}/original")
    assert stale.status_code == 404 and b"now holds other content" in stale.data


# ---- decisions ---------------------------------------------------------------------------------------------------
def test_a_decision_is_a_review_as_the_cli_records_it_and_the_queue_moves_on(app, station):
    client = logged_in(app)
    first, second = station.flagged[:2]
    page = client.get("/").data.decode()
    assert f'data-image-id="{first["image_id"]}"' in page and "1 of 4 waiting" in page
    answer = decide(client, first, "abnormal", anomaly=["scratch", "bubble"], other="Ink Drop", note="left edge")
    assert answer.status_code == 303 and answer.headers["Location"] == f"/?after={first['image_id']}"
    [row] = review_rows(station)
    assert (row["sha256"], row["label"], row["anomalies"], row["reviewer"], row["note"], row["model_verdict"],
            row["supersedes"], row["station"]) == (first["sha256"], "abnormal", "scratch;bubble;ink_drop", "ann",
                                                   "left edge", "abnormal", None, "line1")
    after = client.get(answer.headers["Location"]).data.decode()
    assert f'data-image-id="{second["image_id"]}"' in after and "1 of 3 waiting" in after
    assert "Recorded abnormal (scratch, bubble, ink_drop)" in after
    listed = CliRunner().invoke(cli, ["reviews", "--format", "json", "--config", str(station.config)])
    assert '"reviewer": "ann"' in listed.output and '"anomalies": "scratch;bubble;ink_drop"' in listed.output


def test_skip_walks_past_an_electrode_and_the_end_offers_the_skipped_ones(app, station):
    client = logged_in(app)
    ids = [i["image_id"] for i in station.flagged]
    page = client.get(f"/?after={ids[-1]}").data.decode()
    assert "No flagged electrode after this one" in page and "4 electrodes you skipped still wait" in page
    page = client.get(f"/?after={ids[1]}").data.decode()
    assert f'data-image-id="{ids[2]}"' in page and "2 skipped before this one" in page


def test_a_decision_on_a_state_that_changed_is_refused_and_says_who_decided(app, station):
    ann, bob = logged_in(app), app.test_client()
    from inspector.web.users import UsersFile

    UsersFile(station.cfg.users_path).add("bob", "reviewer", "bob-password-1")
    assert login(bob, "bob", "bob-password-1").status_code == 302
    item = station.flagged[1]
    stale_form = bob.get(f"/?at={item['image_id']}").data.decode()  # bob looks, ann decides first
    assert decide(ann, item, "normal").status_code == 303
    verdict_id = re.search(r'name="verdict_id" value="(\d+)"', stale_form).group(1)
    late = bob.post("/review", data={"csrf_token": token_of(stale_form), "image_id": item["image_id"],
                                     "verdict_id": verdict_id, "review_id": "", "label": "abnormal"})
    assert late.status_code == 409
    assert re.search(rb"was reviewed meanwhile: normal by ann at [\d: -]+ \(review 1\)", late.data), late.data
    assert [r["reviewer"] for r in review_rows(station)] == ["ann"]
    own = token_of(ann.get("/").data)
    unknown = ann.post("/review", data={"csrf_token": own, "image_id": "99999", "verdict_id": "1", "label": "normal"})
    assert unknown.status_code == 404 and b"No scored image 99999" in unknown.data
    other = station.flagged[2]  # a verdict of another content
    wrong = ann.post("/review", data={"csrf_token": own, "image_id": other["image_id"],
                                      "verdict_id": verdict_id, "label": "normal"})
    assert wrong.status_code == 400 and b"is not a verdict of image" in wrong.data
    assert len(review_rows(station)) == 1


def test_undo_takes_the_last_decision_back_with_a_superseding_review(app, station):
    client = logged_in(app)
    item = station.flagged[0]
    decide(client, item, "normal")
    page = client.get("/").data.decode()
    assert 'id="form-undo"' in page and "Undo: normal for" in page
    undone = client.post("/undo", data={"csrf_token": token_of(page), "review_id": "1"})
    assert undone.status_code == 303 and undone.headers["Location"] == f"/?at={item['image_id']}"
    rows = review_rows(station)
    assert [(r["id"], r["label"], r["supersedes"], r["reviewer"]) for r in rows] == \
        [(1, "normal", None, "ann"), (2, "withdrawn", 1, "ann")]
    back = client.get(undone.headers["Location"]).data.decode()
    assert f'data-image-id="{item["image_id"]}"' in back and "decision taken back" in back
    again = client.post("/undo", data={"csrf_token": token_of(back), "review_id": "1"})
    assert again.status_code == 409 and len(review_rows(station)) == 2
    # decided again: the new review supersedes the withdrawal; nothing was ever deleted
    assert decide(client, item, "abnormal", review_id="2").status_code == 303
    assert [(r["label"], r["supersedes"]) for r in review_rows(station)] == \
        [("normal", None), ("withdrawn", 1), ("abnormal", 2)]
    from inspector.loop.review import latest_reviews

    with open_store(station.cfg.database.url) as store:
        assert [r["label"] for r in latest_reviews(store)] == ["abnormal"]


def test_only_the_own_last_decisions_can_be_undone_here(app, station):
    ann, vic_as_reviewer = logged_in(app), app.test_client()
    from inspector.web.users import UsersFile

    UsersFile(station.cfg.users_path).add("bob", "reviewer", "bob-password-1")
    login(vic_as_reviewer, "bob", "bob-password-1")
    decide(ann, station.flagged[0], "normal")
    page = vic_as_reviewer.get("/").data.decode()
    refused = vic_as_reviewer.post("/undo", data={"csrf_token": token_of(page), "review_id": "1"})
    assert refused.status_code == 409 and b"not one of your last decisions" in refused.data
    assert len(review_rows(station)) == 1


# ---- the other pages ------------------------------------------------------------------------------------------
def test_verdict_search_filters_and_pages(tmp_path):
    st = build_station(tmp_path / "many", flagged=3, normal=0, scale=0.05)
    with open_store(st.cfg.database.url, station="line1") as store:
        from store_rows import record_verdict

        for i in range(120):  # rows only: the search needs no files
            record_verdict(store, f"/srv/capture/bulk/n{i:03d}.tif", f"{i:064x}", 10, i, "cd" * 32, 0.1, "normal",
                           None, 0.5, "global")
        app = create_app(st.cfg, store)
        client = logged_in(app)
        first = client.get("/verdicts").data.decode()
        assert "123 verdicts, page 1 of 3" in first and first.count('href="/verdict/') == 50
        third = client.get("/verdicts?page=3").data.decode()
        assert third.count('href="/verdict/') == 23 and 'id="next-page"' not in third
        flagged = client.get("/verdicts?verdict=abnormal&reviewed=no").data.decode()
        assert "3 verdicts;" in flagged
        assert "1 verdict;" in client.get("/verdicts?path=*/n007.tif").data.decode()
        assert client.get("/verdicts?since=last+tuesday").status_code == 400


def test_status_shows_counts_and_each_stations_heartbeat(app, station):
    with open_store(station.cfg.database.url, station="line1") as store:
        store.beat({"name": "line1", "host": "xray-01", "pid": 4242, "run_id": "r1", "capture_dir": "/srv/capture",
                    "model_sha256": "cd" * 32, "inspector_version": "0.1.0", "heartbeat_seconds": 10.0,
                    "scored": 6, "rejected": 0, "queued": 2, "paused_reason": "database locked",
                    "status": "scored 6"})
    client = logged_in(app, "vic")
    page = client.get("/status").data.decode()
    assert 'id="status-panel"' in page and "status.js" in page
    panel = client.get("/status/panel").data.decode()
    assert re.search(r'id="tile-today">6<', panel) and re.search(r'id="tile-review"[^>]*>4<', panel)
    assert "xray-01" in panel and "running" in panel and "paused: database locked" in panel


def test_reports_render_the_export_on_demand(app, station):
    client = logged_in(app, "vic")
    assert b'id="report-form"' in client.get("/reports").data
    report = client.get("/reports/view?since=1d")
    assert report.status_code == 200 and b"<h2 id='flagged'>Abnormal and rescan (4)</h2>" in report.data
    assert report.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert b"&lt;img src=x onerror=alert(1)&gt;.tif" in report.data
    csv = client.get("/reports/export.csv")
    assert csv.mimetype == "text/csv" and csv.data.count(b"\n") == 7  # header + 6 outcomes
    bad = client.get("/reports/view?since=2d&until=3d")
    assert bad.status_code == 400 and b"is not after" in bad.data


def test_decisions_conflicts_and_undo_on_either_database(tmp_path, database_url):
    """The station on a plant's PostgreSQL database as on SQLite: the queue, a decision, a refused stale one,
    an undo, the status panel and the search."""
    st = build_station(tmp_path / "db", flagged=2, normal=1, scale=0.05, database_url=database_url,
                       station_names=("line1", "line2"))
    with open_store(database_url, station="line1") as store:
        app = create_app(st.cfg, store)
        ann, vic = logged_in(app), logged_in(app, "vic")
        first, second = st.flagged
        stale = ann.get("/").data.decode()
        assert decide(ann, first, "abnormal", anomaly=["bubble"]).status_code == 303
        late = ann.post("/review", data={"csrf_token": token_of(stale), "image_id": first["image_id"],
                                         "verdict_id": verdict_id_of(st, first), "review_id": "", "label": "normal"})
        assert late.status_code == 409
        page = ann.get("/").data.decode()
        assert f'data-image-id="{second["image_id"]}"' in page
        assert ann.post("/undo", data={"csrf_token": token_of(page), "review_id": "1"}).status_code == 303
        assert [(r["label"], r["supersedes"], r["station"]) for r in review_rows(st)] == \
            [("abnormal", None, "line1"), ("withdrawn", 1, "line1")]
        panel = vic.get("/status/panel?station=line2").data.decode()
        assert re.search(r'id="tile-today">1<', panel)  # line2 scored the second scan only
        assert "2 verdicts;" in vic.get("/verdicts?verdict=abnormal&reviewed=no").data.decode()
        assert "1 verdict;" in vic.get("/verdicts?station=line2").data.decode()


def test_a_login_ends_after_web_session_hours_even_while_in_use(tmp_path):
    import time

    st = build_station(tmp_path / "short", flagged=1, normal=0, scale=0.05, extra_config="[web]\nsession_hours = 0.0005\n")
    with open_store(st.cfg.database.url) as store:
        client = logged_in(create_app(st.cfg, store))
        assert client.get("/status/panel").status_code == 200  # each answer re-signs the cookie ...
        time.sleep(2.0)
        assert client.get("/status/panel").status_code == 302  # ... but the login itself is 1.8 s old


def test_odd_numbers_and_query_keys_are_refused_plainly(app, station):
    client = logged_in(app)
    huge = "9" * 20
    assert client.get(f"/verdict/{huge}").status_code == 404
    assert client.get(f"/image/{huge}/window.png").status_code == 404
    assert client.get(f"/?after={huge}").status_code == 200
    page = client.get("/").data.decode()
    answer = client.post("/review", data={"csrf_token": token_of(page), "image_id": huge, "verdict_id": "1",
                                          "label": "normal"})
    assert answer.status_code == 400 and b"not a record" in answer.data
    assert client.get("/verdicts?since=99999999999w").status_code == 400
    assert client.get("/verdicts?path=" + "*" * 600).status_code == 400
    listed = client.get("/verdicts?endpoint=x&_method=POST&_external=1&_scheme=javascript&verdict=abnormal")
    assert listed.status_code == 200 and b"javascript" not in listed.data
    assert review_rows(station) == []


def test_a_broken_users_file_is_a_plain_503(app, station):
    station.cfg.users_path.write_text("{broken")
    answer = app.test_client().post("/login", data={"name": "ann", "password": "x"})
    page = app.test_client().get("/login")
    assert page.status_code == 503 and b"users file cannot be read" in page.data and b"{broken" not in page.data
    assert answer.status_code in (400, 503)


def test_proxy_users_share_a_kiosk_without_sharing_an_undo(tmp_path):
    st = build_station(tmp_path / "k", flagged=2, normal=0, scale=0.05,
                       extra_config='[web]\nremote_user_header = "X-Remote-User"\ntrusted_proxies = ["10.0.0.1"]\n'
                                    f'proxy_secret = "{PROXY_SECRET}"\n')
    from inspector.web.users import UsersFile

    UsersFile(st.cfg.users_path).add("bob", "reviewer", None)
    with open_store(st.cfg.database.url) as store:
        kiosk = create_app(st.cfg, store).test_client()
        kiosk.environ_base.update(REMOTE_ADDR="::ffff:10.0.0.1", HTTP_X_REMOTE_USER="ann", **FROM_PROXY)  # an IPv4 proxy via ::
        assert decide(kiosk, st.flagged[0], "normal").status_code == 303
        assert b'id="form-undo"' in kiosk.get("/").data
        kiosk.environ_base["HTTP_X_REMOTE_USER"] = "bob"
        page = kiosk.get("/").data
        assert b"bob" in page and b'id="form-undo"' not in page
        refused = kiosk.post("/undo", data={"csrf_token": token_of(page), "review_id": "1"})
        assert refused.status_code == 409 and len(review_rows(st)) == 1


# ---- where the map points: the boxes over the scan -------------------------------------------------------
def _set_region(station, item: dict, boxes: str | None, peak: tuple[int, int] | None = (30, 40)) -> None:
    with open_store(station.cfg.database.url) as store, store.write() as conn:
        row = conn.execute(sa.text("SELECT verdict_id FROM images WHERE id = :id"), {"id": item["image_id"]}).scalar()
        conn.execute(sa.text("UPDATE verdicts SET boxes = :b, peak_x = :x, peak_y = :y WHERE id = :v"),
                     {"b": boxes, "x": peak[0] if peak else None, "y": peak[1] if peak else None, "v": row})


RECT = re.compile(r'<rect x="([^"]*)" y="([^"]*)" width="([^"]*)" height="([^"]*)"></rect>')


def test_the_queue_and_the_verdict_page_outline_the_recorded_boxes(app, station):
    item = station.flagged[0]
    _set_region(station, item, "[[10, 20, 40, 60], [5, 6, 7, 9]]")
    client = logged_in(app)
    for url in (f"/?at={item['image_id']}", f"/verdict/{item['image_id']}"):
        html = client.get(url).data.decode()
        svg = re.search(r'<svg id="img-boxes"[^>]*>(.*?)</svg>', html, re.S)
        assert svg, url
        assert RECT.findall(svg.group(1)) == [("10", "20", "30", "40"), ("5", "6", "2", "3")], url
        assert re.search(r'<button type="button" data-boxes [^>]*class="on"', html), url
    other = station.flagged[1]  # no boxes recorded: no overlay, the button disabled
    html = client.get(f"/?at={other['image_id']}").data.decode()
    assert 'id="img-boxes"' not in html and re.search(r"<button type=\"button\" data-boxes disabled", html)


@pytest.mark.parametrize("stored", ['[[1,2,"<script>",4]]', "not json", '{"x0": 1}', "[[1, 2, 3]]",
                                    "[[1, 2, 3, 4.5]]", "[[0, 0, 1e400, 5]]", "[[1, 2, 100000000000000000000000, 4]]",
                                    "[[5, 5, 1, 1]]", "[[-3, 1, 4, 5]]", "[[true, 1, 4, 5]]", "[null]", "[]", "", "[" * 100000])
def test_a_hostile_or_malformed_box_record_draws_no_rect_and_no_error(app, station, stored):
    item = station.flagged[0]
    _set_region(station, item, stored)
    client = logged_in(app)
    for url in (f"/?at={item['image_id']}", f"/verdict/{item['image_id']}"):
        answer = client.get(url)
        assert answer.status_code == 200, url
        html = answer.data.decode()
        assert 'id="img-boxes"' not in html and "<script>" not in html, url  # no overlay at all, nothing unescaped
        assert re.search(r"<button type=\"button\" data-boxes disabled", html), url
