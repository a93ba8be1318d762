"""`make demo` as a user runs it: the whole station on its synthetic set, judged by what it printed and stored."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_detector_passes_most_normals_and_flags_most_abnormals(tmp_path):
    out = tmp_path / "demo-run"
    env = {**os.environ, "INSPECTOR_DEMO_DIR": str(out)}
    proc = subprocess.run([sys.executable, "-m", "inspector.cli.demo"], capture_output=True, text=True, env=env,
                          timeout=840)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    # the cross-validation it prints is the real one: a local row with pooled counts and an AUC above chance
    local = re.search(r"^local\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+\S+\s+([\d.]+)", text, re.M)
    assert local, text
    assert float(local.group(5)) > 60.0  # ROC AUC in %, held-out bundles
    truth = re.search(r"(\d+) of (\d+) abnormal electrodes flagged, (\d+) of (\d+) normal electrodes passed", text)
    assert truth, text
    flagged, abnormal, passed, normal = (int(v) for v in truth.groups())
    assert abnormal == 4 and normal == 6
    assert flagged > abnormal / 2 and passed > normal / 2, truth.group(0)
    with sqlite3.connect(out / "inspector.db") as con:
        verdicts = dict(con.execute("SELECT verdict, COUNT(*) FROM verdicts GROUP BY verdict").fetchall())
        rejected = con.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
    assert verdicts.get("normal", 0) >= passed and rejected == 1  # the broken scan, quarantined
    # the operator clears a false alarm, never a true defect, as "normal"
    cleared = re.findall(r"review \d+: \S+-electrode-(\d{3})\.tif \(sha256 \w+\) normal by demo-operator", text)
    assert all(int(i) % 3 != 0 for i in cleared) and (cleared or passed == normal)
    assert "decision: " in text and (out / "report.html").stat().st_size > 0
    # the review station was up, for the user to log in to; without a terminal the demo does not wait
    station = re.search(r"open (http://127\.0\.0\.1:\d+/) and log in as demo-operator, password (\S+)", text)
    assert station, text[-2000:]
    assert f"the review station answered {station.group(1)}healthz: ok" in text
    assert "(not a terminal: the review station stops now" in text
    from inspector.web.users import UsersFile

    user = UsersFile(out / "var" / "web-users.json").verify("demo-operator", station.group(2))
    assert user is not None and user.can_review


def test_the_demo_reads_its_outcomes_through_the_store(tmp_path):
    """tally, flagged_truth and wait_for_outcomes ask the store (no SQL of their own): what the daemon decided."""
    from inspector.cli.demo import flagged_truth, tally, wait_for_outcomes
    from inspector.store.store import open_store
    from tests.store_rows import record_rejection, record_verdict

    db = tmp_path / "inspector.db"
    model = "ab" * 32
    with open_store(f"sqlite:///{db}") as store:
        for i, verdict in enumerate(["abnormal", "normal", "abnormal", "normal"]):  # 0 and 3 are truly abnormal
            record_verdict(store, f"/cap/b1-electrode-{i:03d}.tif", f"{i:064x}", 10, 1, model, 0.5, verdict, None,
                           0.5, "global")
        record_rejection(store, "/cap/broken.tif", None, 0, 1, "not_an_image", "the file is empty")
    assert tally(db) == (1, 4, 1, 6)  # abnormal 0, 3, 6, 9 (0 flagged); normal 1, 2, 4, 5, 7, 8 (1 passed)
    assert tally(db, "cd") == (0, 4, 0, 6)  # no verdict of that model
    assert flagged_truth(db) == [(f"{0:064x}", True), (f"{2:064x}", False)]
    assert wait_for_outcomes(db, 5, timeout=5) == 5
