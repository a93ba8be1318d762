"""Serial numbers and lots from file names (station.serial_pattern): checked at config load, read by the real daemon
at capture, stored with each file version (schema 6), searched by `verdicts --serial/--lot`, kept by `rescore`,
carried by `db copy`, filled into older rows by `db backfill-serials`, and shown escaped by the web and the report."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from harness import run_inspector
from daemon_helpers import db_rows, make_model, write_config, write_image
from inspector.base.configfile import load_config
from inspector.base.errors import ConfigError
from inspector.base.serial import SerialFields, capture_name, compile_serial_pattern, match_serial
from inspector.cli import cli

PATTERN = r"(?P<lot>L\d+)-(?P<serial>SN\d+)"


def with_pattern(config, pattern: str = PATTERN):
    """The config with [station] serial_pattern (a TOML literal string: backslashes as they are)."""
    config.write_text(config.read_text() + f"[station]\nserial_pattern = '{pattern}'\n")
    return config


def settled(folder, *names: str, seed: int = 0) -> None:
    """Images in `folder`, written an hour ago (`watch --once` scores them at once)."""
    hour_ago = time.time() - 3600
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, seed=seed + i)
        os.utime(path, (hour_ago, hour_ago))


# ---- the pattern ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, message", [
    ("(?P<serial>SN[0-9+", "station.serial_pattern in {file}: is not a regular expression: unterminated character "
                           "set at position 13"),
    (r"(?P<lot>L\d+)-SN\d+", "station.serial_pattern in {file}: has no group named serial: write the serial number's "
                             r"part as (?P<serial>...), e.g. '(?P<lot>L\d+)-(?P<serial>SN\d+)'"),
    (r"(?P<bundle>B\d+)-(?P<serial>SN\d+)", "station.serial_pattern in {file}: has group(s) bundle: only serial and "
                                            "lot are recorded (a bundle comes from review.bundle_rule); make other "
                                            "groups unnamed, (?:...)"),
])
def test_a_bad_pattern_is_a_config_error_naming_the_key(tmp_path, pattern, message):
    config = with_pattern(write_config(tmp_path), pattern)
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value) == message.format(file=config)
    result = CliRunner().invoke(cli, ["verdicts", "--config", str(config)])  # every command refuses it, exit 1
    assert result.exit_code == 1 and result.output == f"Error: {message.format(file=config)}\n"
    checked = CliRunner().invoke(cli, ["config", "check", str(config)])
    assert checked.exit_code == 1 and "station.serial_pattern" in checked.output


def test_a_good_pattern_loads_and_no_pattern_is_the_default(tmp_path):
    assert load_config(write_config(tmp_path)).station.serial_pattern == ""
    assert load_config(with_pattern(write_config(tmp_path))).station.serial_pattern == PATTERN


def test_the_pattern_searches_the_name_relative_to_the_capture_folder(tmp_path):
    pattern = compile_serial_pattern(PATTERN)
    root = str(tmp_path / "capture")
    assert match_serial(pattern, capture_name(f"{root}/L07-SN123.tif", root)) == SerialFields("SN123", "L07")
    assert match_serial(pattern, capture_name(f"{root}/line3/scan-L7-SN9_b.tif", root)) == SerialFields("SN9", "L7")
    assert match_serial(pattern, capture_name(f"{root}/SN123.tif", root)) is None  # no lot part: no match
    assert capture_name(str(tmp_path / "elsewhere" / "L1-SN1.tif"), root) is None
    by_folder = compile_serial_pattern(r"(?P<lot>L\d+)/(?P<serial>SN\d+)")
    assert match_serial(by_folder, capture_name(f"{root}/L2/SN5.tif", root)) == SerialFields("SN5", "L2")
    assert match_serial(by_folder, capture_name(f"{root}/L2-SN5.tif", root)) is None
    optional = compile_serial_pattern(r"(?:(?P<lot>L\d+)-)?SN(?P<serial>\d*)")
    assert match_serial(optional, "SN4.tif") == SerialFields("4", None)  # the lot did not take part
    assert match_serial(optional, "SN.tif") is None  # an empty serial is none
    assert compile_serial_pattern("") is None and match_serial(None, "L1-SN1.tif") is None
    # a name that is not UTF-8 or holds a control character is matched as the station shows it: escaped
    assert capture_name(os.fsencode(root) + b"/L1-SN\xff\n.tif", root) == "L1-SN\\xff\\n.tif"


# ---- the real daemon --------------------------------------------------------------------------------------------
def test_the_daemon_records_serial_and_lot_and_verdicts_finds_them(tmp_path, database_url):
    config = with_pattern(write_config(tmp_path, database_url=database_url))
    sha_a = make_model(tmp_path / "models" / "detector.safetensors", seed=0)
    capture = tmp_path / "capture"
    settled(capture, "L01-SN001.tif", "L01-SN002.tif", "line2/L02-SN003.tif", "no-serial.tif", seed=300)
    (capture / "L02-SN004.tif").write_bytes((capture / "L01-SN001.tif").read_bytes())  # same content, its own serial
    os.utime(capture / "L02-SN004.tif", (time.time() - 3600,) * 2)
    proc = run_inspector(config, "watch", "--once")
    assert proc.returncode == 0, proc.stderr
    rows = db_rows(database_url, "SELECT path, serial, lot, status FROM images")
    by_name = {os.path.basename(path): (serial, lot) for path, serial, lot, _ in rows}
    assert by_name == {"L01-SN001.tif": ("SN001", "L01"), "L01-SN002.tif": ("SN002", "L01"),
                       "L02-SN003.tif": ("SN003", "L02"), "no-serial.tif": (None, None),
                       "L02-SN004.tif": ("SN004", "L02")}
    warned = [line for line in proc.stderr.splitlines() if "station.serial_pattern" in line]
    assert len(warned) == 1 and "WARNING" in warned[0] and "no-serial.tif" in warned[0], proc.stderr

    found = json.loads(run_inspector(config, "verdicts", "--serial", "SN002", "--format", "json").stdout)
    assert [(os.path.basename(r["path"]), r["serial"], r["lot"]) for r in found] == [("L01-SN002.tif", "SN002", "L01")]
    lot = json.loads(run_inspector(config, "verdicts", "--lot", "L02", "--format", "json").stdout)
    assert sorted(r["serial"] for r in lot) == ["SN003", "SN004"]
    assert run_inspector(config, "verdicts", "--serial", "SN999").stdout == "no verdicts match\n"
    table = run_inspector(config, "verdicts").stdout.splitlines()
    assert table[0].split()[-2:] == ["SERIAL", "LOT"] and any(re.search(r" SN003 +L02$", line) for line in table)
    csv_rows = run_inspector(config, "verdicts", "--format", "csv", "--serial", "SN001").stdout.splitlines()
    assert csv_rows[0].endswith(",serial,lot") and csv_rows[1].endswith(",SN001,L01")

    # a second pass records nothing new and warns of nothing again
    again = run_inspector(config, "watch", "--once")
    assert again.returncode == 0 and "station.serial_pattern" not in again.stderr

    # rescore: the new model's verdicts are listed with the serial the capture gave
    sha_b = make_model(tmp_path / "models" / "b.safetensors", seed=1)
    assert run_inspector(config, "rescore", "--model", str(tmp_path / "models" / "b.safetensors")).returncode == 0
    rescored = json.loads(run_inspector(config, "verdicts", "--model", sha_b[:12], "--serial", "SN004",
                                    "--format", "json").stdout)
    assert [(r["model_sha256"], r["serial"], r["lot"]) for r in rescored] == [(sha_b, "SN004", "L02")]
    assert json.loads(run_inspector(config, "verdicts", "--serial", "SN004", "--format", "json").stdout)[0][
        "model_sha256"] == sha_a  # the capture's verdict is still the one shown by default

    # the export carries them too
    out = tmp_path / "out.json"
    assert run_inspector(config, "export", "--format", "json", "--out", str(out)).returncode == 0
    outcomes = json.loads(out.read_text())["outcomes"]
    assert sorted((o["serial"], o["lot"]) for o in outcomes if o["serial"]) == [
        ("SN001", "L01"), ("SN002", "L01"), ("SN003", "L02"), ("SN004", "L02")]


# ---- schema 6 -------------------------------------------------------------------------------------------------
def test_a_schema_5_database_upgrades_past_6_and_backfill_fills_its_serials(tmp_path, database_url):
    from inspector.store.schema import SCHEMA_VERSION, alembic_command, alembic_revision, schema_info
    from inspector.store.store import open_store
    from tests.store_rows import record_verdict

    assert SCHEMA_VERSION >= 6  # 6 brought serial and lot
    capture = os.path.realpath(tmp_path / "capture")
    with open_store(database_url) as store:
        for i, name in enumerate(["L3-SN7.tif", "odd.tif"]):
            record_verdict(store, f"{capture}/{name}".encode(), f"{i:02d}" * 32, 5, 6, "ab" * 32, 0.2, "normal", None,
                           0.5, "global")
        record_verdict(store, b"/elsewhere/L4-SN8.tif", "ee" * 32, 5, 6, "ab" * 32, 0.2, "normal", None, 0.5, "global")
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:  # back to schema 5, as inspector before serial numbers left it
        alembic_command(conn, "downgrade", "0005")
        conn.execute(sa.update(schema_info).values(version=5))
    with engine.connect() as conn:
        assert alembic_revision(conn) == "0005"
        assert "serial" not in {c["name"] for c in sa.inspect(conn).get_columns("images")}
    engine.dispose()
    with open_store(database_url) as store:
        assert store.schema_action == "migrated" and store.schema_version() == SCHEMA_VERSION
        indexed = {tuple(ix["column_names"]) for ix in sa.inspect(store.engine).get_indexes("images")}
        assert {("serial",), ("lot",)} <= indexed
        with store.read() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM images WHERE serial IS NULL")).scalar() == 3
    config = write_config(tmp_path, database_url=database_url)
    missing = CliRunner().invoke(cli, ["db", "backfill-serials", "--config", str(config)])
    assert missing.exit_code == 1 and "station.serial_pattern" in missing.output and "is empty" in missing.output
    with_pattern(config)
    result = CliRunner().invoke(cli, ["db", "backfill-serials", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output == ("1 file(s) given a serial; 1 name(s) do not match station.serial_pattern; 1 file(s) "
                             "recorded outside watch.capture_dir left as they are\n")
    rows = db_rows(database_url, "SELECT path, serial, lot FROM images ORDER BY id")
    assert [(os.path.basename(p), s, lot) for p, s, lot in rows] == [
        ("L3-SN7.tif", "SN7", "L3"), ("odd.tif", None, None), ("L4-SN8.tif", None, None)]
    again = CliRunner().invoke(cli, ["db", "backfill-serials", "--config", str(config)])
    assert again.output.startswith("0 file(s) given a serial; 1 name(s)")


def test_db_copy_carries_serial_and_lot(tmp_path, database_url):
    from inspector.store.dbcopy import copy_database
    from inspector.store.store import FileVersion, Verdict, VerdictRecord, open_store

    source = f"sqlite:///{tmp_path / 'station.db'}"
    with open_store(source) as store:
        store.record_verdict(VerdictRecord(FileVersion(b"/cap/L1-SN1.tif", 5, 6, 7),
                                           Verdict("aa" * 32, "ab" * 32, 0.2, "normal", None, 0.5, "global"),
                                           "SN1", "L1"))
    summary = copy_database(source, database_url)
    assert summary.matches
    assert db_rows(database_url, "SELECT serial, lot FROM images") == [("SN1", "L1")]


# ---- shown as text ------------------------------------------------------------------------------------------------
def test_a_serial_with_markup_is_escaped_in_the_web_pages_and_the_report(tmp_path):
    from inspector.loop.export import render_report
    from inspector.store.store import open_store
    from inspector.web.app import create_app
    from web_station import EVIL_NAME, build_station, logged_in

    # the evil file's whole name before .tif is its serial: <img src=x onerror=alert(1)>
    st = build_station(tmp_path / "station", flagged=2, normal=1, scale=0.1, evil=True,
                       extra_config="serial_pattern = '^(?P<serial>[^/]+)\\.tif$'\n")
    backfill = CliRunner().invoke(cli, ["db", "backfill-serials", "--config", str(st.config)])
    assert backfill.output.startswith("3 file(s) given a serial"), backfill.output
    evil = st.flagged[0]
    assert evil["path"].name == EVIL_NAME
    shown = "&lt;img src=x onerror=alert(1)&gt;"
    with open_store(st.cfg.database.url, station=st.cfg.station_name) as store:
        client = logged_in(create_app(st.cfg, store))
        pages = {url: client.get(url).data.decode() for url in
                 ("/", f"/verdict/{evil['image_id']}", "/verdicts", "/verdicts?serial=<img src=x onerror=alert(1)>")}
        report, _ = render_report(store, st.cfg, "html")
    assert f'<dd class="serial" id="serial">{shown}</dd>' in pages["/"]  # the queue shows its serial
    assert f'<dd class="serial" id="serial">{shown}</dd>' in pages[f"/verdict/{evil['image_id']}"]
    assert f'<td class="serial">{shown}</td>' in pages["/verdicts"]
    searched = pages["/verdicts?serial=<img src=x onerror=alert(1)>"]
    assert re.search(r'id="result-count">1 verdict;', searched)
    assert f'name="serial" value="{shown}"' in searched  # the search box keeps what was searched, as text
    for url, html in pages.items():
        assert "<img src=x onerror" not in html, url
    assert f"<span class='serial'>serial {shown}</span>" in report and "<img src=x onerror" not in report
