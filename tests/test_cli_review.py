"""explain, review, reviews and export-labels through click's CliRunner on real files."""

from __future__ import annotations

import csv
import io
import json
import os

import cv2
import pytest
from click.testing import CliRunner

from cli_errors import error_of
from image_files import sample_image16, write_tiff16
from inspector.cli import cli
from inspector.data.dataset import load_dataset
from test_review import MODEL, build_station
from tests.store_rows import record_verdict


@pytest.fixture
def station(tmp_path):
    st = build_station(tmp_path)
    (tmp_path / "config.toml").write_text(
        '[database]\nurl = "sqlite:///station.db"\n[watch]\ncapture_dir = "capture"\n'
        '[review]\nbundle_rule = "subfolder"\n')
    st.config = tmp_path / "config.toml"
    return st


def run(station, *args: str):
    return CliRunner().invoke(cli, [*args, "--config", str(station.config)])


@pytest.mark.parametrize("args", [["explain"], ["review"], ["reviews"], ["export-labels"]])
def test_help(args):
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0
    assert result.output.startswith(f"Usage: cli {args[0]}")
    assert len(result.output.splitlines()) > 4


def test_review_twice_then_history_and_pending(station, monkeypatch):
    monkeypatch.setenv("USER", "carol")
    sha = station.sha["e1"]
    first = run(station, "review", str(station.files["e1"]), "--label", "normal", "--note", "minor smudge")
    assert first.exit_code == 0, first.output
    assert first.output == (f"review 1: {station.files['e1']} (sha256 {sha[:12]}) normal by carol; "
                            f"model said abnormal P(abnormal)=0.9000 (model {MODEL[:12]})\n")
    second = run(station, "review", sha[:10], "--label", "abnormal", "--anomaly", "Scratches",
                 "--anomaly", "edge cuts", "--by", "dave")
    assert second.exit_code == 0, second.output
    lines = second.output.splitlines()
    assert lines[0].startswith(f"review 2: {station.files['e1']} (sha256 {sha[:12]}) abnormal [scratch, edge_cut] "
                               "by dave; model said abnormal")
    assert lines[1].startswith("supersedes review 1: normal by carol at ")

    history = run(station, "reviews")
    assert history.exit_code == 0, history.output
    rows = [line.split() for line in history.output.splitlines()]
    assert rows[0][:4] == ["ID", "TIME", "SHA256", "LABEL"]
    assert rows[1][0] == "2" and "current" in rows[1] and "scratch,edge_cut" in rows[1]
    assert rows[2][0] == "1" and "superseded" in rows[2]
    as_json = json.loads(run(station, "reviews", "--format", "json").output)
    assert [(r["id"], r["supersedes"], r["superseded"], r["note"]) for r in as_json] == [
        (2, 1, False, ""), (1, None, True, "minor smudge")]

    pending = run(station, "reviews", "--pending")
    assert pending.exit_code == 0, pending.output
    assert str(station.files["e1"]) not in pending.output
    assert [line.split()[2] for line in pending.output.splitlines()[1:]] == ["rescan", "abnormal"]


def test_pending_csv_lists_oldest_first_with_rescans(station):
    result = run(station, "reviews", "--pending", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["sha256"] for r in rows] == [station.sha["e1"], station.sha["e3"], station.sha["e4"]]
    assert [r["verdict"] for r in rows] == ["abnormal", "rescan", "abnormal"]
    assert rows[1]["p_abnormal"] == "" and rows[1]["reason"].startswith("blurred")


def test_reviews_filtered_by_sha_and_empty_states(station):
    assert run(station, "reviews").output == "no reviews recorded yet\n"
    run(station, "review", station.sha["e2"], "--label", "normal", "--by", "x")
    run(station, "review", station.sha["e4"], "--label", "abnormal", "--by", "x")
    only = json.loads(run(station, "reviews", "--sha", station.sha["e4"][:8], "--format", "json").output)
    assert [r["sha256"] for r in only] == [station.sha["e4"]]
    run(station, "review", station.sha["e1"], "--label", "abnormal", "--by", "x")
    run(station, "review", station.sha["e3"], "--label", "normal", "--by", "x")
    assert run(station, "reviews", "--pending").output == "no verdicts wait for review\n"


