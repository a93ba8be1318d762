"""The systemd units: required keys present, and `systemd-analyze verify` finds no syntax error."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

UNITS = ("inspector.service", "inspector-retrain.service", "inspector-retrain.timer")


def read_unit(path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}}; systemd allows repeated keys, configparser does not."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}: not a key=value line: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= missing"
    return values[-1]


HARDENING = {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
             "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
             "RestrictAddressFamilies": "AF_UNIX", "RestrictNamespaces": "yes", "LockPersonality": "yes",
             "SystemCallArchitectures": "native", "CapabilityBoundingSet": "", "User": "inspector",
             "Group": "inspector"}


def test_daemon_unit_keys(repo_root):
    unit = read_unit(repo_root / "systemd" / "inspector.service")
    svc = "Service"
    assert one(unit, svc, "Type") == "notify"
    assert one(unit, svc, "NotifyAccess") == "main"
    assert one(unit, svc, "WatchdogSec") == "60"
    assert one(unit, svc, "Restart") == "on-failure"
    assert one(unit, svc, "RestartSec") == "5"
    assert one(unit, svc, "TimeoutStopSec") == "60"
    assert one(unit, svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, svc, "ExecStart").split() == [
        "/opt/inspector/.venv/bin/inspector", "--config", "/etc/inspector/config.toml", "watch"]
    assert one(unit, svc, "StateDirectory") == "inspector"
    assert one(unit, svc, "WorkingDirectory") == "/var/lib/inspector"
    assert set(one(unit, svc, "ReadWritePaths").split()) == {"/srv/capture", "/var/lib/inspector"}
    for key, value in HARDENING.items():
        assert one(unit, svc, key) == value, key
    assert one(unit, svc, "MemoryDenyWriteExecute") == "no"  # PyTorch JIT
    assert "PrivateDevices" not in unit[svc]  # it would hide /dev/nvidia*
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_retrain_units_keys(repo_root):
    svc = read_unit(repo_root / "systemd" / "inspector-retrain.service")
    assert one(svc, "Service", "Type") == "oneshot"
    assert one(svc, "Service", "Nice") == "10"
    argv = one(svc, "Service", "ExecStart").split()
    assert argv == ["/opt/inspector/.venv/bin/inspector", "--config", "/etc/inspector/config.toml", "retrain"]
    assert one(svc, "Service", "SuccessExitStatus") == "3"  # not promoted is a normal night
    for key, value in HARDENING.items():
        assert one(svc, "Service", key) == value, key
    assert "PrivateDevices" not in svc["Service"]
    timer = read_unit(repo_root / "systemd" / "inspector-retrain.timer")
    assert one(timer, "Timer", "OnCalendar") == "*-*-* 02:30"
    assert one(timer, "Timer", "Persistent") == "true"
    assert one(timer, "Timer", "RandomizedDelaySec") == "10m"
    assert one(timer, "Install", "WantedBy") == "timers.target"


def verify(folder, names) -> tuple[int, list[str]]:
    """Run systemd-analyze verify; return its exit code and the lines that are real unit errors.

    With ExecStart rewritten to /bin/true, what is left to report is syntax: systemd logs bad keys and
    values as "FILE:LINE: ..." warnings and still exits 0, so those lines count as failures. Lines about
    the host (no running systemd, the inspector user missing) are filtered out: they name no unit line.
    """
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(folder / n) for n in names]],
                          capture_output=True, text=True, timeout=120)
    unit_line = re.compile(r"^(?:%s):\d+: " % "|".join(re.escape(str(folder / n)) for n in names))
    errors = [line for line in proc.stderr.splitlines() if unit_line.match(line)]
    return proc.returncode, errors


def copy_for_verify(repo_root, tmp_path, names=UNITS):
    """The units with their ExecStart binary replaced by /bin/true (the venv is not installed here)."""
    for name in names:
        text = (repo_root / "systemd" / name).read_text()
        text = text.replace("ExecStart=/opt/inspector/.venv/bin/inspector", "ExecStart=/bin/true")
        (tmp_path / name).write_text(text)


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed: apt-get install systemd")


@needs_analyze
def test_systemd_analyze_verify(repo_root, tmp_path):
    copy_for_verify(repo_root, tmp_path)
    code, errors = verify(tmp_path, UNITS)
    assert errors == [] and code == 0, errors


@needs_analyze
def test_verify_check_catches_a_bad_key(repo_root, tmp_path):
    copy_for_verify(repo_root, tmp_path, ("inspector.service",))
    unit = tmp_path / "inspector.service"
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy").replace("NoNewPrivileges=", "NoNewPriv="))
    code, errors = verify(tmp_path, ("inspector.service",))
    assert len(errors) == 2, errors
    assert "Failed to parse service type" in errors[0] and "Unknown key" in errors[1]


@needs_analyze
def test_security_score_logged(repo_root, tmp_path):
    copy_for_verify(repo_root, tmp_path, ("inspector.service",))
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(tmp_path / "inspector.service")],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "offline" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    score = re.search(r"Overall exposure level for \S+: (.*)", proc.stdout)
    assert score, proc.stdout[-500:] + proc.stderr[-500:]
    print(f"systemd-analyze security: inspector.service exposure {score.group(1)}")
