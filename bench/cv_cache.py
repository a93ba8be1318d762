"""Benchmark: the same leave-one-bundle-out cross-validation with and without the embedding cache.

Prints both wall times, their ratio, the theoretical ratio (backbone passes without / with the
cache) and measured / theoretical, with the machine. The cache starts cold, so the cached run
pays for every feature it uses. Usage: python bench/cv_cache.py [--data DIR] [--epochs 10] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="A dataset folder; default: synthesize one in a temp folder.")
    parser.add_argument("--bundles", type=int, default=4)
    parser.add_argument("--per-bundle", type=int, default=6)
    parser.add_argument("--scale", type=float, default=0.12)
    parser.add_argument("--input-size", default="128x64")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--method", default="global")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = every core")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from inspector.config import Config, parse_input_size
    from inspector.crossval import cross_validate
    from inspector.dataset import load_dataset
    from inspector.synth import synthesize
    from inspector.model import build_detector, resolve_device
    from inspector.train import set_threads

    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="cv-cache-bench-") as tmp:
        if args.data:
            ds = load_dataset(args.data)
        else:
            ds = synthesize(Path(tmp) / "ds", bundles=args.bundles, per_bundle=args.per_bundle,
                            abnormal_rate=0.25, scale=args.scale, seed=args.seed, progress=False)
        base = Config()
        cfg = dataclasses.replace(
            base,
            model=dataclasses.replace(base.model, weights="none", input_size=parse_input_size(args.input_size)),
            train=dataclasses.replace(base.train, epochs=args.epochs, min_steps=0, seed=args.seed,
                                      cache_dir=str(Path(tmp) / "cache")))
        # warm-up: the first convolutions on a fresh process pay one-off allocator/kernel set-up
        warm = build_detector("none").to(device).eval()
        with torch.inference_mode():
            warm.embed(torch.zeros((2, 3, *cfg.model.input_size), device=device))
        del warm
        runs = {}
        for use_cache in (False, True):
            started, cpu_started = time.perf_counter(), time.process_time()
            res = cross_validate(ds, [args.method], cfg, device, use_cache=use_cache, warn=print)
            if device.type == "cuda":
                torch.cuda.synchronize()
            runs[use_cache] = (time.perf_counter() - started, time.process_time() - cpu_started, res)
        (t_full, cpu_full, full), (t_cache, cpu_cache, cached) = runs[False], runs[True]
    measured = t_full / t_cache
    theoretical = full.passes / max(cached.passes, 1)
    diff = float(np.max(np.abs(full.methods[args.method].oof - cached.methods[args.method].oof)))
    windows = cached.methods[args.method].windows
    h, w = cfg.model.input_size
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores ({threads} torch threads), torch {torch.__version__}, "
          f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"python {platform.python_version()}")
    print(f"data: {len(ds)} images in {len(ds.bundles)} bundles, method {args.method} "
          f"({len(windows)} distinct window(s) over {len(ds.bundles)} folds), input {h}x{w}, "
          f"{args.epochs} epochs, batch {cfg.train.batch_size}, weights none")
    for name, t, cpu, res in (("no cache", t_full, cpu_full, full), ("cache", t_cache, cpu_cache, cached)):
        per_pass = 1000 * res.backbone_seconds / max(res.passes, 1)
        print(f"{name:<9}: {t:8.2f} s wall, {cpu:8.2f} s CPU, {res.passes:6d} backbone passes "
              f"({per_pass:.1f} ms each), {t - res.backbone_seconds:6.2f} s outside the backbone")
    print(f"measured ratio    {measured:6.2f}x wall, {cpu_full / cpu_cache:6.2f}x CPU time")
    print(f"theoretical ratio {theoretical:6.2f}x (backbone passes without / with the cache)")
    print(f"measured / theoretical {measured / theoretical:6.1%} wall, {cpu_full / cpu_cache / theoretical:6.1%} "
          "CPU time (target >= 80%)")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    print(f"max |p_cache - p_full| over out-of-fold predictions: {diff:.2e}")
    pooled_full, pooled_cache = full.methods[args.method].pooled, cached.methods[args.method].pooled
    print(f"pooled counts equal: {pooled_full == pooled_cache} ({pooled_cache})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
