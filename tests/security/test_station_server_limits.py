"""The review station's server under load and odd framing, on a real `inspector serve` over loopback sockets:
slow connections (issue 26, case 4), huge bodies (case 5), both Content-Length and Transfer-Encoding (case 6)."""

from __future__ import annotations

import re
import socket
import time

import pytest

from attack_helpers import address, raw_exchange, read_until_closed, served_station

SLOW_CONNECTIONS = 300


@pytest.fixture
def station(tmp_path):
    with served_station(tmp_path / "station") as (st, server):
        yield st, server


def healthz(url: str, timeout: float) -> bool:
    try:
        answer = raw_exchange(url, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", timeout)
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.1 200") and b"ok\n" in answer


def test_slow_connections_do_not_take_the_station_down(station):
    """300 clients that send half a request and then nothing: /healthz still answers every probe."""
    _, server = station
    slow = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            sock = socket.create_connection(address(server.url), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
            slow.append(sock)
        time.sleep(1.0)  # the server has seen them all
        answered = sum(healthz(server.url, timeout=2.0) for _ in range(10))
    finally:
        for sock in slow:
            sock.close()
    assert answered == 10, f"/healthz answered {answered} of 10 probes beside {SLOW_CONNECTIONS} slow connections"


def test_a_huge_body_is_refused_before_it_is_received(station):
    """A 200 MiB POST without a session: 413 as soon as the headers say so, not after the server took 200 MiB in."""
    _, server = station
    with socket.create_connection(address(server.url), timeout=5) as sock:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % (200 * 2**20))
        try:
            sock.sendall(b"a" * 2**20)  # 1 MiB of the 200 promised
        except OSError:
            pass  # the server answered and closed already
        answer = read_until_closed(sock, 3.0)
    assert re.match(rb"HTTP/1\.[01] 413", answer), answer[:200]


def test_a_huge_chunked_body_is_refused_while_it_arrives(station):
    _, server = station
    with socket.create_connection(address(server.url), timeout=5) as sock:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (2**16, b"a" * 2**16)
        try:
            for _ in range(48):  # 3 MiB, never the closing chunk
                sock.sendall(chunk)
        except OSError:
            pass
        answer = read_until_closed(sock, 3.0)
    assert re.match(rb"HTTP/1\.[01] 413", answer), answer[:200]


def test_both_content_length_and_transfer_encoding_close_the_connection(station):
    """RFC 9112 section 6.1: a request framed both ways is answered and its connection closed, so a request
    smuggled behind it (as a proxy that framed it the other way would forward it) is never served."""
    _, server = station
    smuggled = (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = raw_exchange(server.url, smuggled, timeout=3.0)
    assert len(re.findall(rb"HTTP/1\.[01] \d{3}", answer)) == 1, answer  # the smuggled GET got no answer
    assert re.match(rb"HTTP/1\.[01] 400", answer) and answer.endswith(b"<closed>"), answer
    assert b"Content-Length and Transfer-Encoding" in answer
