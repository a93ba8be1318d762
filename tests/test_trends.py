"""Trends (pass rate per day, P(abnormal) per week, the anomaly types' Pareto, overturned verdicts), the audit of
normal verdicts (`inspector review sample`) and the miss rate it estimates, and the abnormal-rate alarm against its
trailing baseline: on a real SQLite store filled by the store's own writers, over two ISO weeks."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cli_errors import error_of
from inspector.base.configfile import load_config
from inspector.cli import cli
from inspector.data.metrics import wilson_interval
from inspector.loop.review import record_review
from inspector.loop.trends import AbnormalCheck, AuditEstimate, abnormal_check, gather_trends
from inspector.store.schema import images, rejections, verdicts
from inspector.store.store import open_store
from tests.store_rows import record_rejection, record_verdict

MODEL = "ab" * 32
EVIL_KIND = "<script>alert(1)"  # a plant's own type, as a hostile reviewer types it
# name, day of March 2026 (local time), the model's verdict, P(abnormal). 6 and 7 March are ISO week 10 (a Friday
# and a Saturday), 9 March a Monday of week 11; nothing on the 8th.
LINE = [("n1", 6, "normal", 0.10), ("n2", 6, "normal", 0.12), ("n3", 6, "normal", 0.15), ("a1", 6, "abnormal", 0.90),
        ("n4", 7, "normal", 0.20), ("r1", 7, "rescan", None),
        *[(f"n{5 + i}", 9, "normal", 0.30 + 0.02 * i) for i in range(5)],
        ("a2", 9, "abnormal", 0.80), ("a3", 9, "abnormal", 0.85), ("a4", 9, "abnormal", 0.70)]
REVIEWS = [("a1", "abnormal", ["scratch", "bubble"]), ("a2", "abnormal", ["scratch"]),
           ("a3", "abnormal", ["smudge", "scratch"]), ("a4", "normal", [])]  # a4: a false alarm


def at(day: int, hour: int = 10) -> datetime:
    return datetime(2026, 3, day, hour).astimezone()  # local wall time


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def fill_line(url: str, reviews=REVIEWS) -> None:
    """The line above, a duplicate file of n1 and a rejected file on the 7th, and the reviews."""
    with open_store(url) as store:
        store.record_model(MODEL, "models/detector.safetensors", json.dumps({"method": "global"}))
        for i, (name, day, verdict, p) in enumerate(LINE):
            record_verdict(store, f"/cap/{name}.tif", sha(name), 10, i, MODEL, p, verdict,
                           "blurred" if verdict == "rescan" else None, 0.5, "global")
            with store.write() as conn:
                conn.execute(sa.update(images).where(images.c.sha256 == sha(name)).values(first_seen=at(day)))
                conn.execute(sa.update(verdicts).where(verdicts.c.sha256 == sha(name)).values(created_at=at(day)))
        record_verdict(store, "/cap/n1-again.tif", sha("n1"), 10, 99, MODEL, 0.10, "normal", None, 0.5, "global")
        record_rejection(store, "/cap/x1.tif", None, 0, 1, "not_an_image", "the file is empty")
        with store.write() as conn:
            conn.execute(sa.update(images).where(images.c.path == "/cap/n1-again.tif").values(first_seen=at(6, 11)))
            conn.execute(sa.update(rejections).values(created_at=at(7)))
        for name, label, kinds in reviews:
            record_review(store, sha(name), label, kinds, "ann")


@pytest.fixture
def line(tmp_path):
    (tmp_path / "config.toml").write_text('[database]\nurl = "sqlite:///station.db"\n[watch]\ncapture_dir = "capture"\n'
                                          '[state]\ndir = "var"\n')
    cfg = load_config(tmp_path / "config.toml")
    fill_line(cfg.database.url)
    return tmp_path, cfg


def run(tmp_path, *args: str):
    return CliRunner().invoke(cli, [*args, "--config", str(tmp_path / "config.toml")])


MARCH = dict(since=at(1, 0), until=at(15, 0))


# ---- the series ------------------------------------------------------------------------------------------------
def test_the_series_count_each_electrode_once_per_local_day_and_iso_week(line):
    tmp_path, cfg = line
    with open_store(cfg.database.url) as store:
        data = gather_trends(store, **MARCH)
    assert data.outcomes == 16  # 14 files scored, the duplicate file, the rejected one
    assert [d["day"] for d in data.days] == [f"2026-03-{d:02d}" for d in range(1, 15)]
    by_day = {d["day"]: (d["total"], d["normal"], d["pass_rate"]) for d in data.days if d["total"]}
    # the duplicate file is not an electrode; a rescan and a rejected file did not pass; the 8th has no bar
    assert by_day == {"2026-03-06": (4, 3, 0.75), "2026-03-07": (3, 1, 1 / 3), "2026-03-09": (8, 5, 0.625)}
    assert [(w["week"], sorted(w["scores"])) for w in data.weeks] == [
        ("2026-W10", [0.10, 0.12, 0.15, 0.20, 0.90]),
        ("2026-W11", pytest.approx([0.30, 0.32, 0.34, 0.36, 0.38, 0.70, 0.80, 0.85]))]
    assert data.threshold == 0.5
    assert [(b["kind"], b["count"]) for b in data.pareto] == [("scratch", 3), ("bubble", 1), ("smudge", 1)]
    assert [b["cumulative"] for b in data.pareto] == pytest.approx([0.6, 0.8, 1.0])
    assert [(w["week"], w["reviewed"], w["false_alarms"], w["misses"], w["share"]) for w in data.overturned] == [
        ("2026-W10", 1, 0, 0, 0.0), ("2026-W11", 3, 1, 0, pytest.approx(1 / 3))]
    assert data.audit == AuditEstimate(0, 0, 0)


def test_a_withdrawn_review_leaves_the_pareto_and_the_overturned_share(line):
    tmp_path, cfg = line
    with open_store(cfg.database.url) as store:
        store.reviews.withdraw(store.reviews.newest(sha("a4"))["id"], "ann", "")
        store.reviews.withdraw(store.reviews.newest(sha("a1"))["id"], "ann", "")
        data = gather_trends(store, **MARCH)
    assert [(b["kind"], b["count"]) for b in data.pareto] == [("scratch", 2), ("smudge", 1)]
    assert [(w["week"], w["reviewed"], w["share"]) for w in data.overturned] == [("2026-W11", 2, 0.0)]


# ---- the report ------------------------------------------------------------------------------------------------
def png_size(src: str) -> tuple[int, int]:
    import base64

    assert src.startswith("data:image/png;base64,")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img.shape[1], img.shape[0]


def table_rows(html: str, table_id: str) -> list[list[str]]:
    body = re.search(rf"<table id='{table_id}'>(.*?)</table>", html, re.S).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)][1:]


def test_the_report_draws_the_trends_of_its_period(line):
    tmp_path, cfg = line
    result = run(tmp_path, "export", "--format", "html", "--out", "report.html", "--since", "2026-03-01",
                 "--until", "2026-03-15")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    assert "<a href='#trends'>Trends</a>" in html and "<h2 id='trends'>Trends</h2>" in html
    for name in ("pass-rate", "scores", "pareto", "overturned"):
        src = re.search(rf"id='trend-{name}' alt='[^']*' src='([^']+)'", html).group(1)
        width, height = png_size(src)
        assert (width, height) == (630, 270), name  # 7 x 3 inches at 90 dpi
    assert table_rows(html, "pareto") == [["scratch", "3", "60.0%"], ["bubble", "1", "80.0%"],
                                          ["smudge", "1", "100.0%"]]
    assert table_rows(html, "overturned") == [["2026-W10", "1", "0", "0", "0.0%"], ["2026-W11", "3", "1", "0", "33.3%"]]
    assert "no audits of normal verdicts" in html
    assert "no verdicts in this period" not in html


def test_an_anomaly_type_from_a_review_is_escaped_in_the_report(line):
    tmp_path, cfg = line
    with open_store(cfg.database.url) as store:
        record_review(store, sha("a2"), "abnormal", [EVIL_KIND], "ann")
    assert run(tmp_path, "export", "--format", "html", "--out", "r.html", "--since", "2026-03-01").exit_code == 0
    html = (tmp_path / "r.html").read_text()
    assert "<script>" not in html
    assert table_rows(html, "pareto")[:2] == [["scratch", "2", "40.0%"], ["&lt;script&gt;alert(1)", "1", "60.0%"]]


def test_a_period_without_verdicts_says_so_instead_of_empty_plots(line):
    tmp_path, cfg = line
    result = run(tmp_path, "export", "--format", "html", "--out", "empty.html", "--since", "2026-04-01",
                 "--until", "2026-04-08")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "empty.html").read_text()
    assert "<p class='muted' id='trends-empty'>no verdicts in this period: nothing to draw.</p>" in html
    assert "id='trend-" not in html


def test_the_report_draws_its_trends_from_its_own_rows_as_gather_trends_reads_them(line, monkeypatch):
    """The report hands gather_trends the outcomes it read (collect_outcomes): every series equals the store's own
    queries, over open and closed periods, per station, with a pending file, a duplicate file, a rejection, a
    withdrawn review, a review of a rescan and of a pending file; only the audits are read again."""
    from inspector.loop import trends
    from inspector.loop.export import render_report
    from inspector.loop.report import collect_outcomes

    tmp_path, cfg = line
    with open_store(cfg.database.url) as store:
        store.reviews.withdraw(store.reviews.newest(sha("a4"))["id"], "ann", "")
        for name, label, kinds in [("n5", "abnormal", ["line"]), ("r1", "normal", []), ("n3", "abnormal", ["dent"]),
                                   ("n1", "normal", []), ("n4", "abnormal", ["crack"])]:
            record_review(store, sha(name), label, kinds, "ann")
        record_rejection(store, "/cap/n4-cut.tif", sha("n4"), 5, 3, "not_an_image", "truncated")  # a reviewed content
        store.audits.request([sha("n2"), sha("n6")], "qa", 1)
        record_review(store, sha("n6"), "abnormal", ["scratch"], "ann")
        with store.write() as conn:
            conn.execute(sa.update(images).where(images.c.path == "/cap/n3.tif").values(verdict_id=None))  # pending
            conn.execute(sa.update(images).values(station="west"))
            conn.execute(sa.update(images).where(images.c.sha256.in_([sha("n1"), sha("a2"), sha("r1")]))
                         .values(station="east"))
            conn.execute(sa.update(rejections).values(station="east", created_at=at(7)))
        periods = [MARCH, {}, dict(since=at(7, 0)), dict(until=at(9, 0)), dict(since=at(6, 10), until=at(6, 11)),
                   dict(since=at(4, 0), until=at(5, 0))]
        for period in periods:
            for station in (None, "east", "west", "north"):
                rows = collect_outcomes(store, cfg, station=station, **period)
                assert gather_trends(store, station=station, rows=rows, **period) == \
                    gather_trends(store, station=station, **period), (period, station)
        expected = gather_trends(store, **MARCH)
        drawn = []

        def spy(*args, **kwargs):
            drawn.append(gather(*args, **kwargs))
            return drawn[-1]

        def refuse(*args, **kwargs):
            raise AssertionError("the report read its trends' rows twice")

        gather = trends.gather_trends
        monkeypatch.setattr(trends, "gather_trends", spy)
        for name in ("outcomes", "scores", "reviewed"):
            monkeypatch.setattr(store.trends, name, refuse)
        html, count = render_report(store, cfg, "html", **MARCH)
    assert count == 17 and drawn == [expected]
    assert expected.outcomes == 17 and expected.audit == AuditEstimate(2, 1, 1)
    assert ("line", 1) in [(b["kind"], b["count"]) for b in expected.pareto]


# ---- the audit of normal verdicts ------------------------------------------------------------------------------
def picks_of(output: str) -> list[str]:
    return re.findall(r"\b([0-9a-f]{12})\b", output)


def test_review_sample_picks_n_distinct_unreviewed_normals_reproducibly(line, tmp_path):
    root, cfg = line
    with open_store(cfg.database.url) as store:
        record_review(store, sha("n5"), "normal", [], "ann")  # reviewed already: never an audit pick
    normals = {sha(n)[:12]: n for n, _, verdict, _ in LINE if verdict == "normal" and n != "n5"}
    args = ("review", "sample", "--normal", "4", "--seed", "7", "--since", "2026-03-01", "--until", "2026-03-15")
    dry = run(root, *args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    picks = picks_of(dry.output)
    assert len(picks) == len(set(picks)) == 4 and set(picks) <= set(normals)
    assert dry.output.splitlines()[-1] == "4 of 8 normal verdict(s) would be requested (dry run); seed 7"
    assert picks_of(run(root, *args, "--dry-run").output) == picks  # the same seed, the same picks
    other = fill_other(tmp_path / "other")  # another database with the same line: the same draw
    assert picks_of(run(other, *args, "--dry-run").output) == picks
    assert picks_of(run(root, *args[:-2], "--seed", "8", "--dry-run").output) != picks

    done = run(root, *args, "--by", "qa")
    assert done.exit_code == 0, done.output
    assert picks_of(done.output) == picks
    assert done.output.splitlines()[-1] == "4 of 8 normal verdict(s) requested (4 new); seed 7"
    with open_store(cfg.database.url) as store:
        queue = store.reviews.pending()
        again = store.audits.candidates(**MARCH)
    audited = [q for q in queue if q["verdict"] == "normal"]
    assert sorted(q["sha256"][:12] for q in audited) == sorted(picks)  # they wait in the review queue
    assert {q["verdict"] for q in queue} == {"normal", "rescan"}  # beside the rescan nobody reviewed
    assert len(again) == 4 and not {c["sha256"][:12] for c in again} & set(picks)  # never asked twice

    too_many = run(root, "review", "sample", "--normal", "5", "--since", "2026-03-01")
    assert too_many.exit_code == 1
    assert error_of(too_many) == ("only 4 normal verdict(s) without a review or an audit request in this period; "
                                  "ask for at most 4 or widen --since/--until")
    with open_store(cfg.database.url) as store:
        assert store.audits.results().requested == 4  # nothing requested by the refused draw


def fill_other(root):
    root.mkdir()
    (root / "config.toml").write_text('[database]\nurl = "sqlite:///station.db"\n')
    cfg = load_config(root / "config.toml")
    fill_line(cfg.database.url)
    with open_store(cfg.database.url) as store:
        record_review(store, sha("n5"), "normal", [], "ann")
    return root


def test_the_audits_reviews_estimate_the_miss_rate_with_a_wilson_interval(line):
    tmp_path, cfg = line
    assert run(tmp_path, "review", "sample", "--normal", "3", "--seed", "1", "--since", "2026-03-01").exit_code == 0
    with open_store(cfg.database.url) as store:
        picked = [q["sha256"] for q in store.reviews.pending() if q["verdict"] == "normal"]
        assert len(picked) == 3
        record_review(store, picked[0], "abnormal", ["agglomerate"], "ann")  # a defect the model passed
        record_review(store, picked[1], "normal", [], "ann")
        found = store.audits.results()
        in_march = gather_trends(store, **MARCH)
    assert found.requested == 3 and (found.reviewed, found.abnormal) == (2, 1)
    assert in_march.audit == AuditEstimate(3, 2, 1)
    assert in_march.audit.interval == pytest.approx((0.0945, 0.9055), abs=1e-4)
    assert ("agglomerate", 1) in [(b["kind"], b["count"]) for b in in_march.pareto]
    assert sum(w["misses"] for w in in_march.overturned) == 1

    status = run(tmp_path, "status")
    assert status.exit_code == 0, status.output
    assert ("missed         50.0% of normal verdicts are defects the model missed (1 of 2 audited were abnormal; "
            "95% Wilson interval 9.5% to 90.5%); 1 audit(s) wait for review") in status.output
    as_json = json.loads(run(tmp_path, "status", "--format", "json").output)
    assert as_json["audit"]["miss_rate"] == 0.5 and as_json["audit"]["interval"] == pytest.approx([0.0945, 0.9055],
                                                                                                  abs=1e-4)


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Table I: 0/10 -> 0 to 0.2775; 1/29 -> 0.0061 to 0.1718; 81/263 -> 0.2553 to 0.3662
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 0) is None


# ---- the alarm against the trailing baseline --------------------------------------------------------------------
@pytest.mark.parametrize("today, abnormal, alert", [(100, 20, True), (50, 6, False), (100, 10, False),
                                                     (10, 10, False)])
def test_the_alarm_needs_today_beyond_chance_above_twice_the_baseline(today, abnormal, alert):
    check = AbnormalCheck(today, abnormal, 700, 35)  # a 5% baseline
    assert check.alert is alert
    assert check.describe().endswith("ABOVE the baseline beyond chance") is alert


def test_the_alarm_counts_today_and_the_seven_days_before_from_the_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'line.db'}"
    now = datetime.now(timezone.utc)
    today = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0).astimezone(timezone.utc)
    with open_store(url) as store:
        store.record_model(MODEL, "m", "{}")
        for i in range(100):  # 5% abnormal over the last week, then 30% today
            when, abnormal = (today - timedelta(days=1 + i % 7), i % 20 == 0) if i < 80 else (now, i % 10 < 3)
            name = f"e{i}"
            record_verdict(store, f"/cap/{name}.tif", sha(name), 1, i, MODEL, 0.9 if abnormal else 0.1,
                           "abnormal" if abnormal else "normal", None, 0.5, "global")
            with store.write() as conn:
                conn.execute(sa.update(images).where(images.c.sha256 == sha(name)).values(first_seen=when))
        check = abnormal_check(store, store.status_counts(today)["verdicts_today"], today)
        quiet = AbnormalCheck(check.today, check.today_abnormal, 0, 0)
    assert (check.today, check.today_abnormal, check.baseline, check.baseline_abnormal) == (20, 6, 80, 4)
    assert check.alert and not quiet.alert
    assert check.describe() == ("30.0% today (6 of 20), 5.0% over the last 7 days (4 of 80); ABOVE the baseline "
                                "beyond chance")
    assert quiet.describe().startswith("30.0% today (6 of 20), no baseline yet")


# ---- the review station ----------------------------------------------------------------------------------------
def test_the_status_page_shows_the_trends_the_baseline_and_an_audit_in_the_queue(tmp_path):
    from inspector.web.app import create_app
    from web_station import build_station, logged_in

    st = build_station(tmp_path / "station", flagged=4, normal=3, scale=0.1)
    normal = st.normal[0]
    with open_store(st.cfg.database.url, station=st.cfg.station_name) as store:
        with store.write() as conn:  # today, whenever the test runs (build_station dates them an hour ago)
            conn.execute(sa.update(images).values(first_seen=datetime.now(timezone.utc)))
        store.audits.request([normal["sha256"]], "qa", 1)
        client = logged_in(create_app(st.cfg, store))
        page = client.get("/status").data.decode()
        panel = client.get("/status/panel").data.decode()
        queue = client.get(f"/?at={normal['image_id']}").data.decode()
    assert '<section class="trends" id="status-trends">' in page and "The last 8 weeks" in page
    src = re.search(r"id='trend-pass-rate' alt='[^']*' src='([^']+)'", page).group(1)
    assert png_size(src) == (630, 270)
    assert "id='trend-scores'" in page and "id='trend-pareto'" not in page  # nobody reviewed yet
    assert "no anomaly type recorded in the reviews of this period." in page
    # 7 verdicts today, 3 abnormal (a rescan is a verdict too); nothing before: no baseline, no alarm
    assert re.search(r'<div class="tile " title="42.9% today \(3 of 7\), no baseline yet[^"]*">', panel)
    assert '<span id="tile-baseline">no baseline yet</span>' in panel
    assert ('<dd id="audit-estimate">1 normal verdict(s) picked for an audit, none reviewed yet</dd>') in panel
    assert '<span class="badge normal" id="verdict">normal</span>' in queue and 'id="audit-note"' in queue


# ---- both databases, and schema 7 -------------------------------------------------------------------------------
def test_trends_and_audits_on_sqlite_and_postgresql_and_schema_5_upgrades_to_7(database_url):
    from inspector.loop.audit import sample_normals
    from inspector.store.schema import SCHEMA_VERSION, alembic_command, alembic_revision, schema_info

    fill_line(database_url)
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:  # back to schema 5, as inspector before the audits left it
        alembic_command(conn, "downgrade", "0005")
        conn.execute(sa.update(schema_info).values(version=5))
    with engine.connect() as conn:
        assert alembic_revision(conn) == "0005" and "audits" not in sa.inspect(conn).get_table_names()
    engine.dispose()
    with open_store(database_url) as store:
        assert store.schema_action == "migrated" and store.schema_version() == SCHEMA_VERSION == 7
        drawn = sample_normals(store, 2, seed=3, requested_by="qa", **MARCH)
        assert drawn.requested == 2 and drawn.candidates == 9
        record_review(store, drawn.picks[0]["sha256"], "abnormal", ["line"], "ann")
        data = gather_trends(store, **MARCH)
    assert [(d["day"], d["total"], d["normal"]) for d in data.days if d["total"]] == [
        ("2026-03-06", 4, 3), ("2026-03-07", 3, 1), ("2026-03-09", 8, 5)]
    assert [(b["kind"], b["count"]) for b in data.pareto] == [("scratch", 3), ("bubble", 1), ("line", 1),
                                                              ("smudge", 1)]
    assert data.audit == AuditEstimate(2, 1, 1)
