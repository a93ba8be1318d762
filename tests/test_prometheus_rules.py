"""The alert rules shipped in deploy/prometheus/: valid for Prometheus (`promtool check rules`), and each alert
shown firing on the series that should fire it, and silent on those beside it (`promtool test rules` on the unit
tests there). promtool is Debian's `prometheus` package (scripts/install-test-tools.sh installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "inspector-rules.yml"
UNIT_TESTS = sorted(RULES_DIR.glob("inspector-rules-test*.yml"))

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="promtool is not installed (Debian: apt-get install prometheus; "
                                       "scripts/install-test-tools.sh)")


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_rules_file_is_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_each_alert_fires_in_the_unit_tests():
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    tested = {name for path in UNIT_TESTS for name in re.findall(r"alertname: (\w+)", path.read_text())}
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}"
    result = promtool("test", "rules", *(p.name for p in UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_a_broken_rule_or_a_wrong_expectation_fails(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("> 3 * inspector_heartbeat_interval_seconds",
                                                "> 3 * (inspector_heartbeat_interval_seconds"))
    assert promtool("check", "rules", str(broken)).returncode != 0
    for path in UNIT_TESTS:
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 3 * inspector_heartbeat_interval_seconds",
                                                                 "> 30 * inspector_heartbeat_interval_seconds"))
    result = promtool("test", "rules", *(p.name for p in UNIT_TESTS), cwd=tmp_path)
    assert result.returncode != 0 and "InspectorStationNotResponding" in result.stdout + result.stderr