def test_review_errors_have_exact_text(station, tmp_path):
    bad = run(station, "review", station.sha["e1"], "--label", "abnormal", "--anomaly", "edge\nburr")
    assert bad.exit_code == 1 and bad.output.startswith("Error: ")
    assert error_of(bad) == ("anomaly type 'edge\\nburr' contains a control character ('\\n'); an anomaly "
                                  "name must be one line of visible text")
    unknown = run(station, "review", str(tmp_path / "gone.tif"), "--label", "normal")
    assert unknown.exit_code == 1
    assert error_of(unknown) == (f"no verdict for {tmp_path / 'gone.tif'}; "
                                      "`inspector verdicts --path GLOB` lists scored images")
    label = run(station, "review", station.sha["e1"], "--label", "ok")
    assert label.exit_code == 2 and "'ok' is not one of 'normal', 'abnormal'" in label.output
    assert json.loads(run(station, "reviews", "--format", "json").output) == []  # nothing was recorded


def test_ambiguous_prefix_from_the_command_line(station, tmp_path):
    from inspector.store.store import open_store

    shas = ["feedface" + "1" * 56, "feedface" + "2" * 56]
    with open_store(station.url) as store:
        for i, sha in enumerate(shas):
            record_verdict(store, f"/cap/{i}.tif", sha, 1, 1, MODEL, 0.9, "abnormal", None, 0.5, "global", 0.1, 0.1)
    result = run(station, "review", "feedface", "--label", "normal")
    assert result.exit_code == 1
    assert error_of(result) == (f"sha256 prefix 'feedface' matches 2 scored images: {shas[0]} (/cap/0.tif), "
                                     f"{shas[1]} (/cap/1.tif); give more digits of the sha256")


def test_review_without_a_database_creates_none(tmp_path):
    (tmp_path / "config.toml").write_text('[database]\nurl = "sqlite:///none.db"\n')
    result = CliRunner().invoke(cli, ["review", "0" * 64, "--label", "normal", "--config",
                                      str(tmp_path / "config.toml")])
    assert result.exit_code == 1
    assert error_of(result).startswith(f"no database at {tmp_path / 'none.db'} yet")
    assert not (tmp_path / "none.db").exists()


