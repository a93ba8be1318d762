"""`make bench`: every benchmark figure of the project in one table, each as a ratio measured in the same run.

Embedding-cache speed-up (bench/cv_cache.py, on every core and on one torch thread) with the
paper-scale estimate computed from its measured per-pass times, daemon latency against the bare
forward pass, burst throughput and peak memory, with heat maps off and on (bench/daemon_latency.py),
the station's ceiling with a near-free model against a bare read + convert + resize loop on every
core and the cv embedding pass against the bare forward pass (bench/pipeline_ceiling.py), image
preparation in torch against the OpenCV path (bench/device_prep.py),
one torch thread against two (bench/torch_threads.py), read+convert against the raw file read
(bench/convert_read.py), 2 and 4 `inspector watch` daemons sharing one capture folder and one
PostgreSQL database against 1 daemon, the claim overhead per file and the takeover of a killed daemon's
claims against the lease (bench/fleet.py, FLEET_FILES files per run, in the first FLEET_REPEAT rounds:
nine daemon start-ups a round), the review station's time to first byte, pages per second with 10,000 verdicts
against a static file, and in Chromium a review screen and the next electrode after a decision key (bench/web.py), a lone file's
predict with the normal model's map, peak and boxes against the bare predict (bench/map_cost.py),
and on a CUDA machine images/s at 2000 x 1000 with batching, fp16 and
channels_last against the same model with the data already on the GPU (the ceiling).

Every measurement runs --repeat times (the cross-validations --cv-repeat times), in rounds, so that
a drift of the machine's load reaches every figure alike; the table gives the smallest, median and
largest measured value of each figure and the ratio of the medians. It is printed and written to
bench/RESULTS.md and docs/BENCHMARKS.md's bench block with the date, the machine, the command, the spread
between runs and the time each part took.

    .venv/bin/python bench/run_all.py [--quick] [--repeat 4] [--cv-repeat 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from convert_read import Figure, describe_machine, write_doc_block  # noqa: E402

RESULTS = HERE / "RESULTS.md"
REPEAT = 4  # rounds of `make bench` (the last note of RESULTS.md gives the time each part took)
CV_REPEAT = 3  # bench/cv_cache.py (both thread counts) runs in the first CV_REPEAT rounds only
PARTS = ("cv_cache", "cv_cache_1thread", "daemon", "pipeline", "prep", "threads", "convert", "fleet", "web", "map",
         "gpu")
CV_PARTS = ("cv_cache", "cv_cache_1thread")
FLEET_FILES = 500  # files per fleet run of `make bench` (bench/fleet.py alone: 1000)
FLEET_REPEAT = 2  # bench/fleet.py runs in the first FLEET_REPEAT rounds only: nine daemons start in each


def json_figures(args: list[str], what: str, timeout: float = 3600,
                 notes: list[str] | None = None) -> tuple[list[Figure], str]:
    """Run a bench script with --json as a subprocess (its own torch threads and OpenMP teams) and read
    the table rows (and, into `notes`, its notes) from the last line of its output."""
    proc = subprocess.run([sys.executable, *args, "--json"], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    try:
        data = json.loads(lines[-1])
        if notes is not None:
            notes.extend(data.get("notes") or [])
        return [Figure(**row) for row in data["figures"]], ""
    except (IndexError, KeyError, TypeError, ValueError):
        text = proc.stdout + proc.stderr
        return [], f"{what} gave no figures I could read (exit {proc.returncode}):\n{text[-1500:]}"


def cv_cache_figures(quick: bool, threads: int = 0) -> tuple[list[Figure], str]:
    """bench/cv_cache.py on `threads` torch threads (0 = every core); the paper-scale estimate only
    with every core, and the theoretical-passes row only once (it does not depend on threads)."""
    args = [str(HERE / "cv_cache.py"), "--threads", str(threads)]
    args += ["--epochs", "3", "--per-bundle", "4"] if quick else []
    args += ["--paper-passes", "0" if threads else ("1" if quick else "2")]
    figures, problem = json_figures(args, f"bench/cv_cache.py --threads {threads}")
    if threads:
        figures = [f for f in figures if f.unit != "passes"]
    return figures, problem


def gpu_figures(device: str = "cuda", input_size: tuple[int, int] = (2000, 1000), batch_size: int = 16,
                images: int = 64, repeats: int = 3) -> list[Figure]:
    """images/s of Detector.predict from host uint16 (batched, fp16 autocast, channels_last on CUDA)
    against a forward pass of the same net on data already on the device (the ceiling)."""
    import torch

    from inspector.data.synth import synth_electrode
    from inspector.learn.infer import Detector
    from inspector.learn.model import init_model, preprocess_batch

    from pipeline_ceiling import station_rate, write_files

    tmp = tempfile.TemporaryDirectory(prefix="inspector-bench-gpu-")
    model = Path(tmp.name) / "detector.safetensors"
    init_model(model, "global", (1700, 2800), input_size, weights="none", seed=0)
    detector = Detector.load(model, device=device, batch_size=batch_size)
    dev = detector.device
    scale = 1.0 if input_size[0] >= 1000 else input_size[0] / 2072
    base = [synth_electrode(seed, scale=scale) for seed in range(4)]
    imgs16 = [base[i % len(base)] for i in range(images)]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    detector.predict(imgs16[:batch_size])  # warm-up: cuDNN picks its kernels
    runs = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        detector.predict(imgs16)
        sync()
        runs.append(images / (time.perf_counter() - start))
    end_to_end = sorted(runs)[len(runs) // 2]

    x = preprocess_batch([detector.convert(img) for img in imgs16[:batch_size]], input_size)
    x = x.to(dev, memory_format=torch.channels_last) if dev.type == "cuda" else x
    cuda = dev.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else torch.autocast("cpu", enabled=False)
    detector.net.eval()
    runs = []
    with torch.inference_mode(), autocast:
        detector.net(x)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            for _ in range(max(1, images // batch_size)):
                detector.net(x)
            sync()
            runs.append(max(1, images // batch_size) * batch_size / (time.perf_counter() - start))
    ceiling = sorted(runs)[len(runs) // 2]
    h, w = input_size
    name = f"{dev.type} predict {h}x{w}, batch {batch_size}{', fp16, channels_last' if dev.type == 'cuda' else ''}"
    figures = [Figure(f"{name}: images/s", end_to_end, ceiling, "images/s", "same net, data already on the device")]
    try:  # the whole daemon: files in, commits out, gate and conversion on the device
        paths = write_files(Path(tmp.name) / "files", stamped(base, 4 * images), "none")
        rate = station_rate(Path(tmp.name) / "station", model, paths, 0, device, batch_size)
        figures.append(Figure(f"{dev.type} daemon burst of {len(paths)} files, input {h}x{w}, batch {batch_size}: "
                              "images/s", rate, ceiling, "images/s", "same net, data already on the device",
                              ">= 0.8x"))
    finally:
        tmp.cleanup()
    return figures


def stamped(base: list, count: int) -> list:
    """`count` distinct images (a pixel row stamped with the index), so no file is a duplicate."""
    from daemon_latency import make_images

    return [img for i in range(count) for img in make_images(base[i % len(base)], 1, i)]


@dataclass
class Row:
    """One figure over the repeated runs: every measured value and every reference value."""
    name: str
    unit: str
    reference_name: str
    target: str
    measured: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return len(self.measured)

    @property
    def median(self) -> float:
        return statistics.median(self.measured)

    @property
    def reference_median(self) -> float:
        values = [v for v in self.reference if not math.isnan(v)]
        return statistics.median(values) if values else float("nan")

    @property
    def ratio(self) -> float:
        ref = self.reference_median
        return self.median / ref if ref and not math.isnan(ref) else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median of the measured values."""
        return (max(self.measured) - min(self.measured)) / self.median if self.median else float("nan")


