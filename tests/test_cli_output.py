"""One output convention and one exit-code table (docs/CLI.md#output-and-exit-codes), command by command: a bad option
value exits 2, an input error 1, a bug 70; every record-printing command takes --format json, prints one JSON document
with the same records as its text, and the old --json spellings still work with a note on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from inspector.cli import cli
from inspector.store.store import open_store
from tests.image_files import sample_image16, write_tiff16
from tests.store_rows import record_rejection, record_verdict
from tests.test_cli import COMMANDS

LEAVES = [(" ".join(p), c) for p, c in COMMANDS if not isinstance(c, click.Group)]
MODEL = "ab" * 32
# every command that prints records, and the formats it offers
FORMATS = {
    "verdicts": ["text", "csv", "json"], "rejections": ["text", "csv", "json"], "reviews": ["text", "csv", "json"],
    "status": ["text", "json"], "score": ["text", "json"], "explain": ["text", "json"], "model info": ["text", "json"],
    "dataset check": ["text", "json"], "cv": ["text", "json"], "evaluate": ["text", "json"],
    "rescore": ["text", "json"], "retrain": ["text", "json"], "user list": ["text", "json"],
    "config show": ["text", "json"], "export": ["csv", "json", "html"], "token list": ["text", "json"],
}
# per command: arguments that fail on the command's input or the station's state (exit 1), and a fragment of the error
INPUT_ERRORS = {
    "config check": (["config", "check", "junk.tif"], "is not valid TOML"),
    "config show": (["config", "show", "--config", "missing.toml"], "missing.toml does not exist"),
    "convert": (["convert", "junk.tif", "out.png"], "[not_an_image]"),
    "cv": (["cv", "nowhere"], "dataset folder nowhere does not exist"),
    "dataset check": (["dataset", "check", "nowhere"], "dataset folder nowhere does not exist"),
    "db backfill-serials": (["db", "backfill-serials"], "is empty: set the pattern that reads serial numbers"),
    "db copy": (["db", "copy", "sqlite:///nothere.db", "sqlite:///t.db"], "source database nothere.db does not exist"),
    "db upgrade": (["db", "upgrade", "--config", "bad.toml"], "infer.batch_size in bad.toml: must be positive"),
    "evaluate": (["evaluate", "missing.safetensors", "nowhere"], "dataset folder nowhere does not exist"),
    "explain": (["explain", "junk.tif", "--out", "o.png"], "[not_an_image]"),
    "export": (["export", "--format", "csv", "-o", "x.csv"], "no database at"),
    "export-labels": (["export-labels", "out"], "no database at"),
    "model info": (["model", "info", "junk.tif"], "model file junk.tif is damaged"),
    "model init": (["model", "init", "--out", "m.safetensors", "--method", "naive", "--weights", "nothere.pth"],
                   "model.weights file nothere.pth does not exist"),
    "rejections": (["rejections"], "no database at"),
    "rescore": (["rescore", "--model", "missing.safetensors"], "no model at missing.safetensors"),
    "retrain": (["retrain"], "config.toml: is empty: set it to the labeled dataset"),
    "review": (["review", "junk.tif", "--label", "normal"], "no database at"),
    "reviews": (["reviews"], "no database at"),
    "score": (["score", "junk.tif", "--model", "missing.safetensors"], "model file missing.safetensors does not exist"),
    "serve": (["serve", "--port", "0"], "no database at"),
    "status": (["status", "--config", "bad.toml"], "infer.batch_size in bad.toml: must be positive"),
    "synth": (["synth", "full"], "full is not empty"),
    "token add": (["token", "add", "bad!name"], "'bad!name' is not a token name"),
    "token list": (["token", "list", "--config", "missing.toml"], "missing.toml does not exist"),
    "token revoke": (["token", "revoke", "nobody"], "no token nobody"),
    "train": (["train", "nowhere"], "dataset folder nowhere does not exist"),
    "user add": (["user", "add", "bad name!", "--role", "viewer", "--no-password"], "is not a user name"),
    "user list": (["user", "list", "--config", "bad.toml"], "infer.batch_size in bad.toml: must be positive"),
    "user passwd": (["user", "passwd", "nobody", "--password-stdin"], "no user nobody"),
    "user remove": (["user", "remove", "nobody"], "no user nobody"),
    "user role": (["user", "role", "nobody", "viewer"], "no user nobody"),
    "verdicts": (["verdicts"], "no database at"),
    "watch": (["watch", "--once", "--config", "nocap.toml"], "watch.capture_dir in nocap.toml: folder"),
}
# per command: a value click itself refuses (exit 2), beside the unknown option every command refuses
BAD_VALUES = {
    "cv": ["cv", ".", "--methods", "naive,fancy"], "train": ["train", ".", "--input-size", "64by32"],
    "verdicts": ["verdicts", "--limit", "0"], "export": ["export", "--format", "pdf", "-o", "x"],
    "user add": ["user", "add", "x", "--role", "admin"], "serve": ["serve", "--port", "70000"],
    "retrain": ["retrain", "--epochs", "0"], "synth": ["synth", "out", "--abnormal-rate", "2"],
    "watch": ["watch", "--once=yes"], "review": ["review", "x", "--label", "ok"],
}


@pytest.fixture
def station(tmp_path):
    """A config whose database (SQLite, one rejection and three verdicts, one of them a duplicate) and capture
    folder live in tmp_path, plus the broken inputs the error cases name."""
    (tmp_path / "capture").mkdir()
    (tmp_path / "config.toml").write_text('[database]\nurl = "sqlite:///station.db"\n[watch]\ncapture_dir = "capture"\n')
    (tmp_path / "bad.toml").write_text("[infer]\nbatch_size = 0\n")
    (tmp_path / "nocap.toml").write_text('[watch]\ncapture_dir = "nowhere"\n')
    (tmp_path / "junk.tif").write_text("not an image\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    return tmp_path


def fill(station) -> None:
    cap = os.fsencode(station / "capture")
    with open_store(f"sqlite:///{station / 'station.db'}") as store:
        store.record_model(MODEL, "/models/detector.safetensors", "{}")
        for name, sha, p, verdict in ((b"a.tif", "1" * 64, 0.125, "normal"), (b"b \xff.tif", "2" * 64, 0.875, "abnormal"),
                                      (b"a copy.tif", "1" * 64, 0.125, "normal")):
            record_verdict(store, cap + b"/" + name, sha, 10, 1, MODEL, p, verdict, None, 0.5, "global", 0.1, 0.2)
        record_rejection(store, cap + b"/empty.tif", None, 0, 1, "not_an_image", "the file is empty (0 bytes)")


def run(station, *args, stdin: str | None = None):
    args = [str(a) for a in args]
    if "--config" not in args:
        args += ["--config", str(station / "config.toml")]
    return CliRunner().invoke(cli, args, input=stdin)


def json_of(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- the exit-code table ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n, _ in LEAVES])
def test_an_unknown_option_is_a_usage_error(name):
    result = CliRunner().invoke(cli, [*name.split(), "--no-such-option"])
    assert result.exit_code == 2 and "Error: No such option '--no-such-option'" in result.output


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_bad_option_value_is_a_usage_error(name, station, monkeypatch):
    monkeypatch.chdir(station)
    result = run(station, *BAD_VALUES[name])
    assert result.exit_code == 2, result.output
    assert re.search(r"Error: (Invalid value|Option '--once' does not take a value)", result.output), result.output


def test_every_command_has_an_input_error_case():
    assert sorted(INPUT_ERRORS) == sorted(n for n, _ in LEAVES), "add the new command's case to INPUT_ERRORS"


@pytest.mark.parametrize("name", sorted(INPUT_ERRORS))
def test_an_input_error_exits_1_with_one_error_line(name, station, monkeypatch):
    monkeypatch.chdir(station)
    args, fragment = INPUT_ERRORS[name]
    result = run(station, *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1].startswith("Error: ") and fragment in result.stderr
    assert "Traceback" not in result.output


def test_a_bug_exits_70_without_a_traceback(station, monkeypatch):
    import inspector.loop.overview

    def broken(*args, **kwargs):
        raise KeyError("peak_x")

    fill(station)
    monkeypatch.setattr(inspector.loop.overview, "station_overview", broken)
    result = run(station, "status")
    assert result.exit_code == 70
    assert result.output == ("Error: unexpected KeyError: 'peak_x' (run with INSPECTOR_DEBUG=1 for the traceback)\n")


@pytest.mark.parametrize("debug", ["", "1"])
def test_a_bug_exits_70_from_the_console_entry_point(station, debug):
    """The real entry point in a real process; the traceback only with INSPECTOR_DEBUG=1."""
    fill(station)
    code = ("import sys, inspector.loop.overview as o\n"
            "def broken(*a, **k): raise RuntimeError('boom')\n"
            "o.station_overview = broken\n"
            "from inspector.cli import main\n"
            "main(sys.argv[1:])\n")
    env = dict(os.environ, INSPECTOR_DEBUG=debug)
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(station / "config.toml"), "status"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 70
    assert proc.stderr.splitlines()[-1] == ("Error: unexpected RuntimeError: boom "
                                            "(run with INSPECTOR_DEBUG=1 for the traceback)")
    assert ("Traceback" in proc.stderr) == bool(debug)


def test_the_help_states_the_table():
    top = CliRunner().invoke(cli, ["--help"]).output
    for line in ("0   ok", "1   the command failed", "2   usage error", "3   retrain", "4   retrain", "70  unexpected"):
        assert line in top
    retrain = CliRunner().invoke(cli, ["retrain", "--help"]).output
    assert "1  configuration error" in retrain and "2  usage error" in retrain


# ---- one --format option ---------------------------------------------------------------------------------------
def test_every_record_command_offers_the_one_format_option():
    offered = {}
    for name, cmd in LEAVES:
        for param in cmd.params:
            if "--format" in getattr(param, "opts", []):
                offered[name] = list(param.type.choices)
    assert offered == FORMATS


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_an_unknown_format_is_a_usage_error(name):
    result = CliRunner().invoke(cli, [*name.split(), "--format", "xml"])
    assert result.exit_code == 2 and "Invalid value for '--format': 'xml' is not one of" in result.output


# ---- the JSON has the records of the text ----------------------------------------------------------------------
def table_rows(text: str) -> list[str]:
    return text.splitlines()[1:]  # below the header


def test_verdicts_and_rejections_json_has_the_text_records(station):
    fill(station)
    text = run(station, "verdicts")
    records = json_of(run(station, "verdicts", "--format", "json"))
    assert isinstance(records, list) and len(records) == len(table_rows(text.stdout)) == 3
    for record, row in zip(records, table_rows(text.stdout)):
        assert record["verdict"] in row.split() and f"{record['p_abnormal']:.3f}" in row
        assert os.path.basename(record["path"]) in row
    assert json.loads(run(station, "verdicts", "--format", "json", "--limit", "1").stdout) == records[:1]
    text = run(station, "rejections")
    records = json_of(run(station, "rejections", "--format", "json"))
    assert [(r["reason"], os.path.basename(r["path"])) for r in records] == [("not_an_image", "empty.tif")]
    assert len(table_rows(text.stdout)) == 1 and "not_an_image" in text.stdout and "empty.tif" in text.stdout


def test_reviews_json_has_the_text_records(station):
    fill(station)
    assert run(station, "review", "2" * 64, "--label", "abnormal", "--anomaly", "scratch", "--by", "ana").exit_code == 0
    text = run(station, "reviews").stdout
    (record,) = json_of(run(station, "reviews", "--format", "json"))
    (row,) = table_rows(text)
    assert (record["label"], record["reviewer"], record["anomalies"]) == ("abnormal", "ana", "scratch")
    assert row.split()[0] == str(record["id"]) and "abnormal" in row and "ana" in row
    assert json_of(run(station, "reviews", "--pending", "--format", "json")) == []
    assert run(station, "reviews", "--pending").stdout == "no verdicts wait for review\n"


def test_status_json_has_the_text_counts(station):
    fill(station)
    text = run(station, "status").stdout
    doc = json_of(run(station, "status", "--format", "json"))
    assert isinstance(doc, dict)
    for verdict, total in doc["verdicts_total"].items():
        assert f"{verdict} {doc['verdicts_today'].get(verdict, 0)}/{total}" in text
    assert f"files waiting  {doc['files_waiting']} in " in text and f"to review      {doc['to_review']} " in text


def test_user_list_json_has_the_text_records(station):
    assert run(station, "user", "list", "--format", "json").stdout == "[]\n"
    run(station, "user", "add", "bo", "--role", "viewer", "--no-password")
    run(station, "user", "add", "al", "--role", "reviewer", "--password-stdin", stdin="a long enough password\n")
    rows = [row.split() for row in table_rows(run(station, "user", "list").stdout)]
    records = json_of(run(station, "user", "list", "--format", "json"))
    assert [[r["name"], r["role"], *r["login"].split(), r["changed_at"]] for r in records] == rows
    assert all("hash" not in key for r in records for key in r)


def test_config_show_json_has_the_text_keys(station):
    text = run(station, "config", "show").stdout
    doc = json_of(run(station, "config", "show", "--format", "json"))
    sections = re.findall(r"^\[(\w+)\]\n((?:\w+ = .*\n)+)", text, re.M)
    shown = {f"{section}.{line.split(' = ')[0]}" for section, block in sections for line in block.splitlines()}
    assert shown == {k["key"] for k in doc["keys"]}
    from_file = {k["key"] for k in doc["keys"] if k["from"] == "file"}
    assert from_file == {"database.url", "watch.capture_dir"}


def test_model_info_score_and_explain_json_have_the_text_records(station, model_file, monkeypatch):
    monkeypatch.chdir(station)
    info = json_of(run(station, "model", "info", model_file, "--format", "json"))
    text = run(station, "model", "info", model_file).stdout
    assert re.search(rf"^sha256 +{info['sha256']}$", text, re.M) and re.search(rf"^threshold +{info['threshold']:g} ",
                                                                                text, re.M)
    image = write_tiff16(station / "scan.tif", sample_image16())
    scored = run(station, "score", image, "junk.tif", "--model", model_file, "--format", "json", "--device", "cpu")
    assert scored.exit_code == 1  # one file failed, in either format
    records = json.loads(scored.stdout)
    text = run(station, "score", image, "junk.tif", "--model", model_file, "--device", "cpu")
    assert text.exit_code == 1
    lines = text.stdout.splitlines()
    assert len(records) == len(lines) == 2
    assert lines[0].startswith(f"{records[0]['path']}: {records[0]['verdict']} P(abnormal)={records[0]['p_abnormal']:.4f}")
    assert records[1]["verdict"] == "rejected" and lines[1].endswith(f"[{records[1]['reason']}]")
    doc = json_of(run(station, "explain", image, "--model", model_file, "--out", "map.png", "--format", "json"))
    text = run(station, "explain", image, "--model", model_file, "--out", "map.png").stdout
    assert f"{doc['verdict']} P(abnormal)={doc['p_abnormal']:.4f}" in text or doc["verdict"] == "rescan"
    assert f"map peak at x={doc['peak'][0]}, y={doc['peak'][1]}" in text if doc["peak"] else "map peak" not in text


def test_dataset_check_json_has_the_text_problems(station, monkeypatch):
    monkeypatch.chdir(station)
    (station / "set").mkdir()
    write_tiff16(station / "set" / "ok.tif", sample_image16())
    (station / "set" / "labels.csv").write_text("path,bundle,label\nok.tif,b1,normal\ngone.tif,b1,abnormal\n")
    text = run(station, "dataset", "check", "set")
    doc = json.loads(run(station, "dataset", "check", "set", "--format", "json").stdout)
    assert text.exit_code == 1 and not doc["ok"]
    assert doc["problems"] and all(p["message"] in text.stdout for p in doc["problems"])


def test_rescore_json_has_the_text_records(station, model_file):
    fill(station)
    text = run(station, "rescore", "--model", model_file, "--device", "cpu")
    doc = json_of(run(station, "rescore", "--model", model_file, "--device", "cpu", "--format", "json"))
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[0] == (f"model {doc['model_sha256'][:12]}: {doc['scored']} of {doc['todo']} "
                                           f"recorded image(s) rescored, {len(doc['not_found'])} not found")
    assert doc["todo"] == 2 and doc["scored"] == 0  # two contents, neither file is on disk
    for missing in doc["not_found"]:
        assert f"not rescored {missing['sha256'][:12]}: {missing['reason']}" in text.stdout


def test_retrain_json_when_another_retrain_runs(station):
    """Exit 3 and the same reasons in the JSON as in the text; the progress goes to stderr."""
    from inspector.store.fleet import plant_lock

    fill(station)
    (station / "config.toml").write_text((station / "config.toml").read_text() + '[retrain]\nbase_dataset = "set"\n')
    with open_store(f"sqlite:///{station / 'station.db'}", station="line2") as other, \
            plant_lock(other, "retrain", "retrain"):
        text = run(station, "retrain")
        result = run(station, "retrain", "--format", "json")
    assert text.exit_code == result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 3 and doc["decision"] == "skipped: another retrain is running"
    assert doc["reasons"][0] in text.stdout and doc["reasons"][0] in result.stderr
    assert f"decision: {doc['decision']}" in text.stdout


# ---- the old spellings, one release --------------------------------------------------------------------------
def test_old_json_flag_and_format_values_still_work_with_a_note(station, model_file):
    fill(station)
    new = run(station, "model", "info", model_file, "--format", "json")
    old = run(station, "model", "info", model_file, "--json")
    assert old.exit_code == 0 and old.stdout == new.stdout
    assert old.stderr == "--json is deprecated; use --format json\n" and new.stderr == ""
    old = run(station, "verdicts", "--format", "table")
    assert old.stdout == run(station, "verdicts").stdout
    assert old.stderr == "--format table is deprecated; use --format text\n"
    old = run(station, "config", "show", "--format", "toml")
    assert old.stdout == run(station, "config", "show").stdout and "--format toml is deprecated" in old.stderr
    assert "--json" not in run(station, "score", "--help").output  # hidden


def test_output_file_takes_any_format(station, monkeypatch):
    """export writes a file (-o/--output; --out still works); the JSON of export is one document too."""
    monkeypatch.chdir(station)
    fill(station)
    for flag in ("-o", "--output", "--out"):
        result = run(station, "export", "--format", "json", flag, "out.json")
        assert result.exit_code == 0, result.output
        doc = json.loads((station / "out.json").read_text())
        assert doc["kind"] == "inspector-export" and len(doc["outcomes"]) == 4
