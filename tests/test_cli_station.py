"""verdicts, status, rejections and db upgrade through click's CliRunner on a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from inspector.cli import cli
from inspector.base.times import TIME_FORMS, parse_time
from inspector.store.schema import SCHEMA_VERSION
from inspector.store.store import open_store
from tests.store_rows import record_rejection, record_verdict

MODEL = "ab" * 32
ODD_NAME = b"bad \xff\xfe name.tif"


@pytest.fixture
def config(tmp_path):
    """A config whose database and capture folder live in tmp_path."""
    (tmp_path / "capture").mkdir()
    path = tmp_path / "config.toml"
    path.write_text('[database]\nurl = "sqlite:///station.db"\n[watch]\ncapture_dir = "capture"\n')
    return path


def run(config, *args: str):
    return CliRunner().invoke(cli, [*args, "--config", str(config)])


@pytest.fixture
def filled(config, tmp_path):
    """Three verdicts (one a duplicate, one with a non-UTF-8 name) and one rejection."""
    cap = os.fsencode(tmp_path / "capture")
    with open_store(f"sqlite:///{tmp_path / 'station.db'}") as store:
        store.record_model(MODEL, "/models/detector.safetensors", "{}")
        record_verdict(store, cap + b"/a.tif", "1" * 64, 10, 1, MODEL, 0.125, "normal", None, 0.5, "global", 0.1, 0.2)
        record_verdict(store, cap + b"/" + ODD_NAME, "2" * 64, 10, 1, MODEL, 0.875, "abnormal", None, 0.5, "global",
                             0.1, 0.2)
        record_verdict(store, cap + b"/a copy.tif", "1" * 64, 10, 1, MODEL, 0.125, "normal", None, 0.5, "global",
                             0.1, 0.2)
        record_rejection(store, cap + b"/empty.tif", None, 0, 1, "not_an_image", "the file is empty (0 bytes)")
    return config


@pytest.mark.parametrize("args", [["verdicts"], ["status"], ["rejections"], ["db"], ["db", "upgrade"]])
def test_help(args):
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0
    assert result.output.startswith(f"Usage: cli {' '.join(args)}")


def test_verdicts_help_documents_path_raw_hex():
    result = CliRunner().invoke(cli, ["verdicts", "--help"])
    assert "path_raw_hex" in result.output and "today/yesterday" in result.output


def test_readers_before_the_database_exists(config, tmp_path):
    result = run(config, "verdicts")
    assert result.exit_code == 1
    assert result.output == (f"Error: no database at {tmp_path / 'station.db'} yet: start `inspector watch` "
                             "(or check database.url)\n")
    assert not (tmp_path / "station.db").exists()  # a reader never creates it


def test_error_line_from_the_real_entry_point(config, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "inspector", "--config", str(config), "rejections"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"Error: no database at {tmp_path / 'station.db'} yet: start `inspector watch` "
                                   "(or check database.url)")


def test_db_upgrade_creates_then_reports_current(config, tmp_path):
    result = run(config, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert result.output == f"database {tmp_path / 'station.db'}: schema created (version {SCHEMA_VERSION})\n"
    again = run(config, "db", "upgrade")
    assert again.output == f"database {tmp_path / 'station.db'}: schema current (version {SCHEMA_VERSION})\n"
    empty = run(config, "verdicts")
    assert empty.exit_code == 0 and empty.output == "no verdicts match\n"


def test_verdicts_table(filled, tmp_path):
    result = run(filled, "verdicts")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["TIME", "VERDICT", "P(ABNORMAL)", "PATH", "MODEL", "DUP"]
    assert len(lines) == 4  # header + 3 rows, no footer
    newest = lines[1]
    assert "a copy.tif" in newest and newest.rstrip().endswith("dup") and "0.125" in newest
    odd = next(line for line in lines if "bad" in line)
    assert "bad \\xff\\xfe name.tif" in odd and "abnormal" in odd and "0.875" in odd and MODEL[:12] in odd
    assert MODEL[:13] not in odd
    # Columns line up: every row has its path at the header's PATH offset.
    start = lines[0].index("PATH")
    assert all(line[start:].startswith(str(tmp_path / "capture")) for line in lines[1:])


def test_verdicts_table_says_where_a_moved_file_is_now(filled, tmp_path):
    cap = os.fsencode(tmp_path / "capture")
    with open_store(f"sqlite:///{tmp_path / 'station.db'}") as store:
        store.record_moved(cap + b"/a.tif", "1" * 64, str(tmp_path / "capture/processed/2026-11-29/a.tif"))
    lines = run(filled, "verdicts").output.splitlines()
    assert lines[0].split() == ["TIME", "VERDICT", "P(ABNORMAL)", "PATH", "MODEL", "DUP", "NOW", "AT"]
    moved = next(line for line in lines if "/a.tif" in line)
    assert moved.endswith(str(tmp_path / "capture/processed/2026-11-29/a.tif"))
    assert next(line for line in lines if "a copy.tif" in line).endswith("dup  -")


def test_status_counts_thousands_of_waiting_files_in_a_few_queries(config, tmp_path):
    """It made one query per waiting file (3-9 s for 5000); now one per few hundred."""
    import sqlalchemy as sa

    from inspector.loop.overview import count_waiting
    from inspector.base.configfile import load_config

    capture = tmp_path / "capture"
    capture.mkdir(exist_ok=True)
    for i in range(1200):
        (capture / f"scan-{i:04d}.tif").write_bytes(b"x")
    cfg = load_config(config)
    with open_store(f"sqlite:///{tmp_path / 'station.db'}") as store:
        st = (capture / "scan-0000.tif").stat()
        record_verdict(store, os.fsencode(capture / "scan-0000.tif"), "1" * 64, st.st_size, st.st_mtime_ns, MODEL,
                             0.1, "normal", None, 0.5, "global", 0.1, 0.1)
        queries = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
        assert count_waiting(cfg, store) == 1199
    assert len([q for q in queries if q.lstrip().upper().startswith("SELECT")]) <= 10


def test_verdicts_json_recovers_exact_name(filled, tmp_path):
    result = run(filled, "verdicts", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 3
    odd = next(r for r in rows if r["verdict"] == "abnormal")
    assert bytes.fromhex(odd["path_raw_hex"]) == os.fsencode(tmp_path / "capture") + b"/" + ODD_NAME
    assert odd["p_abnormal"] == 0.875 and odd["model_sha256"] == MODEL and odd["duplicate"] is False
    dup = rows[0]
    assert dup["duplicate"] is True and dup["duplicate_of"] == str(tmp_path / "capture" / "a.tif")
    assert datetime.fromisoformat(dup["time"]).tzinfo is not None


def test_verdicts_csv_and_filters(filled):
    result = run(filled, "verdicts", "--format", "csv", "--verdict", "normal")
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["a copy.tif", "a.tif"]
    assert run(filled, "verdicts", "--format", "csv", "--path", "*copy*").output.count("\n") == 2  # header + 1
    assert json.loads(run(filled, "verdicts", "--format", "json", "--model", "abab").output)
    assert json.loads(run(filled, "verdicts", "--format", "json", "--model", "cdcd").output) == []
    none = run(filled, "verdicts", "--format", "csv", "--verdict", "rescan")
    assert none.output.startswith("time,verdict,p_abnormal,") and none.output.count("\n") == 1


def test_verdicts_table_limit_footer(config, tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'station.db'}") as store:
        for i in range(55):
            record_verdict(store, f"/cap/{i}.tif", f"{i:064x}", 1, 1, MODEL, 0.1, "normal", None, 0.5, "global",
                                 0.1, 0.1)
    table = run(config, "verdicts")
    lines = table.output.splitlines()
    assert len(lines) == 52 and lines[-1] == "50 of 55 shown; --limit to see more"
    assert run(config, "verdicts", "--limit", "3").output.splitlines()[-1] == "3 of 55 shown; --limit to see more"
    assert len(json.loads(run(config, "verdicts", "--format", "json").output)) == 55  # unlimited for scripts
    assert len(json.loads(run(config, "verdicts", "--format", "json", "--limit", "4").output)) == 4
    assert run(config, "verdicts", "--limit", "0").exit_code == 2


def test_since_forms(filled):
    for value in ("1h", "30m", "2d", "today", "yesterday", datetime.now().strftime("%Y-%m-%d"),
                  (datetime.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")):
        result = run(filled, "verdicts", "--since", value, "--format", "json")
        assert result.exit_code == 0, (value, result.output)
        assert len(json.loads(result.output)) == 3, value
    future = (datetime.now() + timedelta(days=2)).strftime("%Y-%m-%d")
    assert json.loads(run(filled, "verdicts", "--since", future, "--format", "json").output) == []
    assert json.loads(run(filled, "verdicts", "--until", "1h", "--format", "json").output) == []


def test_bad_since_names_the_accepted_forms(filled):
    result = run(filled, "verdicts", "--since", "last tuesday")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for '--since': 'last tuesday' is not a time: use {TIME_FORMS}")
    assert "2026-11-22T08:00" in TIME_FORMS and "30m" in TIME_FORMS and "yesterday" in TIME_FORMS


def test_parse_time_local_and_relative(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Copenhagen")
    time.tzset()
    try:
        now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)  # 13:00 in Copenhagen (UTC+1)
        assert parse_time("1h", now) == datetime(2026, 11, 22, 11, 0, tzinfo=timezone.utc)
        assert parse_time("2d", now) == datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
        assert parse_time("today", now) == datetime(2026, 11, 21, 23, 0, tzinfo=timezone.utc)
        assert parse_time("yesterday", now) == datetime(2026, 11, 20, 23, 0, tzinfo=timezone.utc)
        assert parse_time("2026-11-22T08:00", now) == datetime(2026, 11, 22, 7, 0, tzinfo=timezone.utc)
        assert parse_time("2026-07-01", now) == datetime(2026, 6, 30, 22, 0, tzinfo=timezone.utc)  # summer time
        with pytest.raises(ValueError, match="is not a time"):
            parse_time("5 parsecs", now)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_rejections_table_and_json(filled):
    table = run(filled, "rejections")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == ["TIME", "REASON", "PATH", "MESSAGE"]
    assert "not_an_image" in lines[1] and lines[1].endswith("the file is empty (0 bytes)")
    rows = json.loads(run(filled, "rejections", "--format", "json").output)
    assert rows[0]["reason"] == "not_an_image" and rows[0]["path"].endswith("/empty.tif")
    assert json.loads(run(filled, "rejections", "--since", "1h", "--until", "30m", "--format", "json").output) == []


def test_status_counts_and_waiting_files(filled, tmp_path):
    cap = tmp_path / "capture"
    (cap / "a.tif").write_bytes(b"x" * 10)
    os.utime(cap / "a.tif", ns=(1, 1))  # matches its verdict's size/mtime: has an outcome
    (cap / "new1.tif").write_bytes(b"x")
    (cap / "sub").mkdir()
    (cap / "sub" / "new2.TIFF").write_bytes(b"x")
    (cap / ".hidden.tif").write_bytes(b"x")
    (cap / "writing.tif.part").write_bytes(b"x")
    (cap / "notes.txt").write_bytes(b"x")
    (cap / "processed").mkdir()
    (cap / "processed" / "done.tif").write_bytes(b"x")
    result = run(filled, "status")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"model          {MODEL[:12]}  /models/detector.safetensors" in out
    assert "verdicts       abnormal 1/1, normal 1/1  (today/total)" in out  # the copy of a.tif: a duplicate
    assert "rejections     not_an_image 1/1  (today/total)" in out
    assert "duplicates     1/1  (today/total)" in out
    assert f"files waiting  2 in {cap}" in out
    data = json.loads(run(filled, "status", "--format", "json").output)
    assert data["files_waiting"] == 2 and data["model"]["sha256"] == MODEL
    assert data["verdicts_total"] == {"abnormal": 1, "normal": 1} and data["last_verdict_at"]


def test_status_without_capture_dir(filled, tmp_path):
    (tmp_path / "capture").rmdir()
    result = run(filled, "status")
    assert result.exit_code == 0
    assert f"files waiting  unknown: capture folder {tmp_path / 'capture'} does not exist" in result.output
    assert json.loads(run(filled, "status", "--format", "json").output)["files_waiting"] is None


def test_status_waiting_through_a_symlinked_capture_dir(config, tmp_path):
    """The daemon records real paths; a capture_dir reached through a symlink must still match them."""
    (tmp_path / "capture").rmdir()
    real = tmp_path / "scans"
    real.mkdir()
    (tmp_path / "capture").symlink_to(real)
    (real / "done.tif").write_bytes(b"x" * 4)
    (real / "todo.tif").write_bytes(b"x")
    st = os.stat(real / "done.tif")
    with open_store(f"sqlite:///{tmp_path / 'station.db'}") as store:
        record_verdict(store, os.fsencode(real / "done.tif"), "3" * 64, st.st_size, st.st_mtime_ns, MODEL, 0.2,
                             "normal", None, 0.5, "global", 0.1, 0.1)
    assert json.loads(run(config, "status", "--format", "json").output)["files_waiting"] == 1
