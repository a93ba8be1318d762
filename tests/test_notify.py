"""systemd notify: datagrams on a real AF_UNIX socket, a no-op without $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness import wait_for
from inspector.base.errors import InspectorError
from inspector.station.notify import notify, pid_file, watchdog_interval_seconds, write_pid_file


@pytest.fixture
def listener(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_without_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_sends_a_datagram(listener):
    assert notify("READY=1") is True
    assert notify("STATUS=scored 3, abnormal 1, rejected 0, queued 2") is True
    assert listener.recv(4096) == b"READY=1"
    assert listener.recv(4096) == b"STATUS=scored 3, abnormal 1, rejected 0, queued 2"


def test_abstract_socket(monkeypatch):
    name = f"inspector-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()


def test_full_socket_never_blocks(listener):
    sent = 0
    for _ in range(10_000):  # nobody reads: the queue fills, then notify gives up instead of waiting
        if not notify("WATCHDOG=1"):
            break
        sent += 1
    assert 0 < sent < 10_000
    assert listener.recv(4096) == b"WATCHDOG=1"


def test_gone_socket_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert notify("WATCHDOG=1") is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_seconds() is None
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert watchdog_interval_seconds() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_seconds() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog_interval_seconds() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval_seconds() is None


def test_pid_file_refuses_a_second_daemon_and_replaces_a_stale_one(tmp_path):
    state = tmp_path / "var"
    state.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "inspector"])
    try:
        wait_for(lambda: b"inspector" in Path(f"/proc/{other.pid}/cmdline").read_bytes(), 10, "the child's exec")
        (state / "inspector.pid").write_text(f"{other.pid}\n")
        with pytest.raises(InspectorError, match=f"another inspector watch is running \\(pid {other.pid}"):
            write_pid_file(state)
    finally:
        other.kill()
        other.wait()
    assert write_pid_file(state).read_text() == f"{os.getpid()}\n"  # the old one is gone: stale


def test_pid_file_is_removed_on_exit_only_if_still_ours(tmp_path):
    with pid_file(tmp_path / "var") as path:
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()
    with pid_file(tmp_path / "var") as path:
        path.write_text("999999999\n")  # another daemon took over meanwhile
    assert path.read_text() == "999999999\n"