def collect(rows: dict[tuple[str, str], Row], figures: list[Figure]) -> None:
    """Add one run's figures to the rows (a figure is its name and what it is compared with)."""
    for f in figures:
        row = rows.setdefault((f.name, f.reference_name), Row(f.name, f.unit, f.reference_name, f.target))
        row.measured.append(float(f.measured))
        row.reference.append(float(f.reference))


def value(v: float, unit: str) -> str:
    return "-" if math.isnan(v) else f"{v:.4g} {unit}"


def format_markdown(rows: list[Row]) -> str:
    lines = ["| figure | runs | min | median | max | reference (median) | ratio (of medians) | reference is | target |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        lines.append(f"| {r.name} | {r.runs} | {value(min(r.measured), r.unit)} | {value(r.median, r.unit)} "
                     f"| {value(max(r.measured), r.unit)} | {value(r.reference_median, r.unit)} | {ratio} "
                     f"| {r.reference_name} | {r.target or '-'} {verdict(r)} |")
    return "\n".join(lines)


def spread_note(rows: list[Row]) -> str:
    """How far the runs of one figure lie apart on this machine, from the rows themselves."""
    timed = [r for r in rows if r.runs >= 2 and r.unit != "passes" and not math.isnan(r.spread)]
    if not timed:
        return "one run per figure: no spread between runs to report (--repeat 2 or more gives it)"
    worst = max(timed, key=lambda r: r.spread)
    return (f"spread between runs, (max - min) / median of one figure's measured values: median "
            f"{statistics.median(r.spread for r in timed):.1%} over {len(timed)} figures, largest {worst.spread:.1%} "
            f"({worst.name})")


