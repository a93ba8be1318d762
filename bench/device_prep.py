"""Image preparation per image: the CPU path (prepare.prepare, OpenCV) against the same work in torch.

At 1129 x 2074 px (synthetic electrodes from inspector.data.synth), method global with the quality gate on,
input 512 x 256: ms per image of prepare.prepare + normalization against devprep.DevicePrep on device
cpu (the same torch code a GPU runs), both in this run. On a CUDA machine also images/s of DevicePrep
from host uint16 against the normalization alone of inputs already on the GPU (skipped with a note
without CUDA).

    .venv/bin/python bench/device_prep.py [--images 4] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_read import Figure, describe_machine, print_figures  # noqa: E402

SHAPE = (1129, 2074)
INPUT_SIZE = (512, 256)
LIMITS = {"blur_min": 1.0, "clipped_fraction": 0.5}


def images16(count: int) -> list[np.ndarray]:
    """`count` synthetic electrodes cropped or padded to SHAPE."""
    from inspector.data.synth import synth_electrode

    out = []
    for seed in range(count):
        img = synth_electrode(seed, scale=1.0)
        canvas = np.full(SHAPE, int(np.median(img)), np.uint16)
        h, w = min(SHAPE[0], img.shape[0]), min(SHAPE[1], img.shape[1])
        canvas[:h, :w] = img[:h, :w]
        out.append(canvas)
    return out


def seconds_per_image(fn, imgs: list[np.ndarray], repeats: int, sync=lambda: None) -> float:
    """Median over repeats of the mean seconds per image of fn(imgs) (after one warm-up call)."""
    fn(imgs)
    sync()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(imgs)
        sync()
        runs.append((time.perf_counter() - start) / len(imgs))
    return statistics.median(runs)


def measure(images: int = 4, repeats: int = 3) -> list[Figure]:
    """Every figure of this benchmark, each against its reference in the same run (the CUDA one only where
    torch sees a CUDA device: skipped_note() says so otherwise)."""
    import torch

    from inspector.imaging.convert import Conversion, fit_window
    from inspector.learn.devprep import DevicePrep
    from inspector.learn.model import normalize
    from inspector.imaging.prepare import InputSpec, prepare

    imgs = images16(images)
    spec = InputSpec(Conversion("global", fit_window(imgs)), INPUT_SIZE, quality=LIMITS)

    def cpu_path(batch):
        prepared = [prepare(img, spec) for img in batch]
        return normalize(torch.from_numpy(np.stack([p.img8 for p in prepared if p.reason is None])))

    on_cpu = DevicePrep(spec, "cpu")
    assert on_cpu.run(imgs)[1] == [prepare(img, spec).reason for img in imgs]
    cpu_s = seconds_per_image(cpu_path, imgs, repeats)
    torch_s = seconds_per_image(on_cpu.run, imgs, repeats)
    label = f"{SHAPE[0]}x{SHAPE[1]} -> {INPUT_SIZE[0]}x{INPUT_SIZE[1]}, global, gate on"
    figures = [Figure(f"torch prep on the CPU, ms/image ({label})", torch_s * 1e3, cpu_s * 1e3, "ms/image",
                      "prepare.prepare (OpenCV) + normalize")]
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        on_gpu = DevicePrep(spec, dev)

        def sync() -> None:
            torch.cuda.synchronize(dev)

        gpu_s = seconds_per_image(on_gpu.run, imgs, repeats, sync)
        levels8 = torch.from_numpy(np.stack([prepare(img, spec).img8 for img in imgs])).to(dev)
        ceiling_s = seconds_per_image(lambda _: normalize(levels8), imgs, repeats, sync)
        figures.append(Figure(f"cuda DevicePrep from host uint16, images/s ({label})", 1 / gpu_s, 1 / ceiling_s,
                              "images/s", "normalize of inputs already on the GPU"))
    return figures


def skipped_note() -> str | None:
    """Why the CUDA figure is missing, or None."""
    import torch

    return None if torch.cuda.is_available() else "cuda figure skipped: torch.cuda.is_available() is False here"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="synthetic 1129 x 2074 images")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images (median taken)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the table rows")
    args = parser.parse_args(argv)
    print(f"machine: {describe_machine()}")
    print_figures(measure(args.images, args.repeats), args.json, [note for note in (skipped_note(),) if note])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
