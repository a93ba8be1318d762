"""The one harness that runs a real `inspector watch`: a subprocess on a config, READY awaited on a real notify
socket, files dropped into its capture folder, verdicts awaited from its STATUS, signals sent, stopped. The tests
(tests/daemon_helpers.py's fixtures, tests/reliability, the plant) and the benchmarks (bench/daemon_latency.py,
bench/fleet.py) all use it; standard library only, so a benchmark imports it as `tests.harness`."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent  # the checkout whose package the processes run


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll `condition` until it is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET; every datagram read is kept in
    `messages`, in order.

    listen=True: a thread of its own reads every datagram as it comes (the daemon sends without blocking and
    drops what a full queue refuses, so a test that looks elsewhere for a while loses nothing). listen=False:
    the caller reads, asleep in recv() while it waits, or by select() on this object: on a 2-core machine a
    benchmark that polled would take CPU from the daemon it measures."""

    def __init__(self, path: Path, listen: bool = True):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self._arrived = threading.Condition()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if listen:
            self.sock.settimeout(0.1)
            self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
            self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                message = self.sock.recv(4096).decode(errors="replace")
            except (socket.timeout, OSError):
                continue
            with self._arrived:
                self.messages.append(message)
                self._arrived.notify_all()

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, timeout: float) -> bool:
        """Read one datagram on this thread (listen=False), waiting up to `timeout` seconds; True if one came."""
        self.sock.settimeout(timeout)
        try:
            self.messages.append(self.sock.recv(4096).decode(errors="replace"))
        except socket.timeout:
            return False
        return True

    def drain(self) -> list[str]:
        """Every datagram waiting now, read on this thread without waiting (listen=False); returns them."""
        first = len(self.messages)
        while select.select([self.sock], [], [], 0)[0]:
            self.messages.append(self.sock.recv(4096).decode(errors="replace"))
        return self.messages[first:]

    def _await_more(self, seen: int, timeout: float) -> None:
        """Until more than `seen` messages are kept, or `timeout` seconds."""
        if self._thread is None:
            if self.receive(timeout):
                self.drain()
            return
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.messages) > seen, timeout)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str,
                 gone: Callable[[], bool] | None = None) -> str | None:
        """The first message, kept or still to come, for which `predicate` holds; fails after `timeout` seconds.
        None once `gone()` holds (the sender has ended) and a last look at the queue found none."""
        deadline = time.monotonic() + timeout
        seen, ended = 0, False
        while True:
            new = self.messages[seen:]
            seen += len(new)
            hit = next((m for m in new if predicate(m)), None)
            if hit is not None or ended:
                return hit
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            if gone is not None and gone():
                ended, left = True, 0.2  # what it sent just before it ended may still be on its way
            self._await_more(seen, min(left, 0.5))

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock.close()
        self.path.unlink(missing_ok=True)


