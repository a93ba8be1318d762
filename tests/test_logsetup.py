"""The one logging setup (logsetup.log_to_stderr): `TIME LEVEL message` lines, and under the journal the syslog
priority in front of every line, checked byte for byte on a real file descriptor and from the real
`inspector watch` and `inspector serve` in subprocesses."""

from __future__ import annotations

import http.client
import logging
import os
import re
import subprocess
import sys

from urllib.parse import urlencode, urlsplit

import pytest

from daemon_helpers import make_model, wait_for, write_config, write_image
from web_station import PASSWORDS, token_of
from inspector.base.logsetup import is_journal, log_to_stderr, syslog_priority


def journal_env(path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.mark.parametrize("level, priority", [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                                             (logging.INFO, 6), (logging.DEBUG, 7), (25, 6), (45, 3), (1, 7)])
def test_syslog_priority(level, priority):
    assert syslog_priority(level) == priority


def log_events(stream, monkeypatch, level: str = "DEBUG") -> None:
    monkeypatch.setattr(sys, "stderr", stream)
    with log_to_stderr(level):
        log = logging.getLogger("inspector.daemon")
        log.debug("queued capture/a.tif")
        log.info("verdict normal p=0.1000 capture/a.tif (0.10 s)")
        log.warning("rejected capture/b.tif: truncated")
        log.error("database unavailable")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("unexpected error")
        logging.getLogger("inspector.audit").info("audit: login: ann (reviewer) from 127.0.0.1")
    stream.flush()


def test_journal_lines_carry_their_priority_byte_for_byte(tmp_path, monkeypatch):
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(path))
        assert is_journal(stream)
        log_events(stream, monkeypatch)
    data = path.read_bytes()
    head, _, rest = data.partition(b"<3>ERROR unexpected error\n")
    assert head == (b"<7>DEBUG queued capture/a.tif\n"
                    b"<6>INFO verdict normal p=0.1000 capture/a.tif (0.10 s)\n"
                    b"<4>WARNING rejected capture/b.tif: truncated\n"
                    b"<3>ERROR database unavailable\n")
    trace, _, tail = rest.rpartition(b"<3>ValueError: boom\n")
    assert trace.startswith(b"<3>Traceback (most recent call last):\n")
    assert all(line.startswith(b"<3>") for line in trace.splitlines()), "a traceback line without its priority"
    assert tail == b"<6>INFO audit: login: ann (reviewer) from 127.0.0.1\n"


def test_without_the_journal_lines_are_as_before(tmp_path, monkeypatch):
    path, other = tmp_path / "stderr", tmp_path / "elsewhere"
    other.write_text("")
    for env in (None, journal_env(other), "garbage"):  # unset; the journal's, but stderr was sent elsewhere; junk
        if env is None:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        else:
            monkeypatch.setenv("JOURNAL_STREAM", env)
        with open(path, "w") as stream:
            log_events(stream, monkeypatch, level="INFO")
        lines = path.read_text().splitlines()
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
        assert re.fullmatch(stamp + r"INFO verdict normal p=0\.1000 capture/a\.tif \(0\.10 s\)", lines[0]), lines
        assert re.fullmatch(stamp + r"WARNING rejected capture/b\.tif: truncated", lines[1])
        assert not any(line.startswith("<") for line in lines)
        assert "queued" not in path.read_text()  # DEBUG below log.level INFO


def test_the_audit_trail_is_kept_when_log_level_is_warning(tmp_path, monkeypatch):
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(path))
        log_events(stream, monkeypatch, level="WARNING")
    text = path.read_text()
    assert "<6>INFO audit: login: ann (reviewer) from 127.0.0.1\n" in text
    assert "verdict normal" not in text and "<4>WARNING rejected capture/b.tif: truncated\n" in text


def test_inspector_watch_under_the_journal(tmp_path):
    """The real daemon: its debug, info and warning lines arrive with <7>, <6> and <4>."""
    make_model(tmp_path / "m.safetensors")
    config = write_config(tmp_path, model=tmp_path / "m.safetensors")
    write_image(tmp_path / "capture" / "good.tif", seed=1)
    (tmp_path / "capture" / "bad.tif").write_bytes(b"not an image at all" * 10)
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as fh:
        env = {**os.environ, "JOURNAL_STREAM": journal_env(stderr), "OMP_NUM_THREADS": "1"}
        env.pop("INSPECTOR_DEBUG", None)
        proc = subprocess.run([sys.executable, "-m", "inspector", "--config", str(config), "watch", "--once"],
                              stdout=subprocess.DEVNULL, stderr=fh, cwd=tmp_path, env=env, timeout=240)
    lines = stderr.read_bytes().splitlines()
    assert proc.returncode == 0, lines
    assert lines and all(re.match(rb"<[2-7]>(CRITICAL|ERROR|WARNING|INFO|DEBUG) ", line) for line in lines), lines
    assert any(re.fullmatch(rb"<4>WARNING rejected .*bad\.tif.*", line) for line in lines), lines
    assert any(re.fullmatch(rb"<6>INFO verdict .*good\.tif.*", line) for line in lines), lines
    assert any(line.startswith(b"<7>DEBUG ") for line in lines), lines  # write_config sets log.level DEBUG


def test_inspector_serve_under_the_journal_logs_its_audit_trail(tmp_path):
    """The real review station: a failed login and a login over HTTP, each one journal line at its priority."""
    from web_station import build_station

    st = build_station(tmp_path / "station", flagged=1, normal=1, scale=0.05)
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as fh:
        env = {**os.environ, "JOURNAL_STREAM": journal_env(stderr)}
        proc = subprocess.Popen([sys.executable, "-m", "inspector", "--config", str(st.config), "serve", "--port", "0"],
                                stdout=subprocess.DEVNULL, stderr=fh, env=env)
        try:
            found = wait_for(lambda: re.search(rb"review station on (http://\S+/)", stderr.read_bytes()), 60,
                             "inspector serve to listen")
            url = found.group(1).decode().rstrip("/")
            assert log_in(url, "ann", "not-her-password") == 401
            assert log_in(url, "ann", PASSWORDS["ann"]) == 302
            wait_for(lambda: b"audit: login:" in stderr.read_bytes(), 10, "the login's audit line")
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    logged = [line for line in stderr.read_bytes().splitlines() if line.startswith(b"<")]
    assert b"<4>WARNING audit: failed login as 'ann' from 127.0.0.1" in logged
    assert b"<6>INFO audit: login: ann (reviewer) from 127.0.0.1" in logged


def log_in(url: str, name: str, password: str) -> int:
    """The login form over real HTTP: its page (the session cookie and CSRF token), then the POST's status."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", "/login")
    answer = conn.getresponse()
    token, cookie = token_of(answer.read()), answer.getheader("Set-Cookie", "").split(";")[0]
    body = urlencode({"name": name, "password": password, "csrf_token": token})
    conn.request("POST", "/login", body, {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    return answer.status
