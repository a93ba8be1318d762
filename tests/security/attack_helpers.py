"""What the attacks against a running review station share: a station served by a real `inspector serve`
subprocess (tests/browser.py's Served), raw HTTP over loopback sockets (the attacks send what no polite client
would), and logins through http.client with the station's own CSRF tokens."""

from __future__ import annotations

import http.client
import re
import socket
import time
from contextlib import contextmanager
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from browser import Served
from web_station import PASSWORDS, build_station

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


@contextmanager
def served_station(root, extra_config: str = "", env: dict | None = None, **station):
    """A demo-like station (tests/web_station.py) under `inspector serve --port 0`; yields (station, server)."""
    st = build_station(root, scale=0.05, extra_config=extra_config, **{"flagged": 2, "normal": 1, **station})
    with Served(st.config, env=env) as server:
        yield st, server


def raw_exchange(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on one new connection and read until the server closes it or `timeout` passes."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            return received + b"<closed>"
        received += chunk
    return received


class Client:
    """One browser's worth of HTTP: a cookie jar, a Host header of choice, extra headers on every request."""

    def __init__(self, url: str, host: str | None = None, headers: dict | None = None):
        self.host, self.port = address(url)
        self.host_header = host
        self.headers = dict(headers or {})
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None):
        from urllib.parse import urlencode

        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = {**self.headers, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form, doseq=True)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if self.host_header is not None:
            conn.putrequest(method, path, skip_host=True)
            conn.putheader("Host", self.host_header)
        else:
            conn.putrequest(method, path)
        for k, v in sent.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body.encode() if body is not None else None)
        answer = conn.getresponse()
        text = answer.read().decode("utf-8", "replace")
        for header in answer.headers.get_all("Set-Cookie") or []:
            for key, morsel in SimpleCookie(header).items():
                if morsel["expires"] and "1970" in morsel["expires"] or morsel.value == "":
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = morsel.value
        conn.close()
        return answer.status, dict(answer.headers), text

    def token(self, path: str = "/login") -> str:
        status, _, text = self.request("GET", path)
        found = TOKEN.search(text)
        assert found, f"no CSRF token on {path} ({status}): {text[:300]}"
        return found.group(1)

    def log_in(self, name: str, password: str | None = None) -> int:
        status, _, _ = self.request("POST", "/login", {"name": name, "password": password or PASSWORDS[name],
                                                        "csrf_token": self.token()})
        return status
