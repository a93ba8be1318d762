"""inspector retrain end to end on tiny real data: promotion, refusal, failure, the record and the daemon signal.

Everything is tiny (random backbone, 64x32 input, 3 bundles x 6 synthetic electrodes) and trained
with the published network and schedule (head and optimizer "paper", unweighted loss), so the
networks learn little beyond the class balance of their training set: the gate, not learning, is
what these tests are about (tests/test_learning.py is about learning). The cases are built on
that: reviewed images labeled abnormal keep the candidate predicting abnormal like the current
model (a tie, which promotes); abnormal electrodes reviewed as "normal" tilt the candidate to
predict normal everywhere, so its abnormal recall falls below the current model's (refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sqlalchemy as sa
import tifffile
from click.testing import CliRunner

from cli_errors import error_of
from inspector.cli import cli
from inspector.base.configfile import load_config
from inspector.data.synth import synth_electrode, synthesize
from inspector.imaging.read import file_sha256
from inspector.store.schema import retrains
from inspector.store.store import open_store
from tests.store_rows import record_verdict

CONFIG = """\
[model]
path = "models/detector.safetensors"
weights = "none"
input_size = [64, 32]
device = "cpu"
head = "paper"
[convert]
method = "local"
[train]
epochs = 4
optimizer = "paper"
class_weights = "none"
learning_rate = 0.01
batch_size = 8
cache_dir = "{cache}"
threads = 2
[quality]
enabled = false
[database]
url = "sqlite:///station.db"
[watch]
capture_dir = "capture"
[state]
dir = "var"
[retrain]
base_dataset = "base"
methods = ["local"]
"""
FAKE_DAEMON = """
import signal, sys, time, pathlib  # stands in for `inspector watch`
log = pathlib.Path(sys.argv[1])
def note(name):
    with log.open("a") as fh:
        fh.write(name + "\\n")
signal.signal(signal.SIGHUP, lambda *a: note("HUP"))
signal.signal(signal.SIGUSR1, lambda *a: note("USR1"))
note("ready")
while True:
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A base set (5 of 6 electrodes abnormal) and a current model trained on it, made once per module."""
    root = tmp_path_factory.mktemp("retrain-shared")
    (root / "cache").mkdir()
    synthesize(root / "base", bundles=3, per_bundle=6, abnormal_rate=0.83, scale=0.04, seed=1, progress=False)
    (root / "config.toml").write_text(CONFIG.format(cache=root / "cache"))
    result = CliRunner().invoke(cli, ["train", str(root / "base"), "--config", str(root / "config.toml")])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def station(prepared, tmp_path):
    """This test's copy of the station: config, base set, current model, database, capture folder."""
    for name in ("base", "models"):
        shutil.copytree(prepared / name, tmp_path / name, symlinks=True)
    shutil.copy(prepared / "config.toml", tmp_path / "config.toml")
    (tmp_path / "capture").mkdir()
    (tmp_path / "var").mkdir()
    return tmp_path


def review_captures(tmp_path: Path, n: int, label: str) -> None:
    """n abnormal electrodes captured in capture/R/, scored, and reviewed by an operator as `label`."""
    from inspector.loop.review import record_review

    cfg = load_config(tmp_path / "config.toml")
    with open_store(cfg.database.url) as store:
        for i in range(n):
            path = tmp_path / "capture" / "R" / f"rev{i}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, synth_electrode(100 + i, scale=0.04, abnormal=True))
            sha, st = file_sha256(path), path.stat()
            record_verdict(store, str(path), sha, st.st_size, st.st_mtime_ns, "cd" * 32, 0.9, "abnormal", None, 0.5,
                                 "local", 0.1, 0.1)
            record_review(store, sha, label, reviewer="tester")


@pytest.fixture
def fake_daemon(station):
    """A live process whose command line says inspector, in the pid file, logging the signals it gets."""
    log = station / "signals.log"
    proc = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, str(log)])
    wait_for(lambda: log.is_file() and "ready" in log.read_text())
    (station / "var" / "inspector.pid").write_text(f"{proc.pid}\n")
    yield proc, log
    proc.kill()
    proc.wait(timeout=10)


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def signals_seen(proc, log: Path) -> list[str]:
    """Everything the fake daemon received: USR1 is sent last and a pending HUP is delivered before it."""
    os.kill(proc.pid, signal.SIGUSR1)
    wait_for(lambda: "USR1" in log.read_text())
    return [line for line in log.read_text().split() if line not in ("ready", "USR1")]


