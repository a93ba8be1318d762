"""The review station in a real browser: `inspector serve` as a subprocess, headless Chromium driven by its
keyboard, the reviews checked in the database and in `inspector reviews`, screenshots kept in test-artifacts/."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import pytest

from browser import MISSING, Served, chromium, log_in, resize, wait_for
from web_station import PASSWORDS, build_station

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def shown_image_id(driver) -> str | None:
    return driver.execute_script("const r = document.getElementById('review'); return r && r.dataset.imageId;")


def press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver)
    for key in keys:
        chain.send_keys(key)
    chain.perform()


def scan_ready(driver) -> bool:
    return driver.execute_script("const i = document.getElementById('img-window'); "
                                 "return !!(i && i.complete && i.naturalWidth > 0);")


@pytest.fixture
def served(tmp_path):
    st = build_station(tmp_path / "station", flagged=4, normal=2, scale=0.2, station_names=("line1", "line2"),
                       full_size=1)
    with Served(st.config) as server:
        yield st, server


def test_an_operator_clears_three_electrodes_with_the_keyboard_and_undoes_one(served, repo_root):
    st, server = served
    artifacts = repo_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    ids = [str(i["image_id"]) for i in st.flagged]
    driver = chromium(1280, 800)
    try:
        log_in(driver, server.url, "ann", PASSWORDS["ann"])
        wait_for(lambda: shown_image_id(driver) == ids[0] and scan_ready(driver), "the oldest flagged electrode")
        size = driver.execute_script("const i = document.getElementById('img-window'); "
                                     "return [i.naturalWidth, i.naturalHeight];")
        assert size == [1000, 2000]  # the whole 2000 x 1000 scan, not a thumbnail
        press(driver, "1")  # 1:1: one image pixel per screen pixel
        shown = driver.execute_script("return document.getElementById('img-window').getBoundingClientRect().width;")
        assert shown == pytest.approx(1000, abs=0.5)
        press(driver, "f", "h")
        assert driver.execute_script("return document.getElementById('img-heat').hidden;") is False
        wait_for(lambda: driver.execute_script("const i = document.getElementById('img-heat'); "
                                               "return i.complete && i.naturalWidth === 1000;"), "the heat map")
        driver.save_screenshot(str(artifacts / "web-review-1280x800.png"))
        resize(driver, 768, 1024)
        time.sleep(0.3)
        driver.save_screenshot(str(artifacts / "web-review-768x1024.png"))
        resize(driver, 1280, 800)

        press(driver, "n")  # 1: normal
        wait_for(lambda: shown_image_id(driver) == ids[1], "the second electrode")
        assert "Recorded normal" in driver.page_source
        press(driver, "a")  # 2: abnormal, scratch and edge cut
        wait_for(lambda: driver.execute_script("return document.getElementById('abnormal-panel').open;"), "the panel")
        press(driver, "1", "3", "\ue007")  # Enter
        wait_for(lambda: shown_image_id(driver) == ids[2], "the third electrode")
        press(driver, "n")  # 3: normal
        wait_for(lambda: shown_image_id(driver) == ids[3], "the fourth electrode")
        press(driver, "z")  # undo the third decision: the third electrode is shown again
        wait_for(lambda: shown_image_id(driver) == ids[2], "the undone electrode back")
        assert "decision taken back" in driver.page_source and "Took back review 3" in driver.page_source
    finally:
        driver.quit()
    listed = subprocess.run([sys.executable, "-m", "inspector", "--config", str(st.config), "reviews", "--format",
                             "json"], capture_output=True, text=True, check=True)
    rows = sorted(json.loads(listed.stdout), key=lambda r: r["id"])
    shas = [i["sha256"] for i in st.flagged]
    assert [(r["id"], r["sha256"], r["label"], r["anomalies"], r["reviewer"], r["supersedes"], r["superseded"])
            for r in rows] == [
        (1, shas[0], "normal", "", "ann", None, False),
        (2, shas[1], "abnormal", "scratch;edge_cut", "ann", None, False),
        (3, shas[2], "normal", "", "ann", None, True),
        (4, shas[2], "withdrawn", "", "ann", 3, False)]
    pending = subprocess.run([sys.executable, "-m", "inspector", "--config", str(st.config), "reviews", "--pending",
                              "--format", "json"], capture_output=True, text=True, check=True)
    assert [r["sha256"] for r in json.loads(pending.stdout)] == shas[2:]
    assert png_size(artifacts / "web-review-1280x800.png") == (1280, 800)
    assert png_size(artifacts / "web-review-768x1024.png") == (768, 1024)


def test_a_decision_someone_else_made_first_is_shown_over_the_electrode(served):
    st, server = served
    first, second = st.flagged[:2]
    driver = chromium(1280, 800)
    try:
        log_in(driver, server.url, "ann", PASSWORDS["ann"])
        wait_for(lambda: shown_image_id(driver) == str(first["image_id"]) and scan_ready(driver), "the first electrode")
        subprocess.run([sys.executable, "-m", "inspector", "--config", str(st.config), "review", first["sha256"],
                        "--label", "abnormal", "--by", "bob"], check=True, capture_output=True)
        press(driver, "n")
        alert = wait_for(lambda: driver.execute_script(
            "const a = document.querySelector('.flash.error'); return a && a.textContent;"), "the refusal")
        assert "was reviewed meanwhile: abnormal by bob" in alert and "your decision was not recorded" in alert
        assert shown_image_id(driver) == str(first["image_id"])  # still in front of the operator
        press(driver, "s")
        wait_for(lambda: shown_image_id(driver) == str(second["image_id"]), "the next electrode after a skip")
    finally:
        driver.quit()
    listed = subprocess.run([sys.executable, "-m", "inspector", "--config", str(st.config), "reviews", "--format",
                             "json"], capture_output=True, text=True, check=True)
    assert [(r["reviewer"], r["label"]) for r in json.loads(listed.stdout)] == [("bob", "abnormal")]


def test_the_status_page_refreshes_itself(served, repo_root):
    st, server = served
    artifacts = repo_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    driver = chromium(1280, 800)
    try:
        log_in(driver, server.url, "vic", PASSWORDS["vic"])
        driver.get(server.url + "/status")
        def today() -> int:  # read afresh: each refresh replaces the panel's elements
            return int(driver.execute_script("return document.getElementById('tile-today').textContent;"))

        before = today()
        from inspector.store.store import open_store
        from store_rows import record_verdict

        with open_store(st.cfg.database.url, station="line2") as store:
            record_verdict(store, "/srv/capture/late.tif", "f" * 64, 10, 1, "cd" * 32, 0.95, "abnormal", None, 0.5,
                           "global")
        wait_for(lambda: today() == before + 1, "the panel to refresh", 15)
        assert "Updated" in driver.find_element("id", "status-updated").text
        driver.save_screenshot(str(artifacts / "web-status-1280x800.png"))
        resize(driver, 768, 1024)
        time.sleep(0.3)
        driver.save_screenshot(str(artifacts / "web-status-768x1024.png"))
    finally:
        driver.quit()
    assert png_size(artifacts / "web-status-768x1024.png") == (768, 1024)


def test_serve_answers_healthz_and_stops_cleanly_on_sigterm(tmp_path):
    import urllib.request

    st = build_station(tmp_path / "s", flagged=1, normal=0, scale=0.05)
    server = Served(st.config)
    with urllib.request.urlopen(server.url + "/healthz", timeout=10) as answer:
        assert answer.status == 200 and answer.read() == b"ok\n"
    assert server.stop() == 0



def test_a_line_defect_through_the_real_daemon_is_mapped_on_the_line(tmp_path, repo_root):
    """A model trained on synth with the defaults (the head and the normal model, scored by their fusion), a scan
    of one of those bundles with a LINE defect through `inspector watch --once`, the review station showing it at 1280 x 800
    with the heat map (H) and the boxes on: the recorded peak lies on the line (its synth mask dilated by 2% of the
    width), the scan is flagged and boxed, and the screenshot is kept in test-artifacts/ to be looked at."""
    import os

    import numpy as np

    from browser import Served
    from inspector.base.configfile import load_config
    from inspector.data.localize import dilate
    from inspector.data.synth import draw_character, draw_shape, synth_image_with_mask, synthesize, write_tiff
    from web_station import add_users

    artifacts = repo_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    seed = 11
    synthesize(tmp_path / "set", bundles=4, per_bundle=8, abnormal_rate=0.25, scale=0.2, seed=seed, progress=False)
    (tmp_path / "capture").mkdir()
    config = tmp_path / "config.toml"
    config.write_text('[watch]\ncapture_dir = "capture"\n[model]\npath = "models/detector.safetensors"\n'
                      'device = "cpu"\ninput_size = [384, 192]\nweights = "none"\n[train]\ncache_dir = "cache"\n'
                      'batch_size = 4\nthreads = 2\nmin_steps = 100\n[infer]\nbatch_size = 2\nthreads = 2\n'
                      '[database]\nurl = "sqlite:///inspector.db"\n[state]\ndir = "var"\n[station]\nname = "line1"\n')
    env = {**os.environ, "OMP_NUM_THREADS": "2"}

    def inspector(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "inspector", *args, "--config", str(config)], cwd=tmp_path,
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    inspector("train", str(tmp_path / "set"), "--out", "models/detector.safetensors", "--method", "local")
    # a new scan of bundle 2, whose normals trained the model, crossed by a line (synth's own drawer and mask)
    character = draw_character(np.random.default_rng([seed, 1, 1]))
    rng = np.random.default_rng([seed, 9, 1, 0])
    img16, mask = synth_image_with_mask(rng, character, ["line"], [0.8], draw_shape(rng, 0.2))
    write_tiff(tmp_path / "capture" / "bundle02-line.tif", img16)
    old = time.time() - 3600
    os.utime(tmp_path / "capture" / "bundle02-line.tif", (old, old))
    inspector("watch", "--once")
    (row,) = json.loads(inspector("verdicts", "--format", "json").stdout)
    x, y = row["peak"]
    assert dilate(mask)[y, x], f"the recorded peak ({x}, {y}) is not on the line"

    add_users(load_config(config))
    shot = artifacts / "web-review-line-heatmap-1280x800.png"
    flagged = row["verdict"] == "abnormal"
    with Served(config) as server:
        driver = chromium(1280, 800)
        try:
            log_in(driver, server.url, "ann", PASSWORDS["ann"])
            if not flagged:  # not in the queue: its verdict page, to see what the station shows of it
                driver.get(server.url + "/verdicts")
                driver.find_element("css selector", "a[href^='/verdict/']").click()
            wait_for(lambda: scan_ready(driver), "the line scan in the viewer")
            if row["heatmap_path"]:
                press(driver, "h")
                wait_for(lambda: driver.execute_script("const i = document.getElementById('img-heat'); "
                                                       "return !i.hidden && i.complete && i.naturalWidth > 0;"),
                         "the heat map")
            rects = driver.execute_script("return Array.from(document.querySelectorAll('#img-boxes rect'))"
                                          ".map(r => [r.x.baseVal.value, r.y.baseVal.value, r.width.baseVal.value,"
                                          " r.height.baseVal.value]);")
            driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    assert png_size(shot) == (1280, 800)
    assert flagged, f"the line scan was called {row['verdict']} (P(abnormal) {row['p_abnormal']:.3f})"
    assert row["heatmap_path"], "the daemon drew no heat map for the abnormal verdict"
    assert row["boxes"] and any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in row["boxes"]), row["boxes"]
    assert rects == [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in row["boxes"]]
