"""`inspector status --check` (loop/health.py): the alert rules' conditions judged from a real SQLite store filled
through the store's own writers, and the command's one line and exit code (0 ok, 1 warning, 2 critical)."""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from inspector.base.configfile import load_config
from inspector.cli import cli
from inspector.loop.health import CRITICAL, OK, WARNING, Health, rate_findings, stations_findings
from inspector.store.store import open_store
from store_rows import record_rejection, record_verdict

MODEL = "ab" * 32


def station_config(tmp_path: Path, alerts: str = "") -> Path:
    """A station's config; the disk thresholds at 0 unless `alerts` sets them, so this machine's own free space
    (a test host's disk may be nearly full) never decides a test about something else."""
    (tmp_path / "capture").mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    if "disk_" not in alerts:
        alerts = "disk_warning_percent = 0.0\ndisk_critical_percent = 0.0\n" + alerts
    path.write_text('[database]\nurl = "sqlite:///inspector.db"\n[watch]\ncapture_dir = "capture"\n'
                    '[state]\ndir = "var"\n[station]\nname = "line1"\n[alerts]\n' + alerts)
    return path


@pytest.fixture
def store(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'inspector.db'}", station="line1") as store:
        store.record_model(MODEL, "models/detector.safetensors", "{}")
        yield store


