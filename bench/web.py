"""The review station's speed: time to first byte, a review screen fully rendered in Chromium for a 2000 x 1000
scan, the next electrode after a decision key, and requests per second for the queue page with 10,000 verdicts
in the database, each against a baseline measured on the same server in the same run.

A station of REAL_SCANS full-size (2000 x 1000) 16-bit TIFF scans, the oldest flagged electrodes, with heat
maps, plus rows enough for VERDICTS verdicts (about 21% abnormal) in a SQLite database; `inspector serve` as a
subprocess (waitress, web.threads = 8), reached over loopback by http.client (keep-alive) and by headless
Chromium (Selenium through Debian's chromium-driver). The timings in the browser come from a script the bench
adds to every page it opens (the keydown time, and the time the scan is decoded and two frames later painted),
never from the station's own code. The operator looks at each scan for LOOK_SECONDS before pressing N.

    python bench/web.py [--verdicts 10000] [--scans 12] [--seconds 5] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the web tests' station builder and browser helpers
from convert_read import Figure, describe_machine, print_figures  # noqa: E402

TARGET_DECISION_MS = 200.0  # the target: one key press and under 200 ms to the next electrode
CLIENTS = 4  # concurrent keep-alive clients for the requests/s rows
LOOK_SECONDS = 1.0  # how long the bench's operator looks at a scan before pressing N
# Added to every page the bench's browser opens: when N was pressed, and when the scan shown next is decoded and
# painted, whether it came with a page load or was swapped into the page (the queue's way).
PROBE = """
(function () {
  var t0 = null;
  document.addEventListener('keydown', function (e) {
    if (e.key === 'n') { t0 = performance.now(); sessionStorage.setItem('bench_t0', String(performance.timeOrigin + t0)); }
  }, true);
  function painted(img, resolve) {
    var done = function () { requestAnimationFrame(function () { requestAnimationFrame(function () {
      var now = performance.now(), stored = sessionStorage.getItem('bench_t0'), sinceKey = null;
      if (t0 !== null) sinceKey = now - t0; else if (stored) sinceKey = performance.timeOrigin + now - Number(stored);
      t0 = null; sessionStorage.removeItem('bench_t0');
      var review = document.getElementById('review');
      resolve({ sinceNavigation: now, sinceKey: sinceKey, image: review ? review.dataset.imageId : null });
    }); }); };
    if (!img) { done(); return; }
    img.decode().then(done, done);
  }
  window.__painted = new Promise(function (resolve) {
    window.addEventListener('load', function () {
      painted(document.getElementById('img-window') || document.querySelector('img'), resolve);
    });
  });
  new MutationObserver(function () {
    var img = document.getElementById('img-window');
    if (img && img !== window.__seen) {
      if (window.__seen !== undefined) window.__painted = new Promise(function (resolve) { painted(img, resolve); });
      window.__seen = img;
    }
  }).observe(document, { childList: true, subtree: true });
})();
"""


def build(root: Path, verdicts: int, scans: int):
    """The station: `scans` real full-size flagged scans (oldest first) and rows up to `verdicts` verdicts."""
    import random

    from inspector.store.store import FileVersion, Verdict, VerdictRecord, open_store
    from web_station import MODEL, build_station

    st = build_station(root, flagged=scans, normal=0, full_size=scans)
    rng = random.Random(0)
    with open_store(st.cfg.database.url, station="line1") as store:
        batch = []
        for i in range(verdicts - scans):
            abnormal = rng.random() < 0.21
            batch.append(VerdictRecord(FileVersion(f"/srv/capture/bulk/{i // 500:03d}/electrode-{i:05d}.tif", 4_600_000,
                                                   1_700_000_000_000_000_000 + i, 10_000 + i, None),
                                       Verdict(f"{i:064x}", MODEL, 0.9 if abnormal else 0.1,
                                               "abnormal" if abnormal else "normal", None, 0.5, "global")))
            if len(batch) == 500:
                store.record_outcomes(batch)
                batch.clear()
        store.record_outcomes(batch)
        total = store.count_verdicts()
    return st, total


class Client:
    """A keep-alive HTTP/1.1 client with the session cookie of a logged-in reviewer."""

    def __init__(self, url: str, cookie: str = ""):
        parsed = urlparse(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
        self.cookie = cookie

    def get(self, path: str) -> tuple[int, bytes, float, dict]:
        """Status, body, seconds to the first byte of the answer (the status line), headers."""
        start = time.perf_counter()
        self.conn.request("GET", path, headers={"Cookie": self.cookie} if self.cookie else {})
        answer = self.conn.getresponse()
        first = time.perf_counter() - start
        body = answer.read()
        return answer.status, body, first, dict(answer.getheaders())


def log_in(url: str, name: str, password: str) -> str:
    client = Client(url)
    status, body, _, headers = client.get("/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
    cookie = headers["Set-Cookie"].split(";")[0]
    client.conn.request("POST", "/login", urlencode({"name": name, "password": password, "csrf_token": token}),
                        {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    answer = client.conn.getresponse()
    answer.read()
    assert answer.status == 302, f"login failed: {answer.status}"
    return answer.getheader("Set-Cookie").split(";")[0]


def median_ttfb(url: str, cookie: str, path: str, runs: int) -> float:
    client = Client(url, cookie)
    client.get(path)  # warm: the connection, the server's caches
    times = []
    for _ in range(runs):
        status, _, first, _ = client.get(path)
        assert status == 200, (path, status)
        times.append(first)
    return statistics.median(times)


def requests_per_second(url: str, cookie: str, path: str, seconds: float, clients: int = CLIENTS) -> float:
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def hammer(k: int) -> None:
        client = Client(url, cookie)
        while time.perf_counter() < stop:
            status, _, _, _ = client.get(path)
            assert status == 200, (path, status)
            counts[k] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def browser_figures(st, url: str, scans: int, notes: list[str]) -> list[Figure]:
    from browser import MISSING, chromium, log_in as browser_log_in
    from web_station import PASSWORDS

    if MISSING:
        notes.append(f"web: the Chromium rows are skipped: {MISSING}")
        return []
    driver = chromium(1280, 800)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
        browser_log_in(driver, url, "ann", PASSWORDS["ann"])
        painted = lambda: driver.execute_async_script("window.__painted.then(arguments[arguments.length - 1]);")  # noqa: E731
        ids = [item["image_id"] for item in st.flagged[:scans]]
        # the review screen, first view of each scan (the server reads, checks and converts it) and again
        first, again = [], []
        for image_id in ids[: max(2, scans // 2)]:
            driver.get(f"{url}/?at={image_id}")
            first.append(painted()["sinceNavigation"])
            driver.get(f"{url}/?at={image_id}")
            again.append(painted()["sinceNavigation"])
        # the same scan (the PNG the station served) painted from a local file by a bare page: the floor
        folder = Path(tempfile.mkdtemp(prefix="inspector-bench-web-"))
        png = Client(url, driver_cookie(driver)).get(f"/image/{ids[0]}/window.png")[1]
        (folder / "scan.png").write_bytes(png)
        (folder / "page.html").write_text('<!DOCTYPE html><html><body style="margin:0;background:#111">'
                                          '<img id="img-window" src="scan.png"></body></html>')
        bare = []
        for _ in range(len(first)):
            driver.get((folder / "page.html").as_uri())
            bare.append(painted()["sinceNavigation"])
        # decisions: N on the review screen, to the next electrode's scan decoded and painted
        keys = []
        rest = ids[max(2, scans // 2):]
        driver.get(f"{url}/?at={rest[0]}")
        painted()
        from selenium.webdriver.common.action_chains import ActionChains

        for _ in rest[:-1]:
            time.sleep(LOOK_SECONDS)  # the operator looks at the scan (meanwhile the page reads the next one ahead)
            shown = painted()["image"]
            ActionChains(driver).send_keys("n").perform()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    got = painted()
                except Exception:  # the old page went away mid-script: ask the new one
                    continue
                if got.get("image") != shown and got.get("sinceKey") is not None:
                    keys.append(got["sinceKey"])
                    break
        # a reload of a review screen whose scan every cache holds: what any change of page costs here
        reloads = []
        for _ in range(len(keys)):
            driver.refresh()
            reloads.append(painted()["sinceNavigation"])
    finally:
        driver.quit()
    ms = statistics.median
    size = "2000x1000 scan"
    return [
        Figure(f"review screen in Chromium, first view: navigation to the scan painted ({size}, server converts it)",
               ms(first), ms(bare), "ms", "the same PNG painted by a bare local page (file://)"),
        Figure(f"review screen in Chromium, seen again: navigation to the scan painted ({size}, cached)", ms(again),
               ms(bare), "ms", "the same PNG painted by a bare local page (file://)"),
        Figure(f"decision key N to the next electrode's scan painted ({size}, prefetched; {len(keys)} decisions)",
               ms(keys), ms(reloads), "ms", "reload of a review screen, everything cached"),
        Figure(f"decision key N to the next electrode's scan painted ({size}, prefetched; {len(keys)} decisions)",
               ms(keys), TARGET_DECISION_MS, "ms", "the issue's target, 200 ms", "<= 1.00x"),
    ]


def driver_cookie(driver) -> str:
    found = next(c for c in driver.get_cookies() if c["name"] == "inspector_session")
    return f"inspector_session={found['value']}"


def measure(verdicts: int = 10_000, scans: int = 12, seconds: float = 5.0, notes: list[str] | None = None) -> list[Figure]:
    from browser import Served
    from web_station import PASSWORDS

    notes = notes if notes is not None else []
    with tempfile.TemporaryDirectory(prefix="inspector-bench-web-") as tmp:
        st, total = build(Path(tmp) / "station", verdicts, scans)
        notes.append(f"web: {total} verdicts in SQLite ({scans} of them real 2000 x 1000 zlib TIFF scans with heat "
                     f"maps); {CLIENTS} keep-alive clients for requests/s, {seconds:g} s each; server: inspector serve "
                     f"(waitress, 8 threads) on loopback; in Chromium the operator looks at each scan "
                     f"{LOOK_SECONDS:g} s before pressing N")
        with Served(st.config) as server:
            cookie = log_in(server.url, "ann", PASSWORDS["ann"])
            static = "/static/app.css"
            assert Client(server.url, cookie).get(static)[0] == 200
            ttfb_static = median_ttfb(server.url, cookie, static, 30)
            ttfb_queue = median_ttfb(server.url, cookie, "/", 30)
            client = Client(server.url, cookie)
            scan_first = []
            for item in st.flagged[scans // 2:]:  # cold: no page has asked for these scans yet
                status, _, first, _ = client.get(f"/image/{item['image_id']}/window.png")
                assert status == 200
                scan_first.append(first)
            rps_queue = requests_per_second(server.url, cookie, "/", seconds)
            rps_static = requests_per_second(server.url, cookie, static, seconds)
            rps_search = requests_per_second(server.url, cookie, "/verdicts?verdict=abnormal&reviewed=no", seconds)
            figures = [
                Figure(f"time to first byte, review queue page ({total} verdicts)", ttfb_queue * 1000,
                       ttfb_static * 1000, "ms", "a static file (app.css), same server"),
                Figure("time to first byte, a 2000x1000 scan's converted PNG, first request (read, sha256, convert, "
                       "encode)", statistics.median(scan_first) * 1000, ttfb_static * 1000, "ms",
                       "a static file (app.css), same server"),
                Figure(f"review queue page, {CLIENTS} clients: requests/s ({total} verdicts)", rps_queue, rps_static,
                       "requests/s", "a static file (app.css), same server"),
                Figure(f"verdict search page (abnormal, not reviewed; 50 a page), {CLIENTS} clients: requests/s "
                       f"({total} verdicts)", rps_search, rps_static, "requests/s", "a static file (app.css), same server"),
            ]
            figures += browser_figures(st, server.url, scans, notes)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=10_000, help="verdicts in the database")
    parser.add_argument("--scans", type=int, default=12, help="real 2000 x 1000 scans (the oldest flagged ones)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of each requests/s run")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the table rows")
    args = parser.parse_args(argv)
    if args.scans < 6:
        parser.error("--scans takes 6 or more (half are viewed, half decided)")
    notes: list[str] = []
    figures = measure(args.verdicts, args.scans, args.seconds, notes)
    print(f"machine: {describe_machine()}")
    print_figures(figures, args.json, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