def verdict(f: Row) -> str:
    """'(met)' or '(missed)' where the target is a ratio bound (on the ratio of medians); never asserted."""
    match = re.fullmatch(r"(<=|>=) ([\d.]+)x.*", f.target)
    if not match or math.isnan(f.ratio):
        return ""
    bound = float(match.group(2))
    ok = f.ratio <= bound if match.group(1) == "<=" else f.ratio >= bound
    return "(met)" if ok else "(missed)"


def run_part(part: str, args, notes: list[str]) -> list[Figure]:
    """One run of one part of the benchmark; problems go to notes, never stop the others."""
    import convert_read
    import daemon_latency
    import device_prep
    import fleet
    import pipeline_ceiling

    quick = args.quick
    if part == "cv_cache":
        figures, problem = cv_cache_figures(quick)
    elif part == "cv_cache_1thread":
        figures, problem = cv_cache_figures(quick, threads=1)
    elif part == "daemon":
        return daemon_latency.measure(bursts=(14, 28) if quick else (50, 200), latency_files=4 if quick else 10,
                                      threads=args.threads, heatmap_files=10 if quick else 19, notes=notes)
    elif part == "pipeline":
        return pipeline_ceiling.measure(files=24 if quick else 80, embed_files=8 if quick else 32)
    elif part == "prep":
        note = device_prep.skipped_note()
        if note:
            notes.append(f"torch preparation on CUDA: {note}")
        return device_prep.measure(images=2 if quick else 4, repeats=2 if quick else 3)
    elif part == "threads":
        figures, problem = json_figures([str(HERE / "torch_threads.py"), "--threads", str(args.threads)]
                                        + (["--predicts", "10", "--gradcams", "2"] if quick else []),
                                        "bench/torch_threads.py")
    elif part == "convert":
        return convert_read.measure(images=4 if quick else 8, repeats=3 if quick else 5)
    elif part == "map":
        figures, problem = json_figures([str(HERE / "map_cost.py")]
                                        + (["--rounds", "1", "--passes", "3", "--sizes", "384x192"] if quick else []),
                                        "bench/map_cost.py")
    elif part == "fleet":
        files = 60 if quick else FLEET_FILES
        notes.append(f"fleet: {files} files per fleet run, fewer than bench/fleet.py's {fleet.N_FILES}, and "
                     f"{FLEET_REPEAT} rounds at most: nine daemons start in each, and the part must stay within about "
                     "4 minutes")
        return fleet.measure(files, claim_files=100 if quick else 400,
                             takeover_files=min(files, 24 if quick else fleet.TAKEOVER_FILES), notes=notes)
    elif part == "web":
        figures, problem = json_figures([str(HERE / "web.py")]
                                        + (["--verdicts", "2000", "--scans", "8", "--seconds", "2"] if quick else []),
                                        "bench/web.py", notes=notes)
    elif part == "gpu":
        return gpu_figures("cuda")
    else:
        raise ValueError(part)
    if problem:
        notes.append(problem)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run, minutes on 2 cores)")
    parser.add_argument("--repeat", type=int, default=REPEAT, help=f"runs of every measurement (default {REPEAT})")
    parser.add_argument("--cv-repeat", type=int, default=None,
                        help=f"runs of the two cross-validations (default: the smaller of --repeat and {CV_REPEAT})")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for the daemon benchmark (0 = every core; 1 is steadier on a busy machine)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
    args = parser.parse_args(argv)
    if args.repeat < 1 or (args.cv_repeat is not None and args.cv_repeat < 1):
        parser.error("--repeat and --cv-repeat take 1 or more")
    cv_repeat = min(args.repeat, CV_REPEAT) if args.cv_repeat is None else min(args.cv_repeat, args.repeat)
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) to skip: {', '.join(sorted(unknown))}; the parts are {', '.join(PARTS)}")
    import torch

    machine = describe_machine()
    print(f"machine: {machine}", flush=True)
    parts = [p for p in PARTS if p not in skip]
    notes: list[str] = []
    if "fleet" in parts:
        import fleet

        skipped = fleet.skipped_note()
        if skipped:
            parts.remove("fleet")
            notes.append(f"fleet of daemons on one folder and one PostgreSQL database (bench/fleet.py): {skipped}")
    if "gpu" in parts and not torch.cuda.is_available():
        parts.remove("gpu")
        notes.append("GPU throughput at 2000 x 1000 (batching, fp16, channels_last vs data on the GPU): "
                     "skipped, no CUDA device on this machine")
    rows: dict[tuple[str, str], Row] = {}
    seconds = {p: 0.0 for p in parts}
    started = time.monotonic()
    for round_ in range(args.repeat):
        for part in parts:
            if part in CV_PARTS and round_ >= cv_repeat or part == "fleet" and round_ >= FLEET_REPEAT:
                continue
            print(f"round {round_ + 1}/{args.repeat}: {part} ...", flush=True)
            t0 = time.monotonic()
            try:
                collect(rows, run_part(part, args, notes))
            except Exception as exc:  # one part failing (a daemon that would not start) must not lose the rest
                notes.append(f"{part}, round {round_ + 1}: failed, its rows miss this run: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:500]}")
            seconds[part] += time.monotonic() - t0
            print(f"round {round_ + 1}/{args.repeat}: {part} took {time.monotonic() - t0:.0f} s", flush=True)
    total = time.monotonic() - started
    notes = list(dict.fromkeys(notes))  # a note repeated by every round once
    table_rows = list(rows.values())
    table = format_markdown(table_rows)
    runs = (f"each figure measured in {args.repeat} round{'s' * (args.repeat != 1)}"
            + (f", the rows of bench/cv_cache.py in the first {cv_repeat}" if cv_repeat < args.repeat and
               any(p in parts for p in CV_PARTS) else "")
            + (f", those of bench/fleet.py in the first {FLEET_REPEAT}" if FLEET_REPEAT < args.repeat and
               "fleet" in parts else "")
            + "; min, median and max of the measured value over the runs, reference and ratio from the medians; "
            "rows marked \"computed ... not measured\" are estimates from measured times")
    notes = [spread_note(table_rows), *notes,
             "time per part, all rounds: " + ", ".join(f"{p} {s:.0f} s" for p, s in seconds.items())
             + f"; {total / 60:.1f} min in all"]
    print()
    print(runs)
    print()
    print(table)
    for note in notes:
        print(f"note: {note}")
    if not args.no_write:
        given = argv if argv is not None else sys.argv[1:]
        command = " ".join(shlex.quote(a) for a in ["python", "bench/run_all.py", *given])
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        RESULTS.write_text(
            "# Benchmark results\n\nWritten by `bench/run_all.py`; each ratio is of medians measured in the "
            "same rounds. Targets are printed, never asserted.\n\n"
            f"- date: {date}\n- machine: {machine}\n"
            f"- command: `{command}` (`make bench` runs it without options)\n- runs: {runs}\n\n{table}\n"
            + "".join(f"\n- {n}" for n in notes) + "\n")
        write_doc_block("bench", "run_all.py", f"{date}, {machine}, `{command}`; {runs}:\n\n{table}\n"
                           + "".join(f"\n- {n}" for n in notes))
        print(f"wrote {RESULTS} and the bench block of docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
