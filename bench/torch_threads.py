"""One torch thread or two: the same scoring and heat-map work, on one thread as the daemon does it,
and on two threads at once (heat maps on their own thread, as before 2026-11-26).

Each thread that runs torch gets its own OpenMP team, so two threads at once run more OpenMP
threads than the cores they share. Measured on the bench's detector (as bench/daemon_latency.py
builds it): the wall time of the same work (P single-image predicts, G Grad-CAM heat maps) both
ways, and the median predict while a heat map runs on another thread against the median predict
alone.

    python bench/torch_threads.py [--predicts 38] [--gradcams 8] [--threads 0] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_read import Figure, describe_machine, print_figures  # noqa: E402
from daemon_latency import BATCH_SIZE, make_images, write_model  # noqa: E402


def on_thread(fn) -> None:
    """Run fn on a fresh thread (not the main one) and wait for it; re-raise what it raised."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            failure.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if failure:
        raise failure[0]


def measure(input_size: tuple[int, int] = (512, 256), predicts: int = 38, gradcams: int = 8, threads: int = 0,
            image_scale: float = 1.0) -> list[Figure]:
    import torch

    from inspector.learn.explain import explain_image
    from inspector.learn.infer import Detector
    from inspector.data.synth import synth_electrode

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    base = synth_electrode(0, scale=image_scale)
    lo, hi = np.percentile(base, [0.01, 99.99]).astype(int)
    with tempfile.TemporaryDirectory(prefix="inspector-bench-threads-") as tmp:
        model = Path(tmp) / "detector.safetensors"
        write_model(model, (int(lo), int(hi)), input_size)
        detector = Detector.load(model, device="cpu", batch_size=BATCH_SIZE)
    images = make_images(base, 8, 7 * 10**6)
    every = max(1, predicts // max(gradcams, 1))

    def predict(i: int, log: list[float]) -> None:
        start = time.perf_counter()
        detector.predict([images[i % len(images)]])
        log.append(time.perf_counter() - start)

    def warm() -> None:
        for i in range(3):
            detector.predict([images[i]])
        explain_image(detector, images[0])

    alone: list[float] = []

    def one_thread() -> None:
        """The daemon's way: every predict and every heat map on the one worker thread, in turn."""
        done = 0
        for i in range(predicts):
            predict(i, alone)
            if (i + 1) % every == 0 and done < gradcams:
                explain_image(detector, images[i % len(images)])
                done += 1
        for _ in range(gradcams - done):
            explain_image(detector, images[0])

    shared: list[tuple[float, float]] = []  # (end time, seconds) of each predict of the two-thread run
    maps_done = [0.0]

    def two_threads() -> None:
        """Predicts on one thread, heat maps on another, at the same time."""
        def maps() -> None:
            for i in range(gradcams):
                explain_image(detector, images[i % len(images)])
            maps_done[0] = time.perf_counter()

        def scores() -> None:
            log: list[float] = []
            for i in range(predicts):
                predict(i, log)
                shared.append((time.perf_counter(), log[-1]))

        a, b = threading.Thread(target=maps), threading.Thread(target=scores)
        a.start()
        b.start()
        a.join()
        b.join()

    on_thread(warm)
    start = time.perf_counter()
    on_thread(one_thread)
    t_one = time.perf_counter() - start
    start = time.perf_counter()
    on_thread(two_threads)
    t_two = time.perf_counter() - start
    during = [s for end, s in shared if end <= maps_done[0]]
    size = f"{input_size[0]}x{input_size[1]} input, threads={threads}"
    figures = [Figure(f"{predicts} predicts + {gradcams} Grad-CAM heat maps: two torch threads at once / one thread, "
                      f"wall time ({size})", t_two, t_one, "s", "one thread, in turn (the daemon's way)")]
    if during:
        figures.append(Figure(f"predict of one image while a heat map runs on a second torch thread ({size})",
                              statistics.median(during), statistics.median(alone), "s/image",
                              "the same predict on the only torch thread"))
    return figures


def main(argv: list[str] | None = None) -> int:
    from inspector.base.config import parse_input_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", default="512x256", help="model input HEIGHTxWIDTH")
    parser.add_argument("--predicts", type=int, default=38, help="single-image predicts")
    parser.add_argument("--gradcams", type=int, default=8, help="Grad-CAM heat maps (about 21%% of the predicts)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = every core")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the table rows")
    args = parser.parse_args(argv)
    figures = measure(parse_input_size(args.input_size), args.predicts, args.gradcams, args.threads)
    print(f"machine: {describe_machine()}")
    print_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
