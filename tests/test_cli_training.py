"""`inspector train`, `cv` and `evaluate` through click's CliRunner on real tiny data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from inspector.cli import cli
from inspector.data.synth import synthesize
from inspector.data.metrics import Counts

TINY = ["--epochs", "1", "--min-steps", "0", "--input-size", "64x32", "--weights", "none"]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clitiny") / "ds"
    ds = synthesize(root, bundles=3, per_bundle=4, abnormal_rate=0.5, scale=0.04, seed=3, progress=False)
    assert all(0 < sum(s.y for s in ds.samples if s.bundle == b) < 4 for b in ds.bundles)
    return root


@pytest.fixture
def config(tmp_path) -> Path:
    """Each test keeps its cache and results in its own folder."""
    path = tmp_path / "config.toml"
    path.write_text('[train]\ncache_dir = "cache"\nbatch_size = 4\n[state]\ndir = "var"\n[model]\ndevice = "cpu"\n')
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def relabel(src: Path, dst: Path, bundle: str) -> Path:
    """A copy of the dataset where `bundle` has only normal electrodes."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".inspector-cache"))
    rows = list(csv.DictReader((src / "labels.csv").open()))
    with open(dst / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "bundle", "label"])
        for r in rows:
            writer.writerow([r["path"], r["bundle"], "normal" if r["bundle"] == bundle else r["label"]])
    return dst


@pytest.mark.parametrize("command", ["train", "cv", "evaluate"])
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert cli.commands[command].help and cli.commands[command].help.strip()
    assert ("--format [text|json]" in result.output and "--output FILE" in result.output) or command == "train"
    assert "--json" not in result.output  # the deprecated spelling is hidden


def test_cv_prints_table_and_json_counts_add_up(dataset_root, config, tmp_path):
    result = invoke("cv", dataset_root, "--methods", "naive,local", *TINY, "--json", "cv.json", "--config", config)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines.index("Balanced accuracy (%), leave-one-bundle-out, threshold 0.5")
    assert lines[header + 1].split() == ["Test", "bundle", "naive", "local"]
    assert [line.split()[0] for line in lines[header + 2:header + 6]] == ["bundle01", "bundle02", "bundle03", "Overall"]
    data = json.loads((tmp_path / "cv.json").read_text())
    assert data["dataset"]["images"] == 12 and len(data["oof"]) == 12
    for k, method in enumerate(["naive", "local"]):
        folds = data["methods"][method]["folds"]
        assert [f["bundle"] for f in folds] == ["bundle01", "bundle02", "bundle03"]
        pooled = Counts()
        for f in folds:
            c = Counts(f["tp"], f["fp"], f["tn"], f["fn"])
            assert f["balanced_accuracy"] == pytest.approx((c.tp / (c.tp + c.fn) + c.tn / (c.tn + c.fp)) / 2)
            pooled = pooled + c
        p = data["methods"][method]["pooled"]
        assert (p["tp"], p["fp"], p["tn"], p["fn"]) == (pooled.tp, pooled.fp, pooled.tn, pooled.fn)
        assert pooled.tp + pooled.fp + pooled.tn + pooled.fn == 12
        ba = (pooled.tp / (pooled.tp + pooled.fn) + pooled.tn / (pooled.tn + pooled.fp)) / 2
        assert p["balanced_accuracy"] == pytest.approx(ba)
        assert lines[header + 5].split()[1 + k] == f"{100 * ba:.2f}"  # the Overall row
        # the fold counts follow from the out-of-fold probabilities at 0.5
        probs = [(r["label"], r["p_abnormal"][method]) for r in data["oof"]]
        assert sum(lab == "abnormal" and q >= 0.5 for lab, q in probs) == pooled.tp
        assert sum(lab == "normal" and q >= 0.5 for lab, q in probs) == pooled.fp
    assert data["methods"]["local"]["windows"] == [] and data["methods"]["naive"]["windows"] == []
    assert data["config"]["epochs"] == 1 and data["config"]["input_size"] == [64, 32]
    kept = sorted((tmp_path / "var" / "cv").glob("cv-*.json"))
    assert len(kept) == 1 and f"kept: {kept[0]}" in result.output
    assert kept[0].with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"ROC curve: {kept[0].with_suffix('.png')}" in result.output
    assert "compared with" not in result.output
    # a second run on the same dataset is compared with the first, and reuses every feature
    again = invoke("cv", dataset_root, "--methods", "naive", *TINY, "--config", config)
    assert again.exit_code == 0, again.output
    assert f"compared with {kept[0]}" in again.output
    assert f"  naive: {100 * data['methods']['naive']['pooled']['balanced_accuracy']:.2f}% ->" in again.output
    assert ": 0 backbone passes," in again.output


