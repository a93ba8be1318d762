"""Issue 26, cases 9 and 10: what others typed or named reaches the pages and the spreadsheets inert. Names with
control and bidirectional-override characters are shown with those characters visible on every page, and no
cell of a CSV export starts a formula."""

from __future__ import annotations

import csv
import io
import re

import pytest
from click.testing import CliRunner

from inspector.cli import cli
from inspector.loop.review import record_review
from inspector.store.store import open_store
from inspector.web.app import create_app
from store_rows import record_verdict
from web_station import MODEL, build_station, logged_in


BIDI = "ok-\u202efit.lamron.tif"  # shows as "ok-normal.tif" where the override works
HIDDEN = ("\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u061c")
FORMULAS = ("=2+5", "@sum(1+1)", "+cmd|' /C calc'!A0", "-2+3")


@pytest.fixture
def station(tmp_path):
    return build_station(tmp_path / "station", flagged=1, normal=0, scale=0.05)


def test_bidi_and_control_characters_in_names_are_shown_visibly_on_every_page(station):
    with open_store(station.cfg.database.url, station="line1") as store:
        name = f"/srv/capture/{BIDI}\u2066x\u2069\u200f.tif"
        record_verdict(store, name, "ab" * 32, 10, 1, MODEL, 0.9, "abnormal", None, 0.5, "global")
        image_id = max(store.image_detail(i) and i or 0 for i in range(1, 5))
        client = logged_in(create_app(station.cfg, store))
        for url in (f"/?at={image_id}", f"/verdict/{image_id}", "/verdicts", "/reports/view?since=1d"):
            html = client.get(url).data.decode()
            assert "ok-\\u202efit.lamron.tif" in html, url
            hidden = [f"U+{ord(c):04X}" for c in HIDDEN if c in html]
            assert not hidden, f"{url} holds {hidden} unescaped"


def test_no_csv_cell_starts_a_formula(station, tmp_path):
    item = station.flagged[0]
    with open_store(station.cfg.database.url, station="line1") as store:
        record_review(store, item["sha256"], "abnormal", list(FORMULAS), "ann", "=HYPERLINK(\"http://x\")")
        client = logged_in(create_app(station.cfg, store))
        web = client.get("/reports/export.csv").data.decode()
    out = tmp_path / "outcomes.csv"
    exported = CliRunner().invoke(cli, ["export", "--format", "csv", "--since", "1d", "--out", str(out),
                                        "--config", str(station.config)])
    assert exported.exit_code == 0, exported.output
    for where, text in (("/reports/export.csv", web), ("inspector export", out.read_text())):
        rows = list(csv.DictReader(io.StringIO(text[text.index("time,"):])))
        flagged = next(r for r in rows if r["sha256"] == item["sha256"])
        assert flagged["review_anomalies"], where
        cells = [c for r in rows for c in r.values() if c]
        starting = [c for c in cells if re.match(r"[=+\-@\t\r]", c) and not re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", c)]
        assert not starting, f"{where}: cells that start a formula: {starting}"
        assert flagged["review_anomalies"].startswith("'=2+5;"), where  # kept, readable, inert
