"""Read+convert time per image (each conversion method) against the raw file-read time in the same run.

At the paper's image size (about 1145 x 2072 px, synthetic electrodes from inspector.data.dataset), for
plain and zlib-compressed TIFF. The raw read (open + read all bytes) is the floor any reader pays;
the ratio says what header checks, decoding and conversion add on top of it.

    .venv/bin/python bench/convert_read.py [--images 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector.imaging.convert import METHODS, convert_image, fit_window
from inspector.data.synth import synth_electrode
from inspector.imaging.read import read_image

COMPRESSIONS = ("none", "zlib")


@dataclass(frozen=True)
class Figure:
    """One row of the benchmark table: a measured figure next to its same-run reference."""
    name: str
    measured: float
    reference: float
    unit: str
    reference_name: str
    target: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.reference if self.reference else float("nan")


BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"  # every generated block lives there


def write_doc_block(name: str, script: str, body: str) -> bool:
    """Replace docs/BENCHMARKS.md's text between the `name` markers with `body`; False (and a warning) when the
    markers are missing."""
    import re

    begin, end = f"<!-- {name}:begin (written by bench/{script}) -->", f"<!-- {name}:end -->"
    text = BENCHMARKS.read_text()
    if begin not in text or end not in text:
        print(f"warning: {BENCHMARKS} has no {name} block ({begin} ... {end}); nothing written there")
        return False
    BENCHMARKS.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{body}\n{end}",
                                 text, flags=re.S))
    return True


def describe_machine() -> str:
    """CPU model, cores, torch version and the device the model would run on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import torch

        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu (no CUDA device)"
        torch_text = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:  # pragma: no cover - torch is a dependency
        device, torch_text = "unknown", "torch missing"
    return f"{cpu}, {cores} cores, {torch_text}, device {device}, Python {platform.python_version()}"


def write_images(folder: Path, count: int, compression: str) -> list[Path]:
    """`count` full-size synthetic electrodes as 16-bit TIFF files."""
    import tifffile

    paths = []
    for seed in range(count):
        path = folder / f"electrode-{compression}-{seed}.tif"
        kwargs = {} if compression == "none" else {"compression": compression}
        tifffile.imwrite(path, synth_electrode(seed, scale=1.0), photometric="minisblack", **kwargs)
        paths.append(path)
    return paths


def time_per_image(paths: list[Path], fn, repeats: int) -> float:
    """Median over repeats of the mean seconds per image of fn(path) over all paths."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        runs.append((time.perf_counter() - start) / len(paths))
    return statistics.median(runs)


def read_raw(path: Path) -> int:
    with open(path, "rb") as fh:
        return len(fh.read())


def measure(images: int = 8, repeats: int = 5) -> list[Figure]:
    """Every figure of this benchmark, each against the raw read of the same files in the same run."""
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="inspector-bench-") as tmp:
        window = fit_window(synth_electrode(seed, scale=1.0) for seed in range(100, 104))
        for compression in COMPRESSIONS:
            paths = write_images(Path(tmp), images, compression)
            time_per_image(paths, read_raw, 1)  # warm the page cache for every reader alike
            raw = time_per_image(paths, read_raw, repeats)
            size_mb = np.mean([p.stat().st_size for p in paths]) / 1e6
            label = f"{compression} TIFF, {size_mb:.1f} MB"
            read = time_per_image(paths, read_image, repeats)
            figures.append(Figure(f"read_image ({label})", read, raw, "s/image", "raw read"))
            for method in METHODS:
                win = window if method in ("global", "mix", "clahe") else None
                seconds = time_per_image(paths, lambda p: convert_image(read_image(p), method, window=win), repeats)
                figures.append(Figure(f"read+convert {method} ({label})", seconds, raw, "s/image", "raw read"))
    return figures


def format_table(figures: list[Figure]) -> str:
    lines = [f"{'figure':<52} {'measured':>12} {'reference':>12} {'ratio':>8}  reference / target"]
    for f in figures:
        lines.append(f"{f.name:<52} {f.measured:>12.5f} {f.reference:>12.5f} {f.ratio:>7.1f}x  "
                     f"{f.reference_name}{'; target ' + f.target if f.target else ''}")
    return "\n".join(lines)


def print_figures(figures: list[Figure], as_json: bool = False, notes: list[str] | None = None) -> None:
    """The table, any notes, and with as_json one last line of JSON (what bench/run_all.py reads)."""
    print(format_table(figures))
    for note in notes or []:
        print(f"note: {note}")
    if as_json:
        print(json.dumps({"figures": [vars(f) for f in figures], "notes": notes or []}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="synthetic full-size images per compression")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the images (median taken)")
    args = parser.parse_args(argv)
    print(f"machine: {describe_machine()}")
    print(format_table(measure(args.images, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
