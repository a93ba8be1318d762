"""`inspector score` and `inspector model info/init` through click, on real image files and real models."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import pytest
from click.testing import CliRunner
from image_files import make_bad_file, sample_image16, write_dicom16, write_tiff16

from inspector.cli import cli, main
from inspector.cli.detector import UNTRAINED_WARNING
from inspector.base.errors import ImageError
from inspector.imaging.read import read_image
from inspector.learn.infer import Detector
from inspector.imaging.modelmeta import read_meta
from inspector.learn.model import init_model, load_model, save_model

LINE = re.compile(r"^(?P<path>.+): (?P<verdict>normal|abnormal) P\(abnormal\)=(?P<p>\d\.\d{4}) (?P<s>\d+\.\d{3})s$")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("models")
    untrained = folder / "untrained.safetensors"
    init_model(untrained, "global", (1000, 4000), (64, 32), seed=0)
    loaded = load_model(untrained)
    trained = folder / "trained.safetensors"
    save_model(trained, loaded.net, dataclasses.replace(
        loaded.meta, trained=True, threshold=0.42, threshold_source="out-of-fold, target recall 0.95",
        metrics={"balanced_accuracy": 0.8518, "folds": 12}, quality={"blur_min": 40.0, "clipped_fraction": 0.5}))
    return {"untrained": untrained, "trained": trained}


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("path", [["score"], ["model"], ["model", "info"], ["model", "init"]])
def test_help(path):
    result = run(*path, "--help")
    assert result.exit_code == 0 and "Usage: " in result.output


def test_score_tiff_dicom_and_a_broken_file(models, tmp_path):
    tif = write_tiff16(tmp_path / "electrode 1.tif", sample_image16(200, 100, seed=1))
    dcm = write_dicom16(tmp_path / "electrode2.dcm", sample_image16(200, 100, seed=2))
    bad = make_bad_file(tmp_path / "broken.tif", "truncated_strip")
    with pytest.raises(ImageError) as err:
        read_image(bad)
    result = run("score", tif, bad, dcm, "--model", models["untrained"])
    assert result.exit_code == 1
    assert result.stderr == UNTRAINED_WARNING + "\n"
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[1] == f"{bad}: rejected: {err.value.message} [{err.value.reason}]"
    det = Detector.load(models["untrained"], device="cpu")
    expected = det.predict([read_image(tif), read_image(dcm)])
    for line, path, pred in zip((lines[0], lines[2]), (tif, dcm), expected):
        m = LINE.match(line)
        assert m, line
        assert m["path"] == str(path) and m["verdict"] == pred.verdict
        assert float(m["p"]) == pytest.approx(pred.p_abnormal, abs=6e-5)


def test_score_json_and_trained_model_has_no_warning(models, tmp_path):
    tif = write_tiff16(tmp_path / "a.tif", sample_image16(200, 100, seed=3))
    empty = make_bad_file(tmp_path / "empty.tif", "empty")
    result = run("score", tif, empty, "--model", models["trained"], "--format", "json", "--device", "cpu")
    assert result.exit_code == 1 and result.stderr == ""
    ok, rejected = json.loads(result.stdout)
    assert ok["path"] == str(tif) and ok["verdict"] in ("normal", "abnormal") and ok["threshold"] == 0.42
    assert ok["verdict"] == ("abnormal" if ok["p_abnormal"] >= 0.42 else "normal")
    assert ok["model_sha256"] == hashlib.sha256(models["trained"].read_bytes()).hexdigest()
    assert rejected == {"path": str(empty), "verdict": "rejected", "reason": "not_an_image",
                        "message": "the file is empty (0 bytes): the scanner wrote nothing; rescan it"}


def test_score_rescan_line_and_exit_0(models, tmp_path):
    img = sample_image16(200, 100, seed=4)
    img[:150] = 4095  # 75% of the pixels beyond the window's high end
    tif = write_tiff16(tmp_path / "bright.tif", img)
    result = run("score", tif, "--model", models["trained"])
    assert result.exit_code == 0
    assert re.fullmatch(rf"{re.escape(str(tif))}: rescan \(badly exposed: 75% of pixels clipped at the "
                        rf"window's high end\) \d+\.\d{{3}}s\n", result.stdout)


def test_score_uses_config_model_path_and_non_utf8_names(models, tmp_path):
    (tmp_path / "config.toml").write_text(f'[model]\npath = "{models["trained"]}"\ndevice = "cpu"\n')
    name = os.fsdecode(b"caf\xe9.tif")
    write_tiff16(tmp_path / name, sample_image16(200, 100, seed=5))
    result = run("score", name)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("caf\\xe9.tif: ")


def test_score_missing_model_is_one_error_line(tmp_path, capsys):
    write_tiff16(tmp_path / "a.tif", sample_image16())
    with pytest.raises(SystemExit) as exit_:
        main(["score", "a.tif", "--model", "nope.safetensors"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == ("Error: model file nope.safetensors does not exist; train one with "
                                       "`inspector train` or write an untrained one with `inspector model init`\n")


def test_model_init_then_info(tmp_path):
    result = run("model", "init", "--out", "m.safetensors", "--method", "clahe", "--window", "1500", "3000",
                 "--input-size", "64x32", "--weights", "none", "--seed", "3")
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()
    assert result.stdout.splitlines() == [
        f"wrote m.safetensors: method clahe, window 1500-3000, input 64x32, weights none, sha256 {sha}",
        "this model is UNTRAINED: its verdicts are random until `inspector train` writes a trained one",
    ]
    meta = read_meta("m.safetensors")
    assert (meta.method, meta.window, meta.input_size, meta.trained) == ("clahe", (1500, 3000), (64, 32), False)

    info = run("model", "info", "m.safetensors")
    assert info.exit_code == 0
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in info.stdout.splitlines())
    assert rows["sha256"] == sha and rows["method"] == "clahe" and rows["window"] == "1500-3000"
    assert rows["input size"] == "64 x 32 px (height x width)"
    assert rows["threshold"] == "0.5 (default 0.5)" and rows["quality gate"] == "off"
    assert rows["trained"].startswith("NO: untrained")

    as_json = json.loads(run("model", "info", "m.safetensors", "--format", "json").stdout)
    assert as_json["sha256"] == sha and as_json["window"] == [1500, 3000] and as_json["trained"] is False


def test_model_info_of_a_trained_model(models):
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in run("model", "info", models["trained"]).stdout.splitlines())
    assert rows["trained"] == "yes"
    assert rows["threshold"] == "0.42 (out-of-fold, target recall 0.95)"
    assert rows["quality gate"] == "blur_min 40, clipped_fraction 0.5"
    assert rows["metrics"] == "balanced_accuracy 0.8518, folds 12"


def test_model_init_defaults_from_config_and_refuses_to_overwrite(tmp_path):
    (tmp_path / "config.toml").write_text('[convert]\nmethod = "naive"\n[model]\nweights = "none"\n'
                                          'input_size = [48, 24]\nfeatures = ["layer3", "layer1"]\n'
                                          'pooling = ["max"]\n')
    assert run("model", "init", "--out", "d.safetensors").exit_code == 0
    meta = read_meta("d.safetensors")
    assert (meta.method, meta.window, meta.input_size, meta.weights) == ("naive", None, (48, 24), "none")
    assert (meta.features, meta.pooling, meta.head) == (("layer1", "layer3"), ("max",), "linear")
    again = run("model", "init", "--out", "d.safetensors")
    assert again.exit_code == 2
    assert "Error: d.safetensors already exists; pass --force to overwrite it" in again.output
    assert run("model", "init", "--out", "d.safetensors", "--force", "--method", "local").exit_code == 0
    assert read_meta("d.safetensors").method == "local"


def test_model_init_needs_a_window_for_global(tmp_path):
    result = run("model", "init", "--out", "g.safetensors", "--method", "global")
    assert result.exit_code == 2
    assert "Error: --method global needs --window LO HI (the 16-bit values mapped to 0 and 255)" in result.output
    assert not (tmp_path / "g.safetensors").exists()


def test_model_info_of_a_garbage_file(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    result = run("model", "info", "junk.safetensors")
    assert result.exit_code == 1 and result.output.startswith("Error: model file ")
    assert "is damaged or was modified after it was written" in result.output