def run_retrain(tmp_path: Path, *args: str):
    return CliRunner().invoke(cli, ["retrain", *args, "--config", str(tmp_path / "config.toml")])


def retrain_rows(tmp_path: Path) -> list[dict]:
    cfg = load_config(tmp_path / "config.toml")
    with open_store(cfg.database.url, readonly=True) as store, store.read() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(retrains).order_by(retrains.c.id))]


def test_promotes_a_candidate_that_is_not_worse_and_signals_the_daemon(station, fake_daemon):
    proc, log = fake_daemon
    model = station / "models" / "detector.safetensors"
    before = model.read_bytes()
    review_captures(station, 6, "abnormal")
    result = run_retrain(station)
    assert result.exit_code == 0, result.output
    for stage in range(1, 7):
        assert f"stage {stage}/6" in result.output
    assert "6 reviewed" in result.output and "decision: promoted" in result.output
    assert f"asked the daemon (pid {proc.pid}) to reload: SIGHUP sent" in result.output
    assert signals_seen(proc, log) == ["HUP"]
    after = model.read_bytes()
    assert after != before
    assert (station / "models" / "detector.previous.safetensors").read_bytes() == before
    from inspector.learn.model import load_model

    meta = load_model(model).meta
    work = Path(meta.metrics["retrain"]["dataset"])
    assert meta.trained and work.parent == station / "var" / "retrain"
    assert (work / "labels.csv").read_text().count("reviewed/R/") == 6
    (row,) = retrain_rows(station)
    assert row["decision"] == "promoted" and row["finished_at"] is not None
    current, candidate = json.loads(row["current_score_json"]), json.loads(row["candidate_score_json"])
    assert candidate["pooled"]["balanced_accuracy"] >= current["pooled"]["balanced_accuracy"]
    assert candidate["pooled"]["recall"] >= current["pooled"]["recall"]
    assert Path(row["candidate_path"]).is_file() and Path(row["candidate_path"]).read_bytes() == after
    assert list((station / "var" / "cv").glob("cv-*.json"))  # the report shows this run's cross-validation
    with open_store(load_config(station / "config.toml").database.url, readonly=True) as store:
        promoted = store.promoted_model()  # the plant's model now: every station's daemon follows it
    assert promoted["sha256"] == hashlib.sha256(after).hexdigest() and promoted["path"] == str(model)


def test_refuses_a_candidate_taught_wrong_labels(station, fake_daemon):
    proc, log = fake_daemon
    model = station / "models" / "detector.safetensors"
    before = model.read_bytes()
    review_captures(station, 12, "normal")  # abnormal electrodes, "reviewed" as normal
    result = run_retrain(station)
    assert result.exit_code == 3, result.output
    # taught that defects are normal, the candidate misses most of them (the head all; the normal model's map, which
    # learns from the normals, still sees a few)
    refused = re.search(r"not promoted: abnormal recall (\d+\.\d)% < current 100\.0%", result.output)
    assert refused and float(refused.group(1)) < 50.0, result.output
    assert "decision: not promoted" in result.output
    assert model.read_bytes() == before
    assert not (station / "models" / "detector.previous.safetensors").exists()
    assert [p.name for p in (station / "models").iterdir()] == ["detector.safetensors"]
    assert signals_seen(proc, log) == []
    (row,) = retrain_rows(station)
    assert row["decision"] == "not promoted" and f"abnormal recall {refused.group(1)}% < current 100.0%" in row["message"]
    assert json.loads(row["current_score_json"])["pooled"]["recall"] == 1.0