class Writer:
    """Verdicts and rejections through the store's writers, each file its own name and content."""

    def __init__(self, store):
        self.store = store
        self.n = 0

    def verdicts(self, total: int, abnormal: int) -> None:
        for i in range(total):
            self.n += 1
            verdict = "abnormal" if i < abnormal else "normal"
            record_verdict(self.store, f"/capture/scan-{self.n:05d}.tif", f"{self.n:064x}", 100, self.n, MODEL,
                           0.9 if verdict == "abnormal" else 0.1, verdict, None, 0.5, "global", 0.1, 0.1)

    def rejections(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            record_rejection(self.store, f"/capture/bad-{self.n:05d}.tif", None, 10, self.n, "not_an_image", "text")


def beat(store, name: str, heartbeat_seconds: float = 3600.0, queued: int = 0) -> None:
    store.beat(dict(name=name, host="box", pid=os.getpid(), run_id=f"run-{name}", capture_dir="/capture",
                    model_sha256=MODEL, inspector_version="test", heartbeat_seconds=heartbeat_seconds, scored=0,
                    rejected=0, queued=queued, paused_reason=None, status="scored 0"))


def last_hour(store, before: tuple[int, int], hour: tuple[int, int], rejected: tuple[int, int] = (0, 0),
              **alerts: object):
    """rate_findings an hour after the baseline's rows: (total, abnormal) verdicts and rejections before the mark
    (the baseline) and after it (the last hour, judged at mark + 1 h)."""
    from inspector.base.config import AlertsConfig

    writer = Writer(store)
    writer.verdicts(*before)
    writer.rejections(rejected[0])
    _, mark = store.station_rows()  # the database's clock between the two
    writer.verdicts(*hour)
    writer.rejections(rejected[1])
    return rate_findings(AlertsConfig(**alerts), store, None, mark + timedelta(hours=1))


def warnings(findings) -> list[str]:
    return [f.text for f in findings if f.level == WARNING]


def test_an_abnormal_rate_far_above_the_baseline_warns(store):
    found = last_hour(store, before=(200, 4), hour=(30, 10))
    assert warnings(found) == ["abnormal rate 33.3% in the last hour (10 of 30), baseline 2.0% over 7 days"]


def test_a_usual_rate_a_thin_hour_or_no_baseline_does_not_warn(tmp_path, store):
    assert warnings(last_hour(store, before=(200, 4), hour=(30, 2))) == []  # 6.7%: under 2 x the 5% floor
    with open_store(f"sqlite:///{tmp_path / 'thin.db'}", station="line1") as thin:
        assert warnings(last_hour(thin, before=(200, 4), hour=(19, 19))) == []  # fewer than 20 verdicts
    with open_store(f"sqlite:///{tmp_path / 'new.db'}", station="line1") as new:
        assert warnings(last_hour(new, before=(0, 0), hour=(40, 30))) == []  # nothing to compare with yet


def test_the_thresholds_come_from_the_config(store):
    found = last_hour(store, before=(200, 4), hour=(30, 2), abnormal_rate_floor=0.01, abnormal_min_verdicts=30)
    assert warnings(found) == ["abnormal rate 6.7% in the last hour (2 of 30), baseline 2.0% over 7 days"]


def test_a_rejection_spike_warns_and_a_few_rejections_do_not(tmp_path, store):
    found = last_hour(store, before=(10, 0), hour=(10, 0), rejected=(168, 12))
    assert warnings(found) == ["12 rejection(s) in the last hour, baseline 1.0 per hour"]
    with open_store(f"sqlite:///{tmp_path / 'few.db'}", station="line1") as few:
        assert warnings(last_hour(few, before=(10, 0), hour=(10, 0), rejected=(0, 9))) == []  # under rejection_min
    with open_store(f"sqlite:///{tmp_path / 'usual.db'}", station="line1") as usual:  # 12 an hour all week
        assert warnings(last_hour(usual, before=(10, 0), hour=(10, 0), rejected=(2016, 12))) == []


def test_a_station_not_responding_is_critical_and_a_clean_stop_only_when_asked_about(store):
    beat(store, "line1")
    beat(store, "line2", heartbeat_seconds=0.01)
    beat(store, "line3")
    store.station_stopped("line3", "run-line3")
    time.sleep(0.1)  # line2 misses three heartbeats
    rows, now = store.station_rows()
    found = stations_findings(rows, now, None)
    assert [(f.level, f.text.split(" (")[0]) for f in found] == [
        (CRITICAL, "station line2 not responding"), (OK, "1 station(s) running")]
    assert Health(found).code == CRITICAL
    assert re.fullmatch(r"CRITICAL: station line2 not responding \(last seen \d+ s ago\)", Health(found).line())
    assert [f.level for f in stations_findings(rows, now, "line1")] == [OK]
    assert stations_findings(rows, now, "line3")[0].text.startswith("station line3 stopped")
    assert [(f.level, f.text) for f in stations_findings(rows, now, "line9")] == [
        (CRITICAL, "no heartbeat from station 'line9'")]


def check(config: Path, *args: str):
    return CliRunner().invoke(cli, ["status", "--check", "--config", str(config), *args])


def test_the_command_says_ok_in_one_line_and_exits_0(tmp_path, store):
    beat(store, "line1")
    Writer(store).verdicts(4, 1)
    result = check(station_config(tmp_path))
    assert result.exit_code == OK, result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith("OK: 1 station(s) running; 4 verdict(s) in the last hour, 25.0% abnormal; "
                                    "0 file(s) waiting; state dir ")


def test_the_command_exits_2_for_a_station_not_responding_and_1_for_files_waiting(tmp_path, store):
    config = station_config(tmp_path, "waiting_files = 2\n")
    beat(store, "line1")
    for i in range(3):
        (tmp_path / "capture" / f"scan-{i}.tif").write_bytes(b"waiting")
    result = check(config)
    assert (result.exit_code, result.output) == (WARNING, f"WARNING: 3 files waiting in {tmp_path / 'capture'} "
                                                          "(more than 2)\n")
    beat(store, "line2", heartbeat_seconds=0.01, queued=5)
    time.sleep(0.1)
    result = check(config)
    assert result.exit_code == CRITICAL, result.output
    assert result.output.startswith("CRITICAL: station line2 not responding (last seen ")
    assert "; 3 files waiting in" in result.output  # the warnings follow the critical problem, on the one line
    result = check(config, "--station", "line1")
    assert result.exit_code == WARNING and "line2" not in result.output, result.output


def test_the_state_folders_disk_below_the_thresholds(tmp_path, store):
    beat(store, "line1")
    result = check(station_config(tmp_path, "disk_warning_percent = 100.0\n"))  # any real disk is below 100% free
    assert result.exit_code == WARNING and result.output.startswith("WARNING: state dir "), result.output
    assert "% free (" in result.output and "below 100%)" in result.output
    result = check(station_config(tmp_path, "disk_warning_percent = 100.0\ndisk_critical_percent = 100.0\n"))
    assert result.exit_code == CRITICAL and result.output.startswith("CRITICAL: state dir "), result.output


def test_no_database_is_critical_and_a_station_never_seen_too(tmp_path, store):
    result = check(station_config(tmp_path), "--station", "line9")
    assert (result.exit_code, result.output) == (CRITICAL, "CRITICAL: no heartbeat from station 'line9'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = check(station_config(elsewhere))
    assert result.exit_code == CRITICAL
    assert result.output.startswith("CRITICAL: the database cannot answer: no database at ")


@pytest.mark.parametrize("text, problem", [
    ("disk_warning_percent = 5.0\ndisk_critical_percent = 8.0\n", "alerts.disk_critical_percent"),
    ("abnormal_rate_factor = 1.0\n", "alerts.abnormal_rate_factor"),
    ("abnormal_rate_floor = 2.0\n", "alerts.abnormal_rate_floor"),
    ("baseline_days = 0\n", "alerts.baseline_days"),
    ("waiting_files = -1\n", "alerts.waiting_files"),
])
def test_impossible_thresholds_are_refused_by_name(tmp_path, text, problem):
    from inspector.base.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(station_config(tmp_path, text))
    assert caught.value.key == problem