def test_export_labels_round_trip(station, tmp_path):
    assert error_of(run(station, "export-labels", str(tmp_path / "none"))).startswith(
        "no reviews recorded yet: record some with `inspector review IMAGE --label ...`")
    run(station, "review", station.sha["e1"], "--label", "abnormal", "--anomaly", "bubbles", "--by", "x")
    run(station, "review", station.sha["e2"], "--label", "normal", "--by", "x")
    run(station, "review", station.sha["e4"], "--label", "normal", "--by", "x")
    station.files["e4"].unlink()
    result = run(station, "export-labels", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    assert f"skipped {station.files['e4']}: {station.files['e4']} is missing" in result.output
    assert result.output.splitlines()[-1] == (f"exported 2 reviewed image(s) to {tmp_path / 'ds'} (2 hard-linked, "
                                              f"0 copied, 0 already there; 1 skipped); labels in "
                                              f"{tmp_path / 'ds' / 'labels.csv'}")
    ds = load_dataset(tmp_path / "ds")
    assert sorted((s.bundle, s.label, s.anomalies) for s in ds.samples) == [("b1", "abnormal", ("bubble",)),
                                                                            ("b1", "normal", ())]
    again = run(station, "export-labels", str(tmp_path / "ds"))
    assert again.exit_code == 1 and "already holds labels.csv" in error_of(again)


def test_review_with_a_new_anomaly_type_from_the_command_line(station, tmp_path):
    first = run(station, "review", station.sha["e1"], "--label", "abnormal", "--anomaly", "Edge Burr",
                "--anomaly", "scratch", "--by", "x")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith(f"review 1: {station.files['e1']} (sha256 {station.sha['e1'][:12]}) abnormal "
                                   "[edge_burr, scratch] by x; model said abnormal")
    assert first.stderr == "note: edge_burr is not one of the paper's eleven anomaly types; recorded as a new type\n"
    typo = run(station, "review", station.sha["e4"], "--label", "abnormal", "--anomaly", "scrach", "--by", "x")
    assert typo.exit_code == 0, typo.output
    assert typo.stderr == ("note: scrach is not one of the paper's eleven anomaly types; recorded as a new type "
                           "(did you mean scratch? record the review again to correct it)\n")
    known = run(station, "review", station.sha["e2"], "--label", "normal", "--anomaly", "smudges", "--by", "x")
    assert known.exit_code == 0 and known.stderr == ""
    assert json.loads(run(station, "reviews", "--format", "json").output)[-1]["anomalies"] == "edge_burr;scratch"

    exported = run(station, "export-labels", str(tmp_path / "ds"))
    assert exported.exit_code == 0, exported.output
    ds = load_dataset(tmp_path / "ds")
    assert sorted(s.anomalies for s in ds.samples) == [("edge_burr", "scratch"), ("scrach",), ("smudge",)]
    check = CliRunner().invoke(cli, ["dataset", "check", str(tmp_path / "ds"), "--config", str(station.config)])
    assert check.exit_code == 0, check.output
    assert "2 anomaly types outside the paper's eleven: edge_burr (1 sample), scrach (1 sample); scrach is close " \
           "to scratch: fix it if it is a typo" in check.stdout


def test_export_labels_regex_rule_warns(station, tmp_path):
    station.config.write_text(station.config.read_text().replace('"subfolder"', '"regex:line(\\\\d+)"'))
    run(station, "review", station.sha["e2"], "--label", "normal", "--by", "x")
    result = run(station, "export-labels", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    assert ("warning: 1 file name(s) did not match review.bundle_rule and got bundle 'unmatched': lot01_e2.tif"
            in result.output)
    assert load_dataset(tmp_path / "ds").bundles == ["unmatched"]


def test_explain_writes_overlay_and_prints_verdict(tmp_path):
    from inspector.learn.model import init_model

    init_model(tmp_path / "tiny.safetensors", "global", (1000, 4000), (96, 64), seed=0)
    image = write_tiff16(tmp_path / "e.tif", sample_image16(150, 90, seed=1))
    (tmp_path / "config.toml").write_text('[model]\ndevice = "cpu"\n')
    result = CliRunner().invoke(cli, ["explain", str(image), "--model", str(tmp_path / "tiny.safetensors"),
                                      "--out", str(tmp_path / "heat.png"), "--config", str(tmp_path / "config.toml")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "UNTRAINED" in lines[0]  # the warning (CliRunner mixes stderr in)
    assert lines[1].startswith(f"{image}: ") and "P(abnormal)=" in lines[1] and "(threshold 0.5)" in lines[1]
    assert lines[1].split(": ")[1].split()[0] in ("normal", "abnormal")
    assert lines[2] == f"heat map (Grad-CAM): {tmp_path / 'heat.png'}"  # a model without a normal model
    assert cv2.imread(str(tmp_path / "heat.png")).shape == (150, 90, 3)
    assert os.path.getsize(tmp_path / "heat.png") > 0


def test_withdraw_takes_the_current_review_back(station):
    sha = station.sha["e1"]
    assert run(station, "review", sha, "--label", "normal", "--by", "ann").exit_code == 0
    result = run(station, "review", sha, "--withdraw", "--by", "ann")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"review 2: {station.files['e1']} (sha256 {sha[:12]}) withdrawn by ann;")
    assert lines[1].startswith("supersedes review 1: normal by ann at ")
    assert str(station.files["e1"]) in run(station, "reviews", "--pending").output  # back in the queue
    assert error_of(run(station, "review", station.sha["e2"], "--withdraw")) == \
        f"{station.sha['e2']} has no review to withdraw"
    both = run(station, "review", sha, "--withdraw", "--label", "normal")
    assert both.exit_code == 2 and "give --label normal|abnormal, or --withdraw" in both.output
    assert run(station, "review", sha).exit_code == 2
