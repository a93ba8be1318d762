"""`inspector rescore`: recorded images scored by another model beside their capture verdicts, resumable."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import date

import pytest

from harness import run_inspector
from daemon_helpers import db_rows, make_model, write_config, write_image


@pytest.fixture
def scored_station(tmp_path):
    """Four distinct captures and a copy of one, scored by model A with watch --once and moved to processed/."""
    config = write_config(tmp_path, after="move")
    sha_a = make_model(tmp_path / "models" / "detector.safetensors", seed=0)
    capture = tmp_path / "capture"
    for i, name in enumerate(["a", "b", "c", "d"]):
        write_image(capture / f"{name}.tif", seed=200 + i)
    shutil.copy(capture / "a.tif", capture / "a-copy.tif")
    hour_ago = time.time() - 3600
    for path in capture.iterdir():
        os.utime(path, (hour_ago, hour_ago))
    proc = run_inspector(config, "watch", "--once")
    assert proc.returncode == 0, proc.stderr
    processed = capture / "processed" / date.today().isoformat()
    assert sorted(os.listdir(processed)) == ["a-copy.tif", "a.tif", "b.tif", "c.tif", "d.tif"]
    return config, sha_a, processed


def model_verdicts(db, model_sha: str) -> dict[str, tuple]:
    rows = db_rows(db, "SELECT sha256, verdict, p_abnormal FROM verdicts WHERE model_sha256 = ?", model_sha)
    return {sha: (verdict, p) for sha, verdict, p in rows}


def test_rescore_adds_a_verdict_per_content_for_the_new_model_and_keeps_the_capture_verdicts(tmp_path, scored_station):
    config, sha_a, processed = scored_station
    db = tmp_path / "inspector.db"
    capture_verdicts = model_verdicts(db, sha_a)
    assert len(capture_verdicts) == 4
    sha_b = make_model(tmp_path / "models" / "b.safetensors", seed=1)
    original_c = (processed / "c.tif").read_bytes()
    write_image(processed / "c.tif", seed=999)  # another image now lies where c was recorded
    (processed / "d.tif").unlink()  # and d was deleted

    proc = run_inspector(config, "rescore", "--model", str(tmp_path / "models" / "b.safetensors"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"model {sha_b[:12]}: 2 of 4 recorded image(s) rescored, 2 not found"
    assert any("now holds other content" in line for line in lines)
    assert any("does not exist" in line for line in lines)
    rescored = model_verdicts(db, sha_b)
    assert len(rescored) == 2
    assert model_verdicts(db, sha_a) == capture_verdicts  # the capture verdicts stay as they were

    # the same numbers as scoring the files by hand with model B
    score = run_inspector(config, "score", "--format", "json", "--model", str(tmp_path / "models" / "b.safetensors"),
                      str(processed / "a.tif"), str(processed / "b.tif"))
    by_hand = sorted(round(r["p_abnormal"], 6) for r in json.loads(score.stdout))
    assert sorted(round(p, 6) for _, p in rescored.values()) == by_hand

    # `verdicts --model` lists the rescored images (a and its copy share one content, so three rows)
    listed = json.loads(run_inspector(config, "verdicts", "--model", sha_b[:12], "--format", "json").stdout)
    assert sorted(os.path.basename(r["path"]) for r in listed) == ["a-copy.tif", "a.tif", "b.tif"]
    assert {r["model_sha256"] for r in listed} == {sha_b}
    plain = json.loads(run_inspector(config, "verdicts", "--format", "json").stdout)
    assert {r["model_sha256"] for r in plain} == {sha_a}  # without --model: the capture verdicts

    # a second run resumes: only what is still without a verdict of B is tried, nothing is scored twice
    (processed / "c.tif").write_bytes(original_c)
    again = run_inspector(config, "rescore", "--model", str(tmp_path / "models" / "b.safetensors"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == f"model {sha_b[:12]}: 1 of 2 recorded image(s) rescored, 1 not found"
    assert len(model_verdicts(db, sha_b)) == 3
    assert db_rows(db, "SELECT COUNT(*) FROM verdicts WHERE model_sha256 = ? GROUP BY sha256 HAVING COUNT(*) > 1",
                   sha_b) == []


def test_rescore_with_since_takes_only_newer_images_and_reports_changes(tmp_path, scored_station):
    config, sha_a, processed = scored_station
    make_model(tmp_path / "models" / "b.safetensors", seed=1)
    future = run_inspector(config, "rescore", "--since", "2999-01-01", "--model", str(tmp_path / "models" / "b.safetensors"))
    assert future.returncode == 0, future.stderr
    assert future.stdout.splitlines()[0].endswith(": 0 of 0 recorded image(s) rescored")
    proc = run_inspector(config, "rescore", "--since", "1h", "--model", str(tmp_path / "models" / "b.safetensors"))
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(": 4 of 4 recorded image(s) rescored")
    assert lines[1].startswith("new verdicts: ") and lines[2].startswith("unchanged against the capture verdict: ")


def test_rescore_with_the_capture_model_has_nothing_to_do(tmp_path, scored_station):
    config, sha_a, _ = scored_station
    proc = run_inspector(config, "rescore")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"model {sha_a[:12]}: 0 of 0 recorded image(s) rescored"]
