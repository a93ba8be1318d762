"""How the daemon meets its service manager: sd_notify datagrams (no dependencies; a no-op without
$NOTIFY_SOCKET), one log line per event on stderr (logsetup.log_to_stderr, the review station's too), and the pid
file that `inspector retrain` signals."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

from inspector.base.durable import write_atomic
from inspector.base.errors import InspectorError

NOTIFY_VAR = "NOTIFY_SOCKET"
PID_NAME = "inspector.pid"


def notify(message: str) -> bool:
    """Send e.g. READY=1 to systemd; returns False (and does nothing) when not run under systemd."""
    address = os.environ.get(NOTIFY_VAR, "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    # Non-blocking: a service manager that stops reading must never stall the daemon.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        sock.connect(address)
        sock.send(message.encode("utf-8"))
    except OSError:
        return False  # systemd gone, socket removed or its queue full: the daemon keeps working
    finally:
        sock.close()
    return True


def watchdog_interval_seconds() -> float | None:
    """Half of $WATCHDOG_USEC (systemd's advice), or None when no watchdog is asked for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2 / 1_000_000


def write_pid_file(state_dir: Path) -> Path:
    """state.dir/inspector.pid; refuses to start beside a live inspector, replaces a stale file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pid_path = state_dir / PID_NAME
    other = running_inspector(pid_path)
    if other and other != os.getpid():
        raise InspectorError(f"another inspector watch is running (pid {other}, {pid_path}); "
                             "stop it first, or remove the pid file if that process is not inspector")
    write_atomic(pid_path, f"{os.getpid()}\n")
    return pid_path


def read_pid(pid_path: Path) -> int | None:
    try:
        return int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


def running_inspector(pid_path: Path) -> int | None:
    """The pid in the file when that process is alive and is inspector; None for a stale or missing file."""
    pid = read_pid(pid_path)
    if not pid:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # no such process: the file is stale
    return pid if b"inspector" in cmdline else None


@contextlib.contextmanager
def pid_file(state_dir: Path) -> Iterator[Path]:
    """The pid file for the daemon's lifetime, removed on a clean exit (only if it is still ours)."""
    pid_path = write_pid_file(state_dir)
    try:
        yield pid_path
    finally:
        if read_pid(pid_path) == os.getpid():
            pid_path.unlink(missing_ok=True)
