"""inspector export: CSV/JSON rows from a known database, and the self-contained, escaped HTML report."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

import sqlalchemy as sa
import tifffile
from click.testing import CliRunner

from cli_errors import error_of
from inspector.cli import cli
from inspector.base.configfile import load_config
from inspector.base.errors import InspectorError
from inspector.imaging.read import file_sha256
from inspector.loop.export import export_report
from inspector.loop.report import bundle_of, collect_outcomes, read_model_header
from inspector.store.schema import images, models, reviews
from inspector.store.store import open_store
from tests.store_rows import record_rejection, record_verdict

MODEL = "ab" * 32
EVIL_DIR = "<script>alert(1)<"  # with the file below, the path reads .../<script>alert(1)</script>.tif
EVIL_FILE = "script>.tif"
META = {"method": "global", "window": [1000, 3000], "input_size": [64, 32], "threshold": 0.5,
        "threshold_source": "default 0.5", "freeze": "paper", "weights": "none", "trained": True,
        "clahe": {"clip_limit": 2.0, "tile_grid": 8}, "metrics": {"epochs": 2}}


def write_tiff(path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tifffile.imwrite(path, rng.integers(1000, 3000, size=(96, 48), dtype=np.uint16))
    return path


@pytest.fixture
def station(tmp_path):
    """A config, a capture folder with real TIFFs, and a database with every kind of outcome."""
    cap = tmp_path / "capture"
    (tmp_path / "var").mkdir()
    (tmp_path / "config.toml").write_text('[database]\nurl = "sqlite:///station.db"\n[watch]\ncapture_dir = "capture"\n'
                                          '[state]\ndir = "var"\n[model]\npath = "models/detector.safetensors"\n')
    normal = write_tiff(cap / "lineA" / "n1.tif", 1)
    abnormal = write_tiff(cap / "lineA" / "a1.tif", 2)
    evil = write_tiff(cap / EVIL_DIR / EVIL_FILE, 3)
    missing = cap / "lineB" / "gone.tif"  # scored, then deleted: the report shows a placeholder
    shas = {p: file_sha256(p) for p in (normal, abnormal, evil)}
    heat = tmp_path / "var" / "heatmaps" / shas[abnormal][:2] / f"{shas[abnormal]}.png"  # as the daemon names it
    heat.parent.mkdir(parents=True)
    cv2.imwrite(str(heat), np.full((96, 48, 3), (0, 0, 255), np.uint8))
    shas[missing] = "9" * 64
    cfg = load_config(tmp_path / "config.toml")
    with open_store(cfg.database.url) as store:
        store.record_model(MODEL, "models/detector.safetensors", json.dumps(META))
        record_verdict(store, str(normal), shas[normal], 10, 1, MODEL, 0.1, "normal", None, 0.5, "global", 0.1, 0.2)
        record_verdict(store, str(abnormal), shas[abnormal], 10, 1, MODEL, 0.9, "abnormal", None, 0.5, "global", 0.1, 0.2)
        record_verdict(store, str(evil), shas[evil], 10, 1, MODEL, 0.8, "abnormal", None, 0.5, "global", 0.1, 0.2)
        record_verdict(store, str(missing), shas[missing], 10, 1, MODEL, None, "rescan", "blurred: variance 1.0", 0.5,
                             "global", 0.1, 0.2)
        record_rejection(store, str(cap / "lineB" / "empty.tif"), None, 0, 1, "not_an_image", "the file is empty")
        store.set_heatmap(shas[abnormal], MODEL, str(heat))
        now = datetime.now(timezone.utc)
        with store.write() as conn:
            for who, label in (("ann", "normal"), ("bob", "abnormal")):  # the second supersedes the first
                conn.execute(sa.insert(reviews).values(sha256=shas[abnormal], label=label, anomalies="scratch",
                                                       reviewer=who, note="", model_verdict="abnormal",
                                                       model_sha256=MODEL, created_at=now))
            old = now - timedelta(days=3)  # the normal image was seen three days ago
            conn.execute(sa.update(images).where(images.c.sha256 == shas[normal]).values(first_seen=old))
    return tmp_path, cfg, shas, {"normal": normal, "abnormal": abnormal, "evil": evil, "missing": missing}


def run(tmp_path, *args):
    return CliRunner().invoke(cli, [*args, "--config", str(tmp_path / "config.toml")])


def test_csv_has_one_row_per_outcome_with_review_status(station):
    tmp_path, cfg, shas, files = station
    result = run(tmp_path, "export", "--format", "csv", "--out", "out.csv")
    assert result.exit_code == 0, result.output
    assert result.output == "wrote 5 outcome(s) to out.csv (csv)\n"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 5
    a = by_path[str(files["abnormal"])]
    assert (a["outcome"], a["review_status"], a["review_label"], a["reviewed_by"], a["review_count"]) == \
        ("abnormal", "reviewed", "abnormal", "bob", "2")
    assert a["bundle"] == "lineA" and a["heatmap_path"].endswith(f"{a['sha256']}.png")
    assert by_path[str(files["evil"])]["review_status"] == "pending"
    assert by_path[str(files["missing"])]["outcome"] == "rescan"
    assert by_path[str(files["missing"])]["review_status"] == "pending"
    assert by_path[str(files["normal"])]["review_status"] == "not needed"
    rejected = by_path[str(tmp_path / "capture" / "lineB" / "empty.tif")]
    assert (rejected["kind"], rejected["outcome"], rejected["reason"]) == \
        ("rejection", "rejected", "not_an_image: the file is empty")
    assert bytes.fromhex(a["path_raw_hex"]) == os.fsencode(files["abnormal"])


def test_json_and_since_filter(station):
    tmp_path, cfg, shas, files = station
    result = run(tmp_path, "export", "--format", "json", "--out", "out.json", "--since", "1d")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["kind"] == "inspector-export" and data["since"] is not None
    paths = {r["path"] for r in data["outcomes"]}
    assert str(files["normal"]) not in paths  # seen three days ago
    assert len(data["outcomes"]) == 4
    result = run(tmp_path, "export", "--format", "json", "--out", "old.json", "--until", "2d")
    assert [r["path"] for r in json.loads((tmp_path / "old.json").read_text())["outcomes"]] == [str(files["normal"])]


def test_export_errors_are_specific(station):
    tmp_path, cfg, shas, files = station
    result = run(tmp_path, "export", "--format", "csv", "--out", "nowhere/out.csv")
    assert result.exit_code == 1
    assert error_of(result) == "folder nowhere for --out does not exist; create it first"
    result = run(tmp_path, "export", "--format", "csv", "--out", "x.csv", "--since", "1h", "--until", "2h")
    assert result.exit_code == 1 and "is not after --since" in error_of(result)
    result = run(tmp_path, "export", "--format", "pdf", "--out", "x.pdf")
    assert result.exit_code == 2 and "'pdf' is not one of 'csv', 'json', 'html'" in result.output
    result = run(tmp_path, "export", "--format", "csv", "--out", "x.csv", "--since", "last tuesday")
    assert result.exit_code == 2 and "'last tuesday' is not a time" in result.output
    assert not (tmp_path / "x.csv").exists()


def write_cv_result(state_dir, tmp_path):
    """A real cv JSON written by engineer E's crossval functions (no torch: made-up fold scores)."""
    from inspector.data import metrics
    from inspector.learn.crossval import CvResult, FoldResult, MethodResult, result_to_json, run_settings, save_run
    from inspector.data.dataset import leave_one_bundle_out
    from inspector.data.synth import synthesize

    ds = synthesize(tmp_path / "cvset", bundles=3, per_bundle=4, abnormal_rate=0.5, scale=0.02, progress=False)
    rng = np.random.default_rng(0)
    methods = {}
    for m in ("naive", "global"):
        res = MethodResult(m, oof=np.clip(ds.y * 0.6 + rng.random(len(ds)) * 0.5, 0, 1))
        for fold in leave_one_bundle_out(ds.samples):
            counts = metrics.counts_at_threshold(ds.y[fold.test_idx], res.oof[fold.test_idx], 0.5)
            res.folds.append(FoldResult(fold.bundle, counts, None, [int(i) for i in fold.test_idx]))
        methods[m] = res
    data = result_to_json(CvResult(ds, methods, run_settings(load_config(None), list(methods), True),
                                   ds.fingerprint()))
    save_run(data, state_dir)
    return data