def test_cv_marks_a_bundle_without_abnormal(dataset_root, config, tmp_path):
    ds = relabel(dataset_root, tmp_path / "relabeled", "bundle02")
    result = invoke("cv", ds, "--methods", "local", *TINY, "--json", "cv.json", "--config", config)  # the old spelling
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("bundle02"))
    assert row.endswith("*")
    assert ("* TNR alone: the bundle has no abnormal electrode, so balanced accuracy is undefined; "
            "its counts still enter Overall") in result.output
    fold = json.loads((tmp_path / "cv.json").read_text())["methods"]["local"]["folds"][1]
    assert fold["ba_basis"] == "tnr_only" and fold["tp"] + fold["fn"] == 0
    assert fold["balanced_accuracy"] == pytest.approx(fold["tn"] / (fold["tn"] + fold["fp"]))


def test_cv_errors(dataset_root, config, tmp_path):
    result = invoke("cv", dataset_root, "--methods", "naive,fancy", "--config", config)
    assert result.exit_code == 2  # a bad option value is a usage error
    assert result.output.endswith("Error: Invalid value for '--methods': 'naive,fancy': fancy is not a method; give "
                                  "a comma-separated list of naive, global, local, mix, clahe\n")
    result = invoke("cv", tmp_path / "nowhere", "--config", config)
    assert result.exit_code == 1
    assert result.output == (f"Error: dataset folder {tmp_path / 'nowhere'} does not exist; "
                             "give a folder holding labels.csv\n")
    result = invoke("cv", dataset_root, "--input-size", "64by32", "--config", config)
    assert result.exit_code == 2
    assert result.output.endswith("Error: Invalid value for '--input-size': input size '64by32' is not HEIGHTxWIDTH, "
                                  "e.g. 2000x1000\n")


def test_cv_freeze_none_falls_back_to_the_full_loop(dataset_root, config, tmp_path):
    config.write_text(config.read_text() + 'freeze = "none"\n')
    result = CliRunner().invoke(cli, ["cv", str(dataset_root), "--methods", "naive", *TINY,
                                                      "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        "note: model.freeze = 'none' trains every backbone layer, so its features change at each step and "
        "cannot be cached; use --no-cache (the full forward pass every epoch) or set model.freeze = 'paper'; "
        "running the full forward loop instead")
    # one epoch of every layer is no training: each fold says so rather than passing for a detector
    assert all(line.startswith("warning: naive, fold bundle0") and "no better than the class prior" in line
               for line in result.stderr.splitlines()[1:])
    assert ", no cache: " in result.stdout
    assert not (tmp_path / "cache").exists()


def test_train_then_score_and_evaluate(dataset_root, config, tmp_path):
    result = invoke("train", dataset_root, "--out", "m.safetensors", "--method", "global", *TINY,
                    "--class-weights", "balanced", "--seed", "2", "--config", config)
    assert result.exit_code == 0, result.output
    assert "trained global on 12 images (3 bundles), input 64x32, weights none" in result.output
    assert "features: layer2+layer3 pooled by mean, head linear; AdamW lr 0.001" in result.output
    assert "training: 3 steps, final training loss " in result.output  # 1 epoch of 12 images in batches of 16..
    assert "for the class prior alone" in result.output
    assert "threshold: 0.5 (default 0.5)" in result.output
    assert "wrote m.safetensors (sha256 " in result.output
    info = json.loads(invoke("model", "info", "m.safetensors", "--format", "json", "--config", config).output)
    assert info["trained"] is True and info["method"] == "global" and info["metrics"]["class_weights"] == "balanced"
    image = dataset_root / "bundle01" / "bundle01_0000.tif"
    scored = invoke("score", image, "--model", "m.safetensors", "--format", "json", "--config", config)
    assert scored.exit_code == 0, scored.output
    assert "p_abnormal" in scored.output
    result = invoke("evaluate", "m.safetensors", dataset_root, "--json", "ev.json", "--config", config)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "ev.json").read_text())
    assert data["model"]["threshold"] == 0.5 and len(data["images"]) == 12
    scored_rows = [im for im in data["images"] if im["verdict"] != "rescan"]
    tp = sum(im["label"] == "abnormal" and im["verdict"] == "abnormal" for im in scored_rows)
    assert data["pooled"]["tp"] == tp == sum(b["tp"] for b in data["bundles"])
    wrong = [im for im in scored_rows if (im["verdict"] == "abnormal") != (im["label"] == "abnormal")]
    assert data["misclassified"] == sorted(wrong, key=lambda im: (im["bundle"], im["path"]))
    assert f"misclassified: {len(wrong)}" in result.output
    for im in wrong:
        assert f"  {im['path']}  bundle {im['bundle']}  label {im['label']}  p_abnormal {im['p_abnormal']:.4f}" \
            in result.output
    overall = next(line for line in result.output.splitlines() if line.startswith("Overall"))
    assert overall.split()[1] == str(len(scored_rows))


