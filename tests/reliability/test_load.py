"""Load (RELIABILITY case 12): a burst of thousands of small images, then a sustained drip for a fixed
time, against the real daemon subprocess; every image accounted for and its memory flat."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest

from daemon_helpers import db_count, write_config
from harness import DaemonProcess, wait_for
from image_files import sample_image16, write_tiff16
from soak import scaled

BURST = scaled(1200, 10_000)  # make test (the CI budget) and make soak
DRIP_SECONDS = scaled(15, 300)
DRIP_INTERVAL_SECONDS = 0.05


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """VmRSS of a process every interval seconds on a thread, until stopped."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid = pid
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(rss_mb(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


def write_small(capture: Path, name: str, seed: int) -> None:
    """A 64 x 32 px 16-bit TIFF, written beside and renamed in (no half-written file is ever seen)."""
    tmp = capture / f".{name}.part"
    write_tiff16(tmp, sample_image16(64, 32, seed=seed))
    tmp.rename(capture / name)


@pytest.mark.slow
@pytest.mark.timeout(7200 if BURST > 2000 else 600)
def test_burst_then_drip_every_image_accounted_and_memory_flat(tmp_path, model_file):
    config = write_config(tmp_path, model=model_file, settle_seconds=0.2, rescan_seconds=5.0, queue_size=256)
    config.write_text(config.read_text().replace("batch_size = 4", "batch_size = 16"))
    capture, db = tmp_path / "capture", tmp_path / "inspector.db"
    images = "SELECT COUNT(*) FROM images"
    daemon = DaemonProcess(tmp_path, config)
    try:
        daemon.wait_ready()
        sampler = RssSampler(daemon.proc.pid)
        started = time.monotonic()
        for i in range(BURST):
            write_small(capture, f"burst-{i:05d}.tif", seed=i)
        wait_for(lambda: db_count(db, images) >= BURST, 60 + BURST * 0.2, f"{BURST} verdicts of the burst")
        burst_seconds = time.monotonic() - started

        drip_start, dripped = time.monotonic(), 0
        while time.monotonic() - drip_start < DRIP_SECONDS:
            write_small(capture, f"drip-{dripped:05d}.tif", seed=10**6 + dripped)
            dripped += 1
            next_at = drip_start + dripped * DRIP_INTERVAL_SECONDS
            time.sleep(max(0.0, next_at - time.monotonic()))  # the drip's pace, not a wait for a result
        wait_for(lambda: db_count(db, images) >= BURST + dripped, 120, f"{dripped} verdicts of the drip")
        samples = sampler.stop()
        assert daemon.proc.poll() is None, daemon.log()[-3000:]
        log = daemon.log()
    finally:
        daemon.close()

    total = BURST + dripped
    assert dripped >= 0.8 * DRIP_SECONDS / DRIP_INTERVAL_SECONDS
    assert db_count(db, images) == total
    assert db_count(db, "SELECT COUNT(DISTINCT path_raw) FROM images") == total
    assert db_count(db, "SELECT COUNT(*) FROM verdicts") == total
    assert db_count(db, "SELECT COUNT(*) FROM rejections") == 0
    assert "Traceback" not in log and "unexpected error" not in log
    quarter = max(1, len(samples) // 4)
    first, last = statistics.median(samples[:quarter]), statistics.median(samples[-quarter:])
    print(f"burst of {BURST} in {burst_seconds:.1f} s ({BURST / burst_seconds:.0f} images/s); drip of {dripped}; "
          f"VmRSS first-quarter median {first:.0f} MB, last-quarter {last:.0f} MB, max {max(samples):.0f} MB")
    assert last <= 1.2 * first + 30, f"memory grew: {first:.0f} MB -> {last:.0f} MB ({samples[::20]})"