def decoded_images(page: str) -> list[tuple[int, int]]:
    """Decode every embedded image, so a broken data: URI fails the test."""
    sizes = []
    for uri in re.findall(r'src="([^"]*)"', page):
        assert uri.startswith("data:image/png;base64,"), uri[:80]
        img = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert img is not None
        sizes.append(img.shape[:2])
    return sizes


def test_html_is_self_contained_escaped_and_complete(station):
    tmp_path, cfg, shas, files = station
    cv = write_cv_result(cfg.state.dir, tmp_path)
    result = run(tmp_path, "export", "--format", "html", "--out", "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    for section in ("totals", "flagged", "cv", "model"):
        assert f"id='{section}'" in page
    # escaped: the file name shows as text, never as markup
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.tif" in page
    # self-contained: nothing fetched from outside
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert all(u.startswith("data:") for u in re.findall(r'src="([^"]*)"', page))
    sizes = decoded_images(page)
    # 2 thumbnails (abnormal and evil; the rescan file is gone), 1 heat map, ROC, confusion matrix
    assert len(sizes) == 5
    assert sum(1 for h, w in sizes if (h, w) == (96, 48)) == 3  # small images are never enlarged
    assert "source image unavailable" in page and "gone.tif" in page
    assert "no heat map" in page
    # Table 1 from the newest cv JSON: every held-out bundle and the Overall row, per method
    for bundle in cv["dataset"]["bundles"]:
        assert f"<td class='l'>{bundle}</td>" in page
    ba = cv["methods"]["global"]["pooled"]["balanced_accuracy"]
    assert f"{100 * ba:.2f}" in page
    # review status and the model
    assert "bob" in page and "pending" in page
    assert "default 0.5" in page and MODEL[:12] in page


def test_totals_per_day_and_bundle(station):
    tmp_path, cfg, shas, files = station
    with open_store(cfg.database.url, readonly=True) as store:
        rows = collect_outcomes(store, cfg)
    from inspector.loop.report import local_day, summarize

    per_bundle = {s["group"]: s for s in summarize(rows, lambda r: r["bundle"])}
    assert per_bundle["lineA"]["total"] == 2 and per_bundle["lineA"]["pass_rate"] == 0.5
    assert per_bundle["lineB"]["rejected"] == 1 and per_bundle["lineB"]["rescan"] == 1
    assert per_bundle["lineB"]["pass_rate"] == 0.0
    days = summarize(rows, local_day)
    assert len(days) == 2 and sum(d["total"] for d in days) == 5


def test_a_duplicate_file_counts_once_per_electrode(station):
    """The same abnormal scan saved again under another name: one electrode, one duplicate file, in the totals and
    in the flagged list, as `inspector status` counts them."""
    import shutil

    tmp_path, cfg, shas, files = station
    copy = files["abnormal"].with_name("a1-again.tif")
    shutil.copy(files["abnormal"], copy)
    with open_store(cfg.database.url) as store:
        assert record_verdict(store, str(copy), shas[files["abnormal"]], 10, 2, MODEL, 0.9, "abnormal", None, 0.5,
                              "global") == "duplicate"
        rows = collect_outcomes(store, cfg)
        from inspector.loop.report import summarize
        from inspector.loop.report_html import section_flagged

        lineA = {s["group"]: s for s in summarize(rows, lambda r: r["bundle"])}["lineA"]
        assert (lineA["total"], lineA["abnormal"], lineA["duplicates"], lineA["pass_rate"]) == (2, 1, 1, 0.5)
        flagged = section_flagged(store, rows, cfg)
    assert "Abnormal and rescan (3)" in flagged and "a1-again.tif" not in flagged
    assert "1 duplicate file(s) of these electrodes not listed again" in flagged


def test_status_and_the_report_count_and_name_the_model_alike(station):
    """One count per electrode and one "model in use" for `inspector status` and the report: a duplicate file and
    a rescore by another model change neither's answer apart from the other's."""
    import shutil

    from inspector.loop.report import model_in_use, summarize
    from inspector.store.store import RescoreRecord, Verdict

    tmp_path, cfg, shas, files = station
    copy = files["abnormal"].with_name("a1-again.tif")
    shutil.copy(files["abnormal"], copy)
    other = "cd" * 32
    with open_store(cfg.database.url) as store:
        record_verdict(store, str(copy), shas[files["abnormal"]], 10, 2, MODEL, 0.9, "abnormal", None, 0.5, "global")
        store.record_outcomes([RescoreRecord(Verdict(shas[files["normal"]], other, 0.7, "abnormal", None, 0.5,
                                                     "global"))])
        status = store.status_counts(datetime.now(timezone.utc) - timedelta(days=30))
        (every,) = summarize(collect_outcomes(store, cfg), lambda r: "all")
        named = model_in_use(store, cfg)["last_used"]
    for verdict in ("normal", "abnormal", "rescan"):
        assert every[verdict] == status["verdicts_total"].get(verdict, 0)
    assert every["duplicates"] == status["duplicates_total"] == 1
    assert every["rejected"] == sum(status["rejections_total"].values()) == 1
    assert every["total"] == 5 and every["pass_rate"] == 1 / 5
    assert named["sha256"] == status["model"]["sha256"] == MODEL  # the rescore's model scored no capture


def test_bundle_rules(tmp_path):
    cap = tmp_path / "capture"
    assert bundle_of(str(cap / "b7" / "x.tif"), "subfolder", cap) == "b7"
    assert bundle_of(str(cap / "line3" / "b7" / "x.tif"), "subfolder", cap) == "line3/b7"
    assert bundle_of(str(cap / "e_B12_0001.tif"), r"regex:_(B\d+)_", cap) == "B12"
    assert bundle_of(str(cap / "nomatch.tif"), r"regex:_(B\d+)_", cap) == "unmatched"


def test_read_model_header_without_torch(tmp_path):
    header = json.dumps({"__metadata__": {"inspector": json.dumps(META)}}).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert read_model_header(path)["method"] == "global"
    path.write_bytes(b"\x00" * 4)
    assert read_model_header(path) is None
    assert read_model_header(tmp_path / "absent") is None


def test_export_report_refuses_a_folder_as_out(station):
    tmp_path, cfg, shas, files = station
    with open_store(cfg.database.url, readonly=True) as store:
        with pytest.raises(InspectorError, match="is a folder"):
            export_report(store, cfg, "csv", tmp_path)


def test_html_lists_each_flagged_verdicts_boxes_beside_its_heat_map(station):
    tmp_path, cfg, shas, files = station
    with open_store(cfg.database.url) as store, store.write() as conn:
        for sha, peak, boxes in ((shas[files["abnormal"]], (12, 40), '[[3, 4, 20, 30], [30, 50, 40, 90], '
                                                                       '["<script>alert(2)</script>", 1, 2, 3]]'),
                                 (shas[files["evil"]], (5, 6), "[]")):
            conn.execute(sa.text("UPDATE verdicts SET peak_x = :x, peak_y = :y, boxes = :b WHERE sha256 = :s"),
                         {"x": peak[0], "y": peak[1], "b": boxes, "s": sha})
    result = run(tmp_path, "export", "--format", "html", "--out", "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page.lower()
    rows = {name: next(r for r in page.split("<tr>") if name in r) for name in ("a1.tif", "script&gt;.tif", "gone.tif")}
    heat_cell = rows["a1.tif"].split("<td")[-1]  # the last column: the heat map, and where the map points
    assert 'class="heat"' in heat_cell
    assert "boxes: [3, 4, 20, 30] [30, 50, 40, 90]" in heat_cell and "map peak at x=12, y=40" in heat_cell
    assert "no region above the normal threshold" in rows["script&gt;.tif"].split("<td")[-1]
    assert "boxes:" not in rows["gone.tif"] and "normal threshold" not in rows["gone.tif"]  # no normal model: no note


HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "'><svg onload=alert(1)>")


class PageTags(HTMLParser):
    """Every tag the browser would build from the page, with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_escapes_hostile_text_in_every_field(station):
    """File and folder (bundle) names, the reviewer, the anomalies, the quality gate's reason, the model's path and
    metadata and the cv JSON's fields all show as text: none becomes a tag or an attribute."""
    tmp_path, cfg, shas, files = station
    folder, name = HOSTILE[2], HOSTILE[1] + ".tif"
    hostile = write_tiff(tmp_path / "capture" / folder / name, 4)
    sha = file_sha256(hostile)
    cv = write_cv_result(cfg.state.dir, tmp_path)
    cv.update(created=HOSTILE[0], dataset=dict(cv["dataset"], root=HOSTILE[1]))
    cv["methods"]["global"]["folds"][0]["bundle"] = HOSTILE[2]
    (newest,) = (Path(cfg.state.dir) / "cv").glob("*.json")
    newest.write_text(json.dumps(cv))
    with open_store(cfg.database.url) as store:
        record_verdict(store, str(hostile), sha, 10, 1, MODEL, None, "rescan", HOSTILE[0], 0.5, "global")
        with store.write() as conn:
            conn.execute(sa.insert(reviews).values(sha256=sha, label="abnormal", anomalies=HOSTILE[1],
                                                   reviewer=HOSTILE[0], note=HOSTILE[2], model_verdict="rescan",
                                                   model_sha256=MODEL, created_at=datetime.now(timezone.utc)))
            meta = dict(META, threshold_source=HOSTILE[1], created_at=HOSTILE[0])
            conn.execute(sa.update(models).values(path=HOSTILE[2], meta_json=json.dumps(meta)))
    result = run(tmp_path, "export", "--format", "html", "--out", "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    parser = PageTags()
    parser.feed(page)
    tags = {tag for tag, _ in parser.tags}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "a", "code", "table",
                    "tr", "th", "td", "span", "br", "div", "img"}, tags
    assert "script" not in tags and "svg" not in tags
    for tag, attrs in parser.tags:
        assert not any(key.startswith("on") for key in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,") and attrs["class"] in (
                "thumb", "heat", "roc", "confusion", "trend"), attrs
    escaped = {text: html.escape(text, quote=False) for text in HOSTILE}  # <, > and & escaped; quotes may be too
    shown = page.replace("&#39;", "'").replace("&#34;", '"')
    row = next(r for r in shown.split("<tr>") if escaped[HOSTILE[1]] + ".tif" in r)
    for text in HOSTILE:  # the reason, the reviewer, the anomalies; the path holds the folder and the file's name
        assert escaped[text] in row, text
    assert shown.count(escaped[HOSTILE[0]]) >= 4  # also the cv's date and the model's created_at
    assert f"<td class='l'>{escaped[HOSTILE[2]]}</td>" in shown  # the cv's held-out bundle
    assert f"</code> ({escaped[HOSTILE[2]]}).</p>" in shown  # the path the model was recorded with


def test_the_report_templates_ship_in_the_wheel(repo_root):
    """pyproject's package data names every template report_html loads, so an installed station finds them."""
    import tomllib
    from inspector.loop.report_html import TEMPLATES

    patterns = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    web = TEMPLATES.parent.parent
    shipped = {path for pattern in patterns["inspector.web"] for path in web.glob(pattern)}
    assert {path for path in TEMPLATES.iterdir()} <= shipped
    assert (TEMPLATES / "page.html").is_file()
