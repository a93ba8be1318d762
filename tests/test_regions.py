"""Where the map points, end to end: the normal model in the model file (round trip, old files, damaged files),
schema 5 (an upgrade from schema 4 that keeps rows), verdicts recorded by the real daemon carrying peak and boxes
on SQLite and PostgreSQL, `score --json` / `explain --json`, and `train --normals-only`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
import torch
from click.testing import CliRunner
from daemon_helpers import add_normal_model, make_model, write_config

from inspector.cli import cli
from inspector.base.errors import ModelError
from inspector.learn.explain import explain_image
from inspector.imaging.read import read_image
from inspector.learn.infer import Detector
from inspector.learn.model import META_KEY, artifact_sha256, load_model, save_model
from inspector.data.synth import draw_character, synth_image, write_tiff

SHAPE = (130, 70)  # rows, columns: not the 64 x 32 input of the tiny model


def electrode(index: int, bundle: int = 0) -> np.ndarray:
    character = draw_character(np.random.default_rng([9, 1, bundle]))
    return synth_image(np.random.default_rng([9, 2, bundle, index]), character, [], [], SHAPE)


def with_disc(img16: np.ndarray, x: int, y: int, radius: int = 6, depth: float = 700.0) -> np.ndarray:
    mask = np.zeros(img16.shape, np.uint8)
    cv2.circle(mask, (x, y), radius, 1, -1)
    out = img16.astype(np.float32)
    out[mask > 0] -= depth
    return np.clip(out, 0, 65535).astype(np.uint16)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """The tiny daemon model twice: as `model init` wrote it (no normal model: an old file) and with a normal
    model fitted on 8 normals of two bundles."""
    folder = tmp_path_factory.mktemp("models")
    old = folder / "old.safetensors"
    make_model(old)
    normal = folder / "normal.safetensors"
    make_model(normal)
    add_normal_model(normal, [electrode(i, b) for b in (0, 1) for i in range(4)], ["b1"] * 4 + ["b2"] * 4)
    return {"old": old, "normal": normal}


# ---- the model file ----------------------------------------------------------------------------------------
def test_a_model_saved_with_a_normal_model_loads_with_the_same_map(models, tmp_path):
    first = load_model(models["normal"])
    assert first.net.normal is not None and first.meta.normal["stages"] == ["input"]
    copy = tmp_path / "copy.safetensors"
    save_model(copy, first.net, first.meta)
    again = load_model(copy)
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits_a, heat_a = first.net.scored(x)
        logits_b, heat_b = again.net.scored(x)
    assert heat_a is not None and heat_a.shape == (2, 64, 32)
    assert torch.equal(heat_a, heat_b) and torch.equal(logits_a, logits_b)
    assert again.meta.normal == first.meta.normal


def test_an_old_model_file_without_a_normal_model_still_scores_and_explains_with_gradcam(models):
    det = Detector.load(models["old"], device="cpu")
    assert det.net.normal is None and det.meta.normal == {}
    (pred,) = det.predict([electrode(0)])
    assert pred.verdict in ("normal", "abnormal") and pred.regions is None and pred.heat is None
    exp = explain_image(det, electrode(0), method="auto")
    assert exp.method == "gradcam" and exp.regions is None and exp.cam.shape == SHAPE
    with pytest.raises(ModelError, match="no normal model.*--method gradcam"):
        explain_image(det, electrode(0), method="normal")


def test_explain_auto_uses_the_map_of_a_model_with_one(models):
    det = Detector.load(models["normal"], device="cpu")
    img = with_disc(electrode(20), 40, 80)
    exp = explain_image(det, img, method="auto")
    assert exp.method == "normal" and exp.cam.shape == SHAPE
    (pred,) = det.predict([img])
    assert exp.regions == pred.regions  # the same map as the verdict's own pass
    assert abs(exp.regions.peak[0] - 40) <= 8 and abs(exp.regions.peak[1] - 80) <= 8
    assert explain_image(det, img, method="gradcam").method == "gradcam"


def test_a_file_whose_normal_tensors_were_stripped_is_refused_as_damaged(models, tmp_path):
    from safetensors.torch import load_file, save_file

    loaded = load_model(models["normal"])
    tensors = {k: v for k, v in load_file(str(models["normal"])).items() if not k.startswith("normal.")}
    meta = dataclasses.replace(loaded.meta, tensors_sha256="")
    meta = dataclasses.replace(meta, tensors_sha256=artifact_sha256(tensors, meta))  # a consistent checksum
    stripped = tmp_path / "stripped.safetensors"
    save_file(tensors, str(stripped), metadata={META_KEY: meta.to_json()})
    with pytest.raises(ModelError) as err:
        load_model(stripped)
    assert "is damaged" in str(err.value) and "normal model's tensors and its metadata disagree" in str(err.value)
    # and the other way round: normal tensors in a file whose metadata knows of none
    full = load_file(str(models["normal"]))
    meta = dataclasses.replace(loaded.meta, normal={}, score="head", tensors_sha256="")
    meta = dataclasses.replace(meta, tensors_sha256=artifact_sha256(full, meta))
    save_file(full, str(stripped), metadata={META_KEY: meta.to_json()})
    with pytest.raises(ModelError, match="disagree"):
        load_model(stripped)


# ---- schema 5 ----------------------------------------------------------------------------------------------
def test_a_schema_4_database_upgrades_to_the_current_schema_keeping_its_rows(database_url):
    from inspector.store.schema import SCHEMA_VERSION, alembic_command, alembic_revision, schema_info
    from inspector.store.store import open_store
    from tests.store_rows import record_verdict

    assert SCHEMA_VERSION >= 5
    with open_store(database_url) as store:
        record_verdict(store, b"/cap/a.tif", "aa" * 32, 5, 6, "ab" * 32, 0.9, "abnormal", None, 0.5, "global", 0.1, 0.2)
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:  # back to schema 4, as inspector before the normal model left it
        alembic_command(conn, "downgrade", "0004")
        conn.execute(sa.update(schema_info).values(version=4))
    with engine.connect() as conn:
        assert alembic_revision(conn) == "0004"
        assert "peak_x" not in {c["name"] for c in sa.inspect(conn).get_columns("verdicts")}
    engine.dispose()
    with open_store(database_url) as store:
        assert store.schema_action == "migrated" and store.schema_version() == SCHEMA_VERSION
        with store.read() as conn:
            rows = conn.execute(sa.text("SELECT sha256, verdict, p_abnormal, peak_x, peak_y, boxes FROM verdicts")).all()
        assert [tuple(r) for r in rows] == [("aa" * 32, "abnormal", 0.9, None, None, None)]
        assert store.known_file(b"/cap/a.tif", 5, 6)
    config = write_config_for(database_url)
    listed = json.loads(run("verdicts", "--format", "json", "--config", config).output)
    assert [(r["sha256"], r["peak"], r["boxes"]) for r in listed] == [("aa" * 32, None, None)]


def write_config_for(database_url: str):
    from pathlib import Path

    path = Path("config.toml")
    path.write_text(f'[database]\nurl = "{database_url}"\n[state]\ndir = "var"\n')
    return path


# ---- verdicts of the real daemon ---------------------------------------------------------------------------
def _capture(tmp_path, images: dict[str, np.ndarray]) -> None:
    old = time.time() - 3600  # settled long ago: `watch --once` scores them now
    for name, img in images.items():
        write_tiff(tmp_path / "capture" / name, img)
        os.utime(tmp_path / "capture" / name, (old, old))


def test_daemon_verdicts_carry_peak_and_boxes_in_verdicts_json(models, tmp_path, database_url):
    config = write_config(tmp_path, database_url)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "detector.safetensors").write_bytes(models["normal"].read_bytes())
    _capture(tmp_path, {"plain.tif": electrode(30), "disc.tif": with_disc(electrode(31), 20, 90)})
    result = run("watch", "--once", "--config", config)
    assert result.exit_code == 0, result.output
    listed = {os.path.basename(r["path"]): r for r in json.loads(run("verdicts", "--format", "json", "--config",
                                                                       config).output)}
    assert set(listed) == {"plain.tif", "disc.tif"}
    rows, cols = SHAPE
    for name, row in listed.items():
        x, y = row["peak"]
        assert 0 <= x < cols and 0 <= y < rows, f"{name}: peak {row['peak']} outside the {cols} x {rows} image"
        assert isinstance(row["boxes"], list)
        for x0, y0, x1, y1 in row["boxes"]:
            assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows, f"{name}: box {[x0, y0, x1, y1]}"
    disc = listed["disc.tif"]
    assert abs(disc["peak"][0] - 20) <= 8 and abs(disc["peak"][1] - 90) <= 8, disc["peak"]
    assert disc["boxes"], "the disc is not boxed"
    x0, y0, x1, y1 = disc["boxes"][0]
    assert x0 <= 20 < x1 and y0 <= 90 < y1
    assert listed["plain.tif"]["boxes"] == []
    # the daemon's record is what `score --json` says of the same file with the same model
    scored = json.loads(run("score", tmp_path / "capture" / "disc.tif", "--model", tmp_path / "models" /
                            "detector.safetensors", "--format", "json", "--device", "cpu").stdout)
    assert (scored[0]["peak"], scored[0]["boxes"]) == (disc["peak"], disc["boxes"])
    explained = run("explain", tmp_path / "capture" / "disc.tif", "--model", tmp_path / "models" /
                    "detector.safetensors", "--out", tmp_path / "disc.png", "--format", "json", "--config", config)
    assert explained.exit_code == 0, explained.output
    shown = json.loads(explained.stdout)
    assert shown["method"] == "normal" and (shown["peak"], shown["boxes"]) == (disc["peak"], disc["boxes"])
    assert cv2.imread(str(tmp_path / "disc.png")).shape[:2] == SHAPE


def test_verdicts_of_an_old_model_print_null_peak_and_boxes(models, tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "detector.safetensors").write_bytes(models["old"].read_bytes())
    _capture(tmp_path, {"plain.tif": electrode(30)})
    assert run("watch", "--once", "--config", config).exit_code == 0
    (row,) = json.loads(run("verdicts", "--format", "json", "--config", config).output)
    assert row["peak"] is None and row["boxes"] is None
    (scored,) = json.loads(run("score", tmp_path / "capture" / "plain.tif", "--model", tmp_path / "models" /
                               "detector.safetensors", "--format", "json", "--device", "cpu").stdout)
    assert scored["peak"] is None and scored["boxes"] is None
    explained = run("explain", tmp_path / "capture" / "plain.tif", "--model", tmp_path / "models" /
                    "detector.safetensors", "--out", tmp_path / "plain.png", "--format", "json", "--config", config)
    shown = json.loads(explained.stdout)
    assert shown["method"] == "gradcam" and shown["peak"] is None and shown["boxes"] is None


def test_rescore_with_a_model_that_has_a_normal_model_records_its_peak_and_boxes(models, tmp_path):
    """Scans scored by an old model, rescored by one with a normal model: the new verdicts carry their own peak and
    boxes, the disc's on the disc, as a capture verdict of that model would."""
    config = write_config(tmp_path, model=models["old"])
    _capture(tmp_path, {"plain.tif": electrode(30), "disc.tif": with_disc(electrode(31), 20, 90)})
    assert run("watch", "--once", "--config", config).exit_code == 0
    result = run("rescore", "--model", models["normal"], "--config", config)
    assert result.exit_code == 0, result.output
    normal_sha = hashlib.sha256(models["normal"].read_bytes()).hexdigest()
    listed = {os.path.basename(r["path"]): r for r in json.loads(run(
        "verdicts", "--model", normal_sha[:12], "--format", "json", "--config", config).output)}
    assert set(listed) == {"plain.tif", "disc.tif"}
    disc = listed["disc.tif"]
    assert abs(disc["peak"][0] - 20) <= 8 and abs(disc["peak"][1] - 90) <= 8, disc["peak"]
    assert disc["boxes"] and any(x0 <= 20 < x1 and y0 <= 90 < y1 for x0, y0, x1, y1 in disc["boxes"])
    assert listed["plain.tif"]["peak"] is not None and listed["plain.tif"]["boxes"] == []


