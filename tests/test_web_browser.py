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
        from inspector.store import open_store
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