def test_dry_run_never_swaps(station, fake_daemon):
    proc, log = fake_daemon
    model = station / "models" / "detector.safetensors"
    before = model.read_bytes()
    review_captures(station, 3, "abnormal")
    result = run_retrain(station, "--dry-run", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "decision: dry run: would promote" in result.output
    assert model.read_bytes() == before and signals_seen(proc, log) == []
    assert retrain_rows(station)[0]["decision"] == "dry run: would promote"


def corrupt_one_image(station: Path) -> None:
    victim = next((station / "base").rglob("*.tif"))
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: found mid-run, when it is read


@pytest.mark.parametrize("breakage", ["base dataset missing", "image unreadable mid-run"])
def test_failure_leaves_model_and_daemon_untouched(station, fake_daemon, breakage):
    proc, log = fake_daemon
    model = station / "models" / "detector.safetensors"
    before = model.read_bytes()
    review_captures(station, 2, "abnormal")
    if breakage == "base dataset missing":
        shutil.rmtree(station / "base")
    else:
        corrupt_one_image(station)
    result = run_retrain(station)
    assert result.exit_code == 4, result.output
    assert "Error: retrain failed: " in result.output
    expected = "dataset folder" if breakage == "base dataset missing" else "the file is damaged"
    assert expected in result.output
    assert f"{load_config(station / 'config.toml').model.path} and the daemon were left untouched" in result.output
    assert model.read_bytes() == before
    assert sorted(p.name for p in (station / "models").iterdir()) == ["detector.safetensors"]
    assert signals_seen(proc, log) == []
    (row,) = retrain_rows(station)
    assert row["decision"] == "failed" and expected in row["message"]


def test_a_second_retrain_on_the_plant_database_exits_3_naming_the_first(station):
    """Every station's nightly timer fires: the retrain that holds the plant lock runs, the others say where."""
    from inspector.store.fleet import plant_lock

    cfg = load_config(station / "config.toml")
    with open_store(cfg.database.url, station="line2") as other, plant_lock(other, "retrain", "retrain"):
        result = run_retrain(station)
    assert result.exit_code == 3, result.output
    assert re.search(r"another retrain is running on \S+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(station line2",
                     result.output), result.output
    assert retrain_rows(station) == []  # nothing ran, nothing was recorded
    with open_store(cfg.database.url, station="line3") as third:  # given up at the end: the next run takes it
        assert third.take_lock("retrain", "next-run", "box-c", 3, 60) is None


def test_usage_error_without_base_dataset(tmp_path):
    (tmp_path / "config.toml").write_text('[database]\nurl = "sqlite:///station.db"\n')
    result = run_retrain(tmp_path)
    assert result.exit_code == 1
    assert error_of(result) == (f"retrain.base_dataset in {tmp_path / 'config.toml'}: is empty: set it to the "
                                     "labeled dataset folder that reviewed images are added to")
    assert not (tmp_path / "station.db").exists()


def test_no_daemon_running_is_said_plainly(tmp_path):
    from inspector.loop.retrain import reload_daemon

    (tmp_path / "inspector.pid").write_text("999999999\n")  # no such process
    message = reload_daemon(tmp_path)
    assert message.startswith("no inspector daemon is running") or "systemctl" in message


def test_compare_rules():
    from inspector.data.metrics import Counts
    from inspector.loop.retrain import Score, compare

    cur = Score("global", 0.5, Counts(tp=8, fp=2, tn=8, fn=2), None)
    assert compare(cur, Score("global", 0.5, Counts(tp=8, fp=2, tn=8, fn=2), None)) == []  # equal promotes
    assert compare(None, cur) == []
    worse_ba = Score("global", 0.5, Counts(tp=8, fp=4, tn=6, fn=2), None)
    assert compare(cur, worse_ba) == ["pooled BA 70.0% < current 80.0%"]
    worse_recall = Score("mix", 0.4, Counts(tp=7, fp=0, tn=10, fn=3), None)
    assert compare(cur, worse_recall) == ["abnormal recall 70.0% < current 80.0% (thresholds 0.4 vs 0.5)"]
    close = Score("global", 0.5, Counts(tp=800, fp=200, tn=799, fn=200), None)
    big = Score("global", 0.5, Counts(tp=800, fp=200, tn=800, fn=200), None)
    assert compare(big, close) == ["pooled BA 79.990% < current 80.000%"]
