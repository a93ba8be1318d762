"""The station's own ceiling and the bulk embedding pass, each against the work it cannot avoid, same run.

Station ceiling: `inspector watch` with a near-free model (ResNet-34 at 32 x 16 input, about 4 ms an
image on 2 cores) and a quality gate on (blur, clipping, size), a burst of FILES distinct 1129 x 2074
scans linked into its capture folder at once; images/s from the first file ready to the last commit
(the settle wait is latency, not throughput). Reference: a bare loop of read + convert + resize
(prepare.convert_resized, the pipeline's own conversion) over the same files on every core, in this
run. A second reference adds what the station must also do per file (sha256 and the quality gate),
so the gap between the two references is that work and the gap to the station is the daemon itself
(queues, database, moves). For uncompressed and zlib TIFF and 16-bit PNG, at 1 and 2 workers (and
every core where there are more).

CV embedding pass: features.embed_dataset (no cache) over zlib TIFFs, images decoded, converted and
resized on every core while the backbone runs, against the bare batched forward pass (embed_all) of
the same images already converted to tensors.

    .venv/bin/python bench/pipeline_ceiling.py [--files 120] [--repeats 1] [--json]
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
from convert_read import Figure, describe_machine, print_figures  # noqa: E402
from daemon_latency import Station, make_images  # noqa: E402

FREE_INPUT = (32, 16)  # the near-free model: the station's own work is what is left
EMBED_INPUT = (512, 256)
FORMATS = ("none", "zlib", "png")
TARGET = ">= 0.8x"
GATE = {"blur_min": 1.0, "clipped_fraction": 0.5}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_settings() -> list[int]:
    return sorted({1, 2, cores()})


def write_files(folder: Path, images: list[np.ndarray], fmt: str) -> list[Path]:
    import cv2
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        if fmt == "png":
            path = folder / f"scan-{i:05d}.png"
            cv2.imwrite(str(path), img)
        else:
            path = folder / f"scan-{i:05d}.tif"
            tifffile.imwrite(path, img, photometric="minisblack", **({} if fmt == "none" else {"compression": fmt}))
        paths.append(path)
    return paths


def write_free_model(path: Path, window: tuple[int, int], shape: tuple[int, int]) -> None:
    """An untrained ResNet-34 at 32 x 16 input with the gate on; threshold 1.0: every verdict normal."""
    import torch

    from inspector.learn.model import ModelMeta, build_detector, save_model

    torch.manual_seed(0)
    quality = dict(GATE, height=[shape[0], shape[0]], width=[shape[1], shape[1]])
    meta = ModelMeta(method="global", window=window, input_size=FREE_INPUT, weights="none", trained=False,
                     threshold=1.0, threshold_source="bench: near-free model", quality=quality)
    save_model(path, build_detector("none"), meta)


def bare_rate(paths: list[Path], work, workers: int, repeats: int) -> float:
    """Images/s of work(path) over every path on `workers` threads (pipeline.ordered_map), median of repeats."""
    from inspector.base.pipeline import ordered_map

    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in ordered_map(work, paths, workers):
            pass
        rates.append(len(paths) / (time.perf_counter() - start))
    return statistics.median(rates)


def station_rate(root: Path, model: Path, paths: list[Path], workers: int, device: str = "cpu",
                 batch_size: int = 4) -> float:
    """A fresh station; every file linked in at once; images/s from the first file ready to the last commit."""
    station = Station(root, model, threads=cores(), workers=workers, device=device, batch_size=batch_size)
    try:
        station.wait_ready()
        for path in paths:
            os.link(path, station.capture / path.name)
        station.wait_scored(len(paths), 60 + 2 * len(paths))
        con = sqlite3.connect(f"file:{station.db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT created_at, ready_to_commit_seconds FROM verdicts").fetchall()
        finally:
            con.close()
    finally:
        station.close()
    commits = [datetime.fromisoformat(c).replace(tzinfo=timezone.utc).timestamp() for c, _ in rows]
    first_ready = min(t - r for t, (_, r) in zip(commits, rows))
    return len(rows) / (max(commits) - first_ready)


def embed_figures(paths: list[Path], window: tuple[int, int], repeats: int) -> list[Figure]:
    """embed_dataset (no cache, every core decoding) against embed_all on tensors already made."""
    import torch

    from inspector.learn.features import EmbedItem, EmbedStats, embed_dataset
    from inspector.imaging.read import read_image
    from inspector.learn.model import build_detector, preprocess_batch
    from inspector.imaging.convert import Conversion
    from inspector.data.views import View

    torch.manual_seed(0)
    net = build_detector("none").eval()
    view = View(Conversion("global", window))
    items = [EmbedItem(f"{i:064x}", i, "none") for i in range(len(paths))]
    load = lambda i: view.network_input(read_image(paths[i]), EMBED_INPUT)  # noqa: E731
    batch = 16
    x = preprocess_batch([load(i) for i in range(len(paths))], EMBED_INPUT)
    dev = torch.device("cpu")

    def bare() -> None:
        with torch.inference_mode():
            for k in range(0, len(paths), batch):
                net.embed_all(x[k:k + batch])

    def pipeline() -> None:
        embed_dataset(net, items, load, EMBED_INPUT, dev, None, EmbedStats(), batch_size=batch, workers=cores())

    bare()  # warm-up: oneDNN's first call of a shape
    rates = {}
    for name, fn in (("bare", bare), ("pipeline", pipeline)):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append(len(paths) / (time.perf_counter() - start))
        rates[name] = statistics.median(runs)
    size = f"{len(paths)} zlib TIFFs 1129x2074, input {EMBED_INPUT[0]}x{EMBED_INPUT[1]}, batch {batch}"
    return [Figure(f"cv embedding pass (embed_dataset, no cache, {cores()} decoding threads): images/s ({size})",
                   rates["pipeline"], rates["bare"], "images/s", "bare batched embed_all on ready tensors",
                   ">= 0.8x")]


def measure(files: int = 120, repeats: int = 1, embed_files: int = 32) -> list[Figure]:
    """Every figure of this benchmark, each against its reference measured in the same run."""
    from inspector.imaging.convert import Conversion, fit_window
    from inspector.imaging.read import file_sha256, read_image
    from inspector.imaging.prepare import InputSpec, convert_resized, prepare
    from inspector.data.synth import synth_electrode

    figures: list[Figure] = []
    base = synth_electrode(0, scale=1.0)
    window = fit_window([base])
    spec = InputSpec(Conversion("global", window), FREE_INPUT, quality=dict(GATE, height=[base.shape[0]] * 2,
                                                                             width=[base.shape[1]] * 2))
    with tempfile.TemporaryDirectory(prefix="inspector-bench-ceiling-") as tmp:
        root = Path(tmp)
        model = root / "free.safetensors"
        write_free_model(model, (window.lo, window.hi), base.shape)
        images = make_images(base, files, 0)
        for fmt in FORMATS:
            paths = write_files(root / f"files-{fmt}", images, fmt)
            os.sync()
            label = f"{files} files {fmt if fmt == 'png' else fmt + ' TIFF'}, {base.shape[0]}x{base.shape[1]} px"
            unavoidable = bare_rate(paths, lambda p: convert_resized(read_image(p), spec), cores(), repeats)
            all_work = bare_rate(paths, lambda p: (file_sha256(p), prepare(read_image(p), spec)), cores(), repeats)
            for workers in worker_settings():
                rate = statistics.median(station_rate(root / f"station-{fmt}-{workers}-{r}", model, paths, workers)
                                         for r in range(repeats))
                what = f"station ceiling, near-free model, {workers} worker{'s' * (workers > 1)}: images/s ({label})"
                figures.append(Figure(what, rate, unavoidable, "images/s",
                                      f"bare read + convert + resize on {cores()} threads", TARGET))
                figures.append(Figure(what, rate, all_work, "images/s",
                                      f"bare sha256 + read + gate + convert + resize on {cores()} threads", ""))
        embed_paths = write_files(root / "embed", images[:embed_files], "zlib")
        figures += embed_figures(embed_paths, (window.lo, window.hi), max(repeats, 2))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=120, help="scans per burst")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every measurement (median taken)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the table rows")
    args = parser.parse_args(argv)
    print(f"machine: {describe_machine()}", flush=True)
    print_figures(measure(args.files, args.repeats), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
