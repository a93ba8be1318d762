"""Issue 26, case 1: a trusted local proxy's user header and the Host header. The station answers only to its
own names (a page of another site, DNS-rebound to the station's address, reads nothing), and it believes the
proxy's user header only with the proxy's shared secret beside it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from attack_helpers import Client, address, served_station
from browser import MISSING, chromium, wait_for
from inspector.store.schema import reviews
from inspector.store.store import open_store

SECRET = "proxy-secret-0123456789abcdef"
PROXIED = (f'[web]\nremote_user_header = "X-Remote-User"\ntrusted_proxies = ["127.0.0.1"]\n'
           f'proxy_secret = "{SECRET}"\n')


@pytest.fixture
def proxied(tmp_path):
    with served_station(tmp_path / "station", extra_config=PROXIED) as (st, server):
        yield st, server


def review_count(st) -> int:
    with open_store(st.cfg.database.url) as store, store.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(reviews)).scalar_one()


def test_other_host_names_are_refused(proxied):
    st, server = proxied
    _, port = address(server.url)
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        status, _, _ = Client(server.url, host=host).request("GET", "/healthz")
        assert status == 200, host
    for host in ("rebind.example", f"rebind.example:{port}", "127.0.0.1.rebind.example", "localhost.", "",
                 "127.0.0.1:80:80", "[::1"):
        status, headers, text = Client(server.url, host=host).request(
            "GET", "/", headers={"X-Remote-User": "ann", "X-Inspector-Proxy-Secret": SECRET})
        assert status == 400, host
        assert "does not answer to the host name" in text, host


def test_the_proxy_header_needs_the_proxys_secret(proxied):
    st, server = proxied
    local = Client(server.url, headers={"X-Remote-User": "ann"})  # any program on the proxy's host
    status, headers, _ = local.request("GET", "/")
    assert status == 302 and headers["Location"].startswith("/login")
    wrong = Client(server.url, headers={"X-Remote-User": "ann", "X-Inspector-Proxy-Secret": SECRET[:-1] + "X"})
    assert wrong.request("GET", "/")[0] == 302
    proxy = Client(server.url, headers={"X-Remote-User": "ann", "X-Inspector-Proxy-Secret": SECRET})
    status, _, text = proxy.request("GET", "/")
    assert status == 200 and 'id="form-normal"' in text
    assert "ignored the X-Remote-User header from 127.0.0.1: no valid X-Inspector-Proxy-Secret" in "".join(server.lines)


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_a_dns_rebound_page_cannot_act_through_the_proxy_header(proxied):
    """A page of rebind.example (which the attacker's DNS now points at 127.0.0.1) in an operator's browser sends
    the proxy's user header itself: same-origin, so it may; the station must neither answer it nor record."""
    st, server = proxied
    _, port = address(server.url)
    driver = chromium(flags=("--host-resolver-rules=MAP rebind.example 127.0.0.1",))
    try:
        driver.get(f"http://rebind.example:{port}/healthz")
        wait_for(lambda: driver.execute_script("return document.readyState") == "complete", "the rebound page")
        driver.set_script_timeout(30)
        outcome = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            (async () => {
              const asRita = {'X-Remote-User': 'ann'};
              const queue = await fetch('/', {headers: asRita, redirect: 'manual'});
              const html = await queue.text();
              const token = (html.match(/name="csrf_token" value="([^"]+)"/) || [])[1];
              const image = (html.match(/data-image-id="(\\d+)"/) || [])[1];
              const verdict = (html.match(/name="verdict_id" value="(\\d+)"/) || [])[1];
              let recorded = null;
              if (token && image && verdict) {
                const form = new URLSearchParams({csrf_token: token, image_id: image, verdict_id: verdict,
                                                  review_id: '', label: 'normal'});
                recorded = (await fetch('/review', {method: 'POST', headers: asRita, body: form,
                                                    redirect: 'manual'})).status;
              }
              return {queue: queue.status, token: !!token, recorded: recorded};
            })().then(done, e => done({error: String(e)}));
        """)
    finally:
        driver.quit()
    assert review_count(st) == 0, f"a review was recorded through the rebound page: {outcome}"
    assert outcome == {"queue": 400, "token": False, "recorded": None}, outcome
