"""Daemon latency and burst throughput against the bare model, measured in the same run.

Latency: the median seconds from file-ready to committed verdict (verdicts.ready_to_commit_seconds)
of files dropped one at a time, next to Detector.predict on one preloaded image. Burst: N files
dropped at once, images per second from the first drop to the last commit, next to the bare model's
batched throughput on preloaded images; and the daemon's peak RSS (VmHWM) for each N.
Targets: latency <= 1.15x bare forward, burst >= 0.9x bare throughput, memory flat as N grows.

Those runs use a model with threshold 1.0: every verdict is normal and Grad-CAM never runs. With
heat maps on, the same model gets the threshold that makes HEATMAP_RATE (about 21%, the synthetic
sets' abnormal rate) of a set of distinct synthetic electrodes score abnormal: one Grad-CAM heat map
alone against a bare predict, files one at a time (the next dropped as soon as the previous verdict
commits, so it meets the heat map in hand) and a burst, until the last commit and the last heat map.

    .venv/bin/python bench/daemon_latency.py [--input-size 512x256] [--bursts 50,200]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the repository root: tests.harness
from convert_read import Figure, describe_machine, format_table  # noqa: E402
from tests.harness import DaemonProcess  # noqa: E402

LATENCY_TARGET = 1.15
THROUGHPUT_TARGET = 0.9
BATCH_SIZE = 4
IDLE_SECONDS = 0.3  # what a file dropped alone waits before the forward pass: settle 0.2 s + a 0.1 s tick
HEATMAP_RATE = 0.21  # share of abnormal verdicts in the heat-map runs (inspector synth's default abnormal rate)


def write_model(path: Path, window: tuple[int, int], input_size: tuple[int, int], threshold: float = 1.0) -> None:
    """An untrained ResNet-34 (seeded: the same weights every time). threshold 1.0 makes every verdict
    normal: no Grad-CAM heat maps, so the daemon does exactly the work of the bare predict it is
    compared with; a lower one sends the files above it down the heat-map path."""
    import torch

    from inspector.learn.model import ModelMeta, build_detector, save_model

    torch.manual_seed(0)
    source = ("bench: every verdict normal (no heat maps)" if threshold >= 1.0
              else f"bench: {HEATMAP_RATE:.0%} of the bench images abnormal (heat maps on)")
    meta = ModelMeta(method="global", window=window, input_size=input_size, weights="none", trained=False,
                     threshold=threshold, threshold_source=source)
    save_model(path, build_detector("none"), meta)


def make_images(base: np.ndarray, count: int, first: int) -> list[np.ndarray]:
    """Distinct contents (one pixel row stamped with the index) so no file is a duplicate of another."""
    out = []
    for i in range(first, first + count):
        img = base.copy()
        img[0, :8] = np.frombuffer(i.to_bytes(16, "little"), dtype=np.uint16)
        out.append(img)
    return out


def stage(folder: Path, images: list[np.ndarray], prefix: str) -> list[Path]:
    """Write the files beforehand (same file system), so that dropping them costs the daemon's CPU nothing."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img16 in enumerate(images):
        path = folder / f"{prefix}-{i:05d}.tif"
        tifffile.imwrite(path, img16, photometric="minisblack")
        paths.append(path)
    return paths