class DaemonProcess:
    """`inspector watch --config CONFIG` as a real subprocess in `folder` (its cwd), with a real notify socket;
    stdout and stderr kept in a log file there.

    extra_env: added to the environment (INSPECTOR_FAULT runs it under tests/fault_runner.py, which injects the
    fault; the service reads no fault settings). prefix: a command it runs under (`faketime +10m`): then it gets
    a process group of its own, so that close() ends the prefix and its child together. omp_threads: its
    OMP_NUM_THREADS. listen: see NotifySocket (False for a benchmark). stop_seconds: close() first stops it with
    SIGTERM and waits up to that long for its clean exit (a benchmark, whose figures include the stop); 0, a
    test's: SIGKILL at once. ready_timeout: how long wait_ready() waits for READY=1 unless told (a benchmark's
    station, loading a full-size model on a busy machine, is given longer)."""

    def __init__(self, folder: Path, config: Path, extra_env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = (), omp_threads: int = 1, listen: bool = True, stop_seconds: float = 0,
                 ready_timeout: float = 60):
        self.folder = folder
        self.stop_seconds = stop_seconds
        self.ready_timeout = ready_timeout
        self.capture = capture_dir(config)
        sock_path = folder / f"notify-{time.monotonic_ns()}.sock"
        if len(os.fsencode(sock_path)) > 100:  # AF_UNIX paths are limited to 108 bytes
            sock_path = Path(tempfile.gettempdir()) / f"inspector-{os.getpid()}-{time.monotonic_ns()}.sock"
        self.notify = NotifySocket(sock_path, listen)
        self.log_path = folder / f"daemon-{time.monotonic_ns()}.log"
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), OMP_NUM_THREADS=str(omp_threads),
                   **(extra_env or {}))
        env.pop("INSPECTOR_DEBUG", None)
        self._log = open(self.log_path, "wb")
        program = [str(Path(__file__).with_name("fault_runner.py"))] if "INSPECTOR_FAULT" in env else ["-m", "inspector"]
        self.grouped = bool(prefix)
        self.proc = subprocess.Popen([*prefix, sys.executable, *program, "watch", "--config", str(config)],
                                     cwd=folder, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=self.grouped)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in the daemon log")

    def wait_notify(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first notify message for which `predicate` holds; the daemon's exit before it fails at once."""
        found = self.notify.wait_for(predicate, timeout, what, gone=lambda: self.proc.poll() is not None)
        if found is None:
            raise AssertionError(f"daemon exited with {self.proc.returncode} before {what}:\n{self.log()}")
        return found

    def wait_ready(self, timeout: float | None = None) -> None:
        """READY=1 within `timeout` seconds (else ready_timeout)."""
        self.wait_notify(lambda message: "READY=1" in message, self.ready_timeout if timeout is None else timeout,
                         "READY=1 from the daemon")

    def wait_scored(self, n: int, timeout: float) -> None:
        """Until the daemon's STATUS says `scored n` or more."""
        self.wait_notify(lambda message: any(int(m) >= n for m in re.findall(r"scored (\d+)", message)),
                         timeout, f"{n} verdicts")

    def drop(self, path: Path, link: bool = False) -> Path:
        """Into the capture folder whole: a rename, as a careful scanner finishes a file, or a hard link (the
        staged file stays, for another run); no copy, so that dropping costs the daemon's CPU nothing."""
        target = self.capture / path.name
        (os.link if link else os.rename)(path, target)
        return target

    def peak_rss_mb(self) -> float:
        """VmHWM: the highest resident set size of the daemon process so far."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as systemd stops it, and up to `timeout` seconds for its clean exit; SIGKILL after that."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def close(self) -> None:
        """Stopped (stop_seconds) or killed, whatever is left of it SIGKILLed; the log and the socket closed."""
        if self.stop_seconds > 0:
            self.stop(self.stop_seconds)
        if self.grouped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()
        self.notify.close()

    def dump_threads(self) -> None:
        """Where each of its threads is, into its log (faulthandler on SIGUSR1), if it is still running."""
        if self.proc.poll() is None:
            self.send(signal.SIGUSR1)
            with contextlib.suppress(AssertionError):
                self.wait_log("most recent call first", timeout=5)


def run_inspector(config: Path, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """`inspector --config CONFIG ARGS...` as its own process (this interpreter, this checkout's package), output
    captured as text."""
    return subprocess.run([sys.executable, "-m", "inspector", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def capture_dir(config: Path) -> Path:
    """watch.capture_dir of a config file, relative to its folder as the daemon takes it."""
    with open(config, "rb") as fh:
        watch = tomllib.load(fh).get("watch", {})
    return config.parent / watch.get("capture_dir", "capture")


@contextlib.contextmanager
def running(folder: Path, config: Path, **kwargs) -> Iterator[DaemonProcess]:
    """A DaemonProcess, READY; on a failure its threads' stacks and its log are printed; killed on the way out."""
    daemon = DaemonProcess(folder, config, **kwargs)
    try:
        daemon.wait_ready()
        yield daemon
    except BaseException:
        daemon.dump_threads()
        print(daemon.log())
        raise
    finally:
        daemon.close()
