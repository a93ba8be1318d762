"""`make bench`: every benchmark figure of the project in one table, each as a ratio measured in the same run.

Embedding-cache speed-up (bench/cv_cache.py), daemon latency against the bare forward pass, burst
throughput and peak memory (bench/daemon_latency.py), read+convert against the raw file read
(bench/convert_read.py), and on a CUDA machine images/s at 2000 x 1000 with batching, fp16 and
channels_last against the same model with the data already on the GPU (the ceiling). The table is
printed and written to bench/RESULTS.md with the date, the machine and the command.

    .venv/bin/python bench/run_all.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from convert_read import Figure, describe_machine, write_readme_block  # noqa: E402

RESULTS = HERE / "RESULTS.md"


def cv_cache_figures(quick: bool) -> tuple[list[Figure], str]:
    """Run E's bench/cv_cache.py as a subprocess and read its two wall times and theoretical ratio."""
    args = [sys.executable, str(HERE / "cv_cache.py")] + (["--epochs", "3", "--per-bundle", "4"] if quick else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    text = proc.stdout + proc.stderr
    full = re.search(r"^no cache\s*:\s*([\d.]+) s\b.*?(\d+) backbone passes", text, re.M)
    cached = re.search(r"^cache\s*:\s*([\d.]+) s\b.*?(\d+) backbone passes", text, re.M)
    if proc.returncode != 0 or not full or not cached:
        return [], f"bench/cv_cache.py gave no figures I could read (exit {proc.returncode}):\n{text[-1500:]}"
    theory = int(full.group(2)) / max(int(cached.group(2)), 1)
    speedup = Figure("cross-validation without / with embedding cache (wall time)", float(full.group(1)),
                     float(cached.group(1)), "s", "with cache (cold)", f">= {0.8 * theory:.1f}x (80% of theory)")
    passes = Figure("backbone passes without / with cache (theoretical ratio)", float(full.group(2)),
                    float(cached.group(2)), "passes", "with cache")
    return [speedup, passes], ""


def gpu_figures(device: str = "cuda", input_size: tuple[int, int] = (2000, 1000), batch_size: int = 16,
                images: int = 64, repeats: int = 3) -> list[Figure]:
    """images/s of Detector.predict from host uint16 (batched, fp16 autocast, channels_last on CUDA)
    against a forward pass of the same net on data already on the device (the ceiling)."""
    import torch

    from inspector.synth import synth_electrode
    from inspector.infer import Detector
    from inspector.model import init_model, preprocess_batch

    with tempfile.TemporaryDirectory(prefix="inspector-bench-gpu-") as tmp:
        model = Path(tmp) / "detector.safetensors"
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

    x = preprocess_batch([detector.prepare(img) for img in imgs16[:batch_size]], input_size)
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
    return [Figure(f"{name}: images/s", end_to_end, ceiling, "images/s", "same net, data already on the device")]


def format_markdown(figures: list[Figure]) -> str:
    lines = ["| figure | measured | reference | ratio | reference is | target |", "|---|---:|---:|---:|---|---|"]
    for f in figures:
        lines.append(f"| {f.name} | {f.measured:.4g} {f.unit} | {f.reference:.4g} {f.unit} | {f.ratio:.2f}x "
                     f"| {f.reference_name} | {f.target or '-'} {verdict(f)} |")
    return "\n".join(lines)


def verdict(f: Figure) -> str:
    """'(met)' or '(missed)' where the target is a ratio bound; measured, never asserted."""
    match = re.fullmatch(r"(<=|>=) ([\d.]+)x.*", f.target)
    if not match:
        return ""
    bound = float(match.group(2))
    ok = f.ratio <= bound if match.group(1) == "<=" else f.ratio >= bound
    return "(met)" if ok else "(missed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes on 2 cores)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for the daemon benchmark (0 = every core; 1 is steadier on a busy machine)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: cv_cache,daemon,convert,gpu")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    import torch

    import convert_read
    import daemon_latency

    machine = describe_machine()
    print(f"machine: {machine}", flush=True)
    figures: list[Figure] = []
    notes: list[str] = []
    started = time.monotonic()
    if "cv_cache" not in skip:
        print("running bench/cv_cache.py ...", flush=True)
        found, problem = cv_cache_figures(args.quick)
        figures += found
        notes += [problem] if problem else []
    if "daemon" not in skip:
        print("running bench/daemon_latency.py ...", flush=True)
        figures += daemon_latency.measure(bursts=(20, 50) if args.quick else (50, 200),
                                          latency_files=5 if args.quick else 10, threads=args.threads)
    if "convert" not in skip:
        print("running bench/convert_read.py ...", flush=True)
        figures += convert_read.measure(images=4 if args.quick else 8, repeats=3 if args.quick else 5)
    if "gpu" not in skip:
        if torch.cuda.is_available():
            print("running the GPU throughput benchmark ...", flush=True)
            figures += gpu_figures("cuda")
        else:
            notes.append("GPU throughput at 2000 x 1000 (batching, fp16, channels_last vs data on the GPU): "
                         "skipped, no CUDA device on this machine")
    table = format_markdown(figures)
    print()
    print(table)
    for note in notes:
        print(f"note: {note}")
    print(f"({time.monotonic() - started:.0f} s)")
    if not args.no_write:
        given = argv if argv is not None else sys.argv[1:]
        command = " ".join(shlex.quote(a) for a in ["python", "bench/run_all.py", *given])
        RESULTS.write_text(
            "# Benchmark results\n\nWritten by `bench/run_all.py`; each ratio is measured against its reference in the "
            "same run. Targets are printed, never asserted.\n\n"
            f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n- machine: {machine}\n"
            f"- command: `{command}` (`make bench` runs it without options)\n\n{table}\n"
            + "".join(f"\n- {n}" for n in notes) + "\n")
        write_readme_block("bench", "run_all.py", f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {machine}, "
                           f"`{command}`:\n\n{table}\n" + "".join(f"\n- {n}" for n in notes))
        print(f"wrote {RESULTS} and the bench block of README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