# ---- a plant with normals only -----------------------------------------------------------------------------
def test_train_normals_only_scores_by_the_map_and_ranks_a_defect_above_a_normal(tmp_path):
    from inspector.data.dataset import LABELS_FILE, write_labels

    root = tmp_path / "normals"
    rows = []
    for b in range(2):
        (root / f"bundle{b + 1:02d}").mkdir(parents=True)
        for i in range(5):
            rel = f"bundle{b + 1:02d}/bundle{b + 1:02d}_{i:04d}.tif"
            write_tiff(root / rel, electrode(i, b))
            rows.append((rel, f"bundle{b + 1:02d}", "normal", ""))
    write_labels(root / LABELS_FILE, rows)
    (tmp_path / "config.toml").write_text('[train]\ncache_dir = "cache"\nbatch_size = 4\nthreads = 1\n'
                                          '[state]\ndir = "var"\n[model]\ndevice = "cpu"\ninput_size = [64, 32]\n'
                                          'weights = "none"\n')
    out = tmp_path / "m.safetensors"
    result = run("train", root, "--out", out, "--method", "global", "--normals-only", "--config",
                 tmp_path / "config.toml")
    assert result.exit_code == 0, result.output
    assert "no head (--normals-only)" in result.output
    meta = load_model(out).meta
    assert meta.score == "map" and meta.normal["images"] == 10 and meta.normal["bundles"] == 2
    info = run("model", "info", out)
    assert info.exit_code == 0 and "the normal model's map alone (no head: normals only)" in info.output
    det = Detector.load(out, device="cpu")
    normal_p, defect_p = (p.p_abnormal for p in det.predict([electrode(40), with_disc(electrode(41), 35, 60)]))
    assert defect_p > normal_p


def test_train_normals_only_with_too_few_normals_fails_before_reading_an_image(tmp_path):
    from inspector.data.dataset import LABELS_FILE, write_labels

    root = tmp_path / "few"
    rows = []
    for b in range(2):
        (root / f"bundle{b + 1:02d}").mkdir(parents=True)
        rel = f"bundle{b + 1:02d}/bundle{b + 1:02d}_0000.tif"
        (root / rel).write_bytes(b"not a tiff")  # unreadable: an image read would fail with another error
        rows.append((rel, f"bundle{b + 1:02d}", "normal", ""))
    write_labels(root / LABELS_FILE, rows)
    (tmp_path / "config.toml").write_text('[train]\ncache_dir = "cache"\nthreads = 1\n[state]\ndir = "var"\n'
                                          '[model]\ndevice = "cpu"\ninput_size = [64, 32]\nweights = "none"\n')
    result = run("train", root, "--out", tmp_path / "m.safetensors", "--method", "global", "--normals-only",
                 "--config", tmp_path / "config.toml")
    assert result.exit_code != 0
    assert "--normals-only needs at least 3 normal images to fit the normal model" in result.output
    assert "has 2" in result.output