def last_commit_epoch(db: Path) -> float:
    """Wall-clock time (epoch seconds) of the newest verdict, from the daemon's own created_at (UTC)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        (newest,) = con.execute("SELECT max(created_at) FROM verdicts").fetchone()
    finally:
        con.close()
    return datetime.fromisoformat(newest).replace(tzinfo=timezone.utc).timestamp()


class Station(DaemonProcess):
    """`inspector watch` in its own folder on SQLite (tests/harness.py), READY awaited on a real notify socket.

    The notify socket is read by the caller: the bench's waits sleep in recv() instead of polling the
    database, for on a 2-core machine a poller waking every few milliseconds takes CPU from the daemon's
    two torch threads and would be charged to the daemon."""

    def __init__(self, folder: Path, model: Path, threads: int, workers: int = 0, device: str = "cpu",
                 batch_size: int = BATCH_SIZE):
        (folder / "capture").mkdir(parents=True)
        self.db = folder / "inspector.db"
        config = folder / "config.toml"
        config.write_text(
            f'[watch]\ncapture_dir = "capture"\nsettle_seconds = 0.2\nrescan_seconds = 600.0\nqueue_size = 512\n'
            f'[model]\npath = "{model}"\ndevice = "{device}"\n[infer]\nbatch_size = {batch_size}\nthreads = {threads}\n'
            f'workers = {workers}\n'
            f'[database]\nurl = "sqlite:///inspector.db"\n[state]\ndir = "var"\n[log]\nlevel = "WARNING"\n')
        super().__init__(folder, config, omp_threads=threads, listen=False, stop_seconds=30, ready_timeout=120)

    def drop_one_at_a_time(self, paths: list[Path]) -> None:
        """Each file dropped as soon as the previous one has its verdict."""
        for i, path in enumerate(paths):
            self.drop(path)
            self.wait_scored(i + 1, 120)

    def ready_to_commit(self) -> list[float]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT ready_to_commit_seconds FROM verdicts WHERE ready_to_commit_seconds IS NOT NULL")
            return [r[0] for r in rows]
        finally:
            con.close()

    def abnormal_count(self) -> int:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM verdicts WHERE verdict = 'abnormal'").fetchone()[0]
        finally:
            con.close()

    def wait_heatmaps(self, n: int, timeout: float) -> tuple[int, float]:
        """Until n heat-map PNGs are under the state folder (or timeout): (how many, newest mtime, epoch s).

        After the last commit only, so that its polling (every 0.2 s) takes no CPU from scoring."""
        folder = self.folder / "var" / "heatmaps"
        deadline = time.monotonic() + timeout
        while True:
            found = sorted(folder.glob("*/*.png")) if folder.is_dir() else []
            if len(found) >= n or time.monotonic() > deadline or self.proc.poll() is not None:
                return len(found), max((p.stat().st_mtime for p in found), default=float("nan"))
            time.sleep(0.2)



def bare_figures(detector, images: list[np.ndarray], repeats: int) -> tuple[float, float]:
    """(median seconds of predict on one preloaded image, batched images/s on preloaded images)."""
    for img in images[:5]:  # warm-up: the first calls of each batch shape pay oneDNN/thread-pool set-up
        detector.predict([img])
    detector.predict(images)
    single = single_seconds(detector, images, repeats)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        detector.predict(images)
        rates.append(len(images) / (time.perf_counter() - start))
    return single, statistics.median(rates)


def single_seconds(detector, images: list[np.ndarray], repeats: int, idle: float = 0.0) -> float:
    """Median seconds of predict on one preloaded image, each call after `idle` seconds of nothing.

    idle > 0: a file that arrives alone finds the machine idle (sleeping torch threads, cold caches,
    a vCPU that may have been descheduled); this is the bare model under the same condition."""
    times = []
    for i in range(max(repeats, 10)):
        time.sleep(idle)
        start = time.perf_counter()
        detector.predict([images[i % len(images)]])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heatmap_threshold(detector, images: list[np.ndarray], rate: float) -> tuple[float, list[int], float]:
    """(threshold, indices above it, gap): the threshold halfway between the k-th and (k+1)-th highest
    p_abnormal of `images` under `detector`, k = round(rate * len(images)) (at least 1); gap is the
    distance from it to the nearest of the two, the margin the stamped file copies have."""
    scores = [pred.p_abnormal for pred in detector.predict(images)]
    order = sorted(range(len(images)), key=lambda i: -scores[i])
    k = min(max(1, round(rate * len(images))), len(images) - 1)
    high, low = scores[order[k - 1]], scores[order[k]]
    return (high + low) / 2, order[:k], (high - low) / 2


def heatmap_seconds(model: Path, images: list[np.ndarray], out: Path, repeats: int) -> float:
    """Median seconds of one heat map as the daemon draws it (explain_image, overlay, PNG written)."""
    from inspector.learn.explain import explain_image, save_overlay
    from inspector.learn.infer import Detector

    detector = Detector.load(model, device="cpu", batch_size=BATCH_SIZE)
    explain_image(detector, images[0])  # warm-up: autograd's first backward pays its set-up
    times = []
    for i in range(max(repeats, 3)):
        start = time.perf_counter()
        e = explain_image(detector, images[i % len(images)])
        save_overlay(e.img8, e.cam, out / f"heatmap-{i}.png")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(input_size: tuple[int, int] = (512, 256), bursts: tuple[int, ...] = (50, 200), latency_files: int = 10,
            image_scale: float = 1.0, threads: int = 0, heatmap_files: int = 19,
            notes: list[str] | None = None) -> list[Figure]:
    """Every figure of this benchmark; each daemon figure next to its bare-model reference (same threads).

    heatmap_files > 0 adds the heat-map runs (that many distinct images, HEATMAP_RATE of them
    abnormal); what they found (abnormal verdicts, heat maps drawn) is appended to `notes`."""
    import torch

    from inspector.data.synth import synth_electrode
    from inspector.learn.infer import Detector

    notes = notes if notes is not None else []
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="inspector-bench-daemon-") as tmp:
        root = Path(tmp)
        model = root / "detector.safetensors"
        base = synth_electrode(0, scale=image_scale)
        lo, hi = np.percentile(base, [0.01, 99.99]).astype(int)
        write_model(model, (int(lo), int(hi)), input_size)
        detector = Detector.load(model, device="cpu", batch_size=BATCH_SIZE)
        threads = threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        bare_images = make_images(base, 16, 10**6)
        bare_single, _ = bare_figures(detector, bare_images, repeats=latency_files)
        singles = [bare_single]
        size = f"{input_size[0]}x{input_size[1]} input, {base.shape[1]}x{base.shape[0]} px, threads={threads}"
        off = "threshold 1.0: no heat maps"

        singles_staged = stage(root / "staging", make_images(base, latency_files, 0), "single")
        os.sync()  # the model and staged files reach the disk now, not by writeback during the measurement
        station = Station(root / "latency", model, threads)
        try:
            station.wait_ready()
            station.drop_one_at_a_time(singles_staged)
            latency = statistics.median(station.ready_to_commit())
        finally:
            station.close()
        first_peak = 0.0
        for n in bursts:
            paths = stage(root / "staging", make_images(base, n, 10_000 * n), f"burst{n}")
            os.sync()
            station = Station(root / f"burst-{n}", model, threads)
            try:
                station.wait_ready()
                start = time.time()
                for path in paths:
                    station.drop(path)
                station.wait_scored(n, 60 + 5 * n)
                rate = n / (last_commit_epoch(station.db) - start)  # first drop to the last commit
                peak = station.peak_rss_mb()
            finally:
                station.close()
            # The bare reference again, right after the burst: on a shared machine the load drifts.
            single, batched = bare_figures(detector, bare_images, repeats=3)
            singles.append(single)
            figures.append(Figure(f"daemon burst of {n}, {off}: images/s ({size})", rate, batched, "images/s",
                                  f"bare predict, batches of {BATCH_SIZE}", f">= {THROUGHPUT_TARGET}x"))
            first_peak = first_peak or peak
            figures.append(Figure(f"daemon burst of {n}, {off}: peak RSS (VmHWM)", peak, first_peak, "MB",
                                  f"peak RSS at N={bursts[0]}", "flat (~1.0x)"))
        bare = statistics.median(singles)
        idle = single_seconds(detector, bare_images, latency_files, idle=IDLE_SECONDS)
        figures.insert(0, Figure(f"daemon ready->commit, one file, {off} ({size})", latency, bare, "s/image",
                                 "bare Detector.predict on one image", f"<= {LATENCY_TARGET}x"))
        figures.insert(1, Figure(f"daemon ready->commit, one file, {off} ({size})", latency, idle, "s/image",
                                 f"bare predict on one image after {IDLE_SECONDS} s idle, as a lone file sees it", ""))
        if heatmap_files > 0:
            figures += measure_heatmaps(root, detector, (int(lo), int(hi)), input_size, image_scale, threads,
                                        heatmap_files, bursts[0], notes)
    return figures


def measure_heatmaps(root: Path, detector, window: tuple[int, int], input_size: tuple[int, int], image_scale: float,
                     threads: int, files: int, burst: int, notes: list[str]) -> list[Figure]:
    """The heat-map rows: `files` distinct synthetic electrodes (every fourth drawn abnormal), the model's
    threshold set so that HEATMAP_RATE of them score abnormal; one heat map alone, files one at a
    time and a burst of `burst`, each against the bare model on the same images."""
    from inspector.data.synth import synth_electrode

    images = [synth_electrode(100 + s, scale=image_scale, abnormal=s % 4 == 0) for s in range(files)]
    threshold, flagged, gap = heatmap_threshold(detector, images, HEATMAP_RATE)
    model = root / "detector-heatmaps.safetensors"
    write_model(model, window, input_size, threshold)
    (root / "heatmaps-bare").mkdir()
    one_map = heatmap_seconds(model, [images[i] for i in flagged], root / "heatmaps-bare", repeats=len(flagged))
    bare_single = single_seconds(detector, images, files)
    _, bare_batched = bare_figures(detector, [images[i % files] for i in range(16)], repeats=3)
    on = f"heat maps on, ~{HEATMAP_RATE:.0%} abnormal"
    shape = f"{input_size[0]}x{input_size[1]} input, {files} distinct images, threads={threads}"
    figures = [Figure(f"one Grad-CAM heat map (explain_image + PNG overlay), bare ({shape})", one_map, bare_single,
                      "s/image", "bare Detector.predict on one image, same images")]

    normal = [i for i in range(files) if i not in flagged]

    def stamped(count: int, first: int) -> list[np.ndarray]:
        """`count` files, round(HEATMAP_RATE * count) of them copies of the flagged images spread evenly
        among copies of the others, each with a distinct stamp (no duplicate content)."""
        k = max(1, round(HEATMAP_RATE * count))
        spots = {int((j + 0.5) * count / k) for j in range(k)}
        out, a, b = [], 0, 0
        for i in range(count):
            if i in spots:
                img, a = images[flagged[a % len(flagged)]].copy(), a + 1
            else:
                img, b = images[normal[b % len(normal)]].copy(), b + 1
            img[0, :8] = np.frombuffer((first + i).to_bytes(16, "little"), dtype=np.uint16)
            out.append(img)
        return out

    paths = stage(root / "staging", stamped(files, 5 * 10**6), "hm-single")
    os.sync()
    station = Station(root / "heatmap-latency", model, threads)
    try:
        station.wait_ready()
        station.drop_one_at_a_time(paths)
        waits = station.ready_to_commit()
        found = station.abnormal_count()
        drawn, _ = station.wait_heatmaps(found, 60 + 10 * found)
    finally:
        station.close()
    figures.append(Figure(f"daemon ready->commit, one file, {on}, next file dropped at the previous commit: "
                          f"mean over {files} files ({shape})", statistics.mean(waits), bare_single, "s/image",
                          "bare Detector.predict on one image, same images"))
    notes.append(f"heat maps on, one file at a time: {found} of {files} verdicts abnormal, {drawn} heat maps drawn "
                 f"(threshold {threshold:.6f}, {gap:.1e} from the nearest image's p_abnormal)")

    paths = stage(root / "staging", stamped(burst, 6 * 10**6), "hm-burst")
    os.sync()
    station = Station(root / "heatmap-burst", model, threads)
    try:
        station.wait_ready()
        start = time.time()
        for path in paths:
            station.drop(path)
        station.wait_scored(burst, 60 + 5 * burst)
        last_commit = last_commit_epoch(station.db)
        found = station.abnormal_count()
        drawn, last_map = station.wait_heatmaps(found, 60 + 10 * found)
    finally:
        station.close()
    figures.append(Figure(f"daemon burst of {burst}, {on}: images/s to the last commit ({shape})",
                          burst / (last_commit - start), bare_batched, "images/s",
                          f"bare predict, batches of {BATCH_SIZE}, same images"))
    if drawn == found and found:
        figures.append(Figure(f"daemon burst of {burst}, {on}: images/s to the last heat map ({shape})",
                              burst / (max(last_map, last_commit) - start), bare_batched, "images/s",
                              f"bare predict, batches of {BATCH_SIZE}, same images"))
    notes.append(f"heat maps on, burst of {burst}: {found} of {burst} verdicts abnormal "
                 f"({found / burst:.0%}), {drawn} heat maps drawn")
    return figures


def main(argv: list[str] | None = None) -> int:
    from inspector.base.config import parse_input_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", default="512x256", help="model input HEIGHTxWIDTH (the paper: 2000x1000)")
    parser.add_argument("--bursts", default="50,200", help="comma-separated burst sizes")
    parser.add_argument("--latency-files", type=int, default=10, help="files dropped one at a time")
    parser.add_argument("--image-scale", type=float, default=1.0, help="synthetic image size (1.0 = 1145x2072)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of daemon and bare model; 0 = every core")
    parser.add_argument("--heatmap-files", type=int, default=19,
                        help=f"distinct images of the heat-map runs, {HEATMAP_RATE:.0%} of them abnormal; 0 = none")
    args = parser.parse_args(argv)
    notes: list[str] = []
    figures = measure(parse_input_size(args.input_size), tuple(int(v) for v in args.bursts.split(",")),
                      args.latency_files, args.image_scale, args.threads, args.heatmap_files, notes)
    print(f"machine: {describe_machine()}")
    print(format_table(figures))
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
