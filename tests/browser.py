"""A real browser and a real review station for the web tests and bench/web.py: Debian's chromium driven through
its chromium-driver by Selenium (SE_OFFLINE: Selenium never downloads a browser or a driver), and `inspector serve`
as a subprocess on a free port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
MISSING = None if CHROMIUM and CHROMEDRIVER else (
    "chromium and chromium-driver are not installed (make test installs them via scripts/install-test-tools.sh "
    "when apt is reachable)")


def chromium(width: int = 1280, height: int = 800, flags: tuple[str, ...] = ()):
    """Headless Chromium whose viewport is exactly width x height CSS pixels at one device pixel each; `flags`
    added to its command line (e.g. --host-resolver-rules)."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--force-device-scale-factor=1", *flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    resize(driver, width, height)
    return driver


def resize(driver, width: int, height: int) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


class Served:
    """`inspector --config CONFIG serve --port 0` until stop(); `url` is where it listens."""

    def __init__(self, config: Path, env: dict | None = None, timeout: float = 60.0):
        self.proc = subprocess.Popen([sys.executable, "-m", "inspector", "--config", str(config), "serve", "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        found = threading.Event()
        self.url = ""

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                match = re.search(r"review station on (http://\S+/)", line)
                if match and not found.is_set():
                    self.url = match.group(1).rstrip("/")
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("inspector serve did not start:\n" + "".join(self.lines))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def log_in(driver, url: str, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    wait_for(lambda: not driver.current_url.rstrip("/").endswith("/login"), "the login to go through")


def wait_for(condition, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout:g} s for {what}")