def test_train_with_target_recall_records_its_source(dataset_root, config):
    result = invoke("train", dataset_root, "--out", "m.safetensors", "--method", "local", *TINY,
                    "--target-recall", "0.9", "--config", config)
    assert result.exit_code == 0, result.output
    assert "(out-of-fold recall >= 0.9 (leave-one-bundle-out over 3 bundles; achieved recall " in result.output
    info = json.loads(invoke("model", "info", "m.safetensors", "--format", "json", "--config", config).output)
    assert info["threshold_source"].startswith("out-of-fold recall >= 0.9")
    assert info["metrics"]["out_of_fold"]["counts"]["recall"] >= 0.9


def test_train_and_evaluate_errors(dataset_root, config, tmp_path):
    result = invoke("train", dataset_root, "--target-recall", "1.5", "--config", config)
    assert result.exit_code == 2
    assert "Invalid value for '--target-recall': 1.5 is not in the range 0<=x<=1." in result.output
    result = invoke("evaluate", "missing.safetensors", dataset_root, "--config", config)
    assert result.exit_code == 1
    assert result.output == ("Error: model file missing.safetensors does not exist; train one with "
                             "`inspector train` or write an untrained one with `inspector model init`\n")
    result = invoke("train", dataset_root, "--weights", "nothere.pth", "--config", config)
    assert result.exit_code == 1
    assert result.output.startswith("Error: model.weights file nothere.pth does not exist")


def test_feature_options_are_checked_and_recorded(dataset_root, config):
    bad = invoke("cv", dataset_root, "--methods", "local", *TINY, "--features", "layer2,layer9", "--config", config)
    assert bad.exit_code == 2
    assert bad.output.endswith("Error: Invalid value for '--features': 'layer2,layer9': layer9 is not allowed; give a "
                               "comma-separated list of layer1, layer2, layer3, layer4\n")
    result = invoke("cv", dataset_root, "--methods", "local", *TINY, "--features", "layer3,layer1",
                    "--pooling", "max,mean", "--format", "json", "--output", "cv.json", "--config", config)
    assert result.exit_code == 0, result.output
    data = json.loads(Path("cv.json").read_text())
    assert data["config"]["features"] == ["layer1", "layer3"] and data["config"]["pooling"] == ["mean", "max"]
    assert result.stdout == "" and result.stderr.endswith("wrote cv.json\n")  # the JSON went to the file
    from inspector.learn.crossval import format_table

    assert "features layer1+layer3 pooled by mean+max, head linear" in format_table(data)
