"""Benchmark: the same leave-one-bundle-out cross-validation with and without the embedding cache.

Prints both wall times, their ratio, the theoretical ratio (backbone passes without / with the
cache) and measured / theoretical, with the machine. The cache starts cold, so the cached run
pays for every feature it uses.

The run is small (few images, few epochs, a small input). It also measures, in the same process,
one backbone pass at the paper's input size (2000 x 1000, both the training path and the cache's
all-stages path) and one optimizer step of the head on cached features, and computes from them the
paper-scale leave-one-bundle-out cross-validation (12 bundles, 714 images, 50 epochs) with and
without the cache: an estimate computed from measured per-pass times, not a measurement.

    python bench/cv_cache.py [--data DIR] [--epochs 6] [--threads 0] [--paper-passes 2] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The paper's data set and schedule, for the computed estimate (not run here).
PAPER_BUNDLES = 12
PAPER_IMAGES = 714
PAPER_EPOCHS = 50
PAPER_INPUT = (2000, 1000)
FLIP_VARIANTS = 4  # none, h, v, hv: what the cache keeps per image and window
HEAD_EPOCHS = (10, 210)  # two head-only schedules on a warm cache; their difference is pure head steps


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def head_step_seconds(ds, cfg, device, method: str) -> tuple[float, int]:
    """Seconds of one optimizer step of the head on cached features, and the backbone passes it needed.

    fit() on the first fold at HEAD_EPOCHS[1] epochs once (fills the cache with every flip the plan
    draws), then at both epoch counts timed: the difference is head steps alone (reading the cache,
    fitting the standardizer and building the net are in both and cancel out)."""
    from inspector.data.dataset import leave_one_bundle_out
    from inspector.learn.features import EmbedStats
    from inspector.learn.train import build_net_on, fit, resolve_cache
    from inspector.data.views import ImageSource, fit_view

    fold = leave_one_bundle_out(ds.samples)[0]
    source = ImageSource.of(ds, cfg)
    store, use_cache = resolve_cache(cfg, ds, True, None)
    view = fit_view(source, fold.train_idx, method, cfg)
    seconds, passes = {}, 0
    for epochs in (HEAD_EPOCHS[1], *HEAD_EPOCHS):
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
        net = build_net_on(c, device)
        stats = EmbedStats()
        started = time.perf_counter()
        fit(net, source, fold.train_idx, view, c, device, store, use_cache, stats, desc="head")
        seconds[epochs] = time.perf_counter() - started - stats.backbone_seconds
        passes += stats.passes
    steps_per_epoch = -(-len(fold.train_idx) // cfg.train.batch_size)
    per_step = (seconds[HEAD_EPOCHS[1]] - seconds[HEAD_EPOCHS[0]]) / ((HEAD_EPOCHS[1] - HEAD_EPOCHS[0]) * steps_per_epoch)
    return max(per_step, 0.0), passes


def paper_pass_seconds(cfg, device, timed: int) -> dict[str, float]:
    """Seconds per image of one backbone pass at PAPER_INPUT, batch of one: the training path of the
    no-cache run (the net's own stages, no_grad) and the cache's path (every stage, inference_mode).
    timed > 1: the first call is a warm-up and the median of the rest is kept."""
    import torch

    from inspector.learn.features import embed_tensor
    from inspector.learn.train import build_net_on

    c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, input_size=PAPER_INPUT))
    net = build_net_on(c, device).eval()
    x = torch.rand((1, 3, *PAPER_INPUT))
    out = {}
    for name, full, mode in (("train", False, torch.no_grad), ("cache", True, torch.inference_mode)):
        times = []
        for _ in range(max(timed, 1)):
            with mode():
                started = time.perf_counter()
                embed_tensor(net, x, device, full=full)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
        kept = times[1:] if len(times) > 1 else times
        out[name] = float(np.median(kept))
    return out


def paper_estimate(pass_train: float, pass_cache: float, step: float, batch_size: int) -> dict:
    """Hours of the paper-scale cross-validation, computed (not measured) from per-pass and per-step times.

    Without the cache (the paper's loop) every fold embeds its training images once for the
    standardizer and once per epoch through the net's stages, and scores its held-out bundle through
    the cache's path: (epochs + 1) x images x (bundles - 1) + images passes. With the cache each image
    is embedded once per flip (FLIP_VARIANTS), assuming one window for all folds (local, or global
    with rounded windows) and every flip drawn; scoring then hits the cache. Both train the head for
    bundles x epochs x ceil(training images / batch) steps. Reading and converting images are left out."""
    base, extra = divmod(PAPER_IMAGES, PAPER_BUNDLES)
    sizes = [base + (1 if k < extra else 0) for k in range(PAPER_BUNDLES)]
    steps = sum(PAPER_EPOCHS * -(-(PAPER_IMAGES - n) // batch_size) for n in sizes)
    passes_full = (PAPER_EPOCHS + 1) * PAPER_IMAGES * (PAPER_BUNDLES - 1)
    passes_cache = FLIP_VARIANTS * PAPER_IMAGES
    head = steps * step
    full = passes_full * pass_train + PAPER_IMAGES * pass_cache + head
    cached = passes_cache * pass_cache + head
    return {"hours_no_cache": full / 3600, "hours_cache": cached / 3600, "passes_no_cache": passes_full + PAPER_IMAGES,
            "passes_cache": passes_cache, "head_steps": steps, "head_hours": head / 3600}


def run(args) -> dict:
    """Both cross-validations, the head-step and paper-size pass timings, and the estimate, as a dict."""
    import torch

    from inspector.base.config import Config, parse_input_size
    from inspector.learn.crossval import cross_validate
    from inspector.data.dataset import load_dataset
    from inspector.data.synth import synthesize
    from inspector.learn.model import build_detector, resolve_device
    from inspector.learn.train import set_threads

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
        step, head_passes = head_step_seconds(ds, cfg, device, args.method)
        (t_full, cpu_full, full), (t_cache, cpu_cache, cached) = runs[False], runs[True]
    out = {
        "machine": (f"{cpu_model()}, {os.cpu_count()} cores ({threads} torch threads), torch {torch.__version__}, "
                    f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
                    + f", python {platform.python_version()}"),
        "threads": threads, "images": len(ds), "bundles": len(ds.bundles), "method": args.method,
        "windows": len(cached.methods[args.method].windows), "input_size": list(cfg.model.input_size),
        "epochs": args.epochs, "batch_size": cfg.train.batch_size, "features": list(cfg.model.features),
        "runs": {}, "head_step_seconds": step, "head_step_passes": head_passes,
        "max_oof_difference": float(np.max(np.abs(full.methods[args.method].oof - cached.methods[args.method].oof))),
        "pooled_equal": full.methods[args.method].pooled == cached.methods[args.method].pooled,
        "pooled": str(cached.methods[args.method].pooled), "load_average": os.getloadavg()[0],
    }
    for name, t, cpu, res in (("no_cache", t_full, cpu_full, full), ("cache", t_cache, cpu_cache, cached)):
        out["runs"][name] = {"wall": t, "cpu": cpu, "passes": res.passes, "backbone_seconds": res.backbone_seconds}
    if args.paper_passes > 0:
        passes = paper_pass_seconds(cfg, device, args.paper_passes)
        out["paper_pass_seconds"] = passes
        out["paper_estimate"] = paper_estimate(passes["train"], passes["cache"], step, cfg.train.batch_size)
    return out


def figures(r: dict, suffix: str = "") -> list[dict]:
    """Rows of bench/run_all.py's table (Figure fields) from run()'s dict."""
    h, w = r["input_size"]
    label = f"{r['images']} images, {r['epochs']} epochs, input {h}x{w}, {r['threads']} torch thread{'s' * (r['threads'] != 1)}"
    full, cached = r["runs"]["no_cache"], r["runs"]["cache"]
    theory = full["passes"] / max(cached["passes"], 1)
    rows = [dict(name=f"cross-validation without / with embedding cache, wall time ({label}){suffix}",
                 measured=full["wall"], reference=cached["wall"], unit="s", reference_name="with cache (cold)",
                 target=f">= {0.8 * theory:.1f}x (80% of theory)"),
            dict(name=f"backbone passes without / with cache, theoretical ratio ({r['images']} images, "
                      f"{r['epochs']} epochs){suffix}",
                 measured=full["passes"], reference=cached["passes"], unit="passes", reference_name="with cache")]
    if "paper_estimate" in r:
        e, p = r["paper_estimate"], r["paper_pass_seconds"]
        ph, pw = PAPER_INPUT
        stages = "+".join(r["features"])
        rows += [
            dict(name=f"backbone pass at {ph}x{pw}, one image: cache path (every stage) / training path ({stages})",
                 measured=p["cache"], reference=p["train"], unit="s", reference_name="training path, no_grad"),
            dict(name=f"head: one optimizer step of batch {r['batch_size']} on cached features",
                 measured=r["head_step_seconds"] * 1000, reference=float("nan"), unit="ms", reference_name="-"),
            dict(name=(f"paper scale ({PAPER_BUNDLES} bundles, {PAPER_IMAGES} images, {PAPER_EPOCHS} epochs, "
                       f"leave-one-bundle-out, {ph}x{pw}) without cache: computed from measured per-pass times, "
                       "not measured"),
                 measured=e["hours_no_cache"], reference=e["hours_cache"], unit="h",
                 reference_name="the same estimate with cache"),
            dict(name=(f"paper scale ({PAPER_BUNDLES} bundles, {PAPER_IMAGES} images, {PAPER_EPOCHS} epochs, "
                       f"leave-one-bundle-out, {ph}x{pw}) with cache: computed from measured per-pass times, "
                       "not measured"),
                 measured=e["hours_cache"], reference=float("nan"), unit="h", reference_name="-"),
        ]
    return rows


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
    parser.add_argument("--paper-passes", type=int, default=2,
                        help="timed backbone passes at 2000x1000 per path for the paper-scale estimate "
                             "(the first is a warm-up when more than one); 0 = no estimate")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the results and table rows")
    args = parser.parse_args(argv)
    r = run(args)
    h, w = r["input_size"]
    print(f"machine: {r['machine']}")
    print(f"data: {r['images']} images in {r['bundles']} bundles, method {r['method']} "
          f"({r['windows']} distinct window(s) over {r['bundles']} folds), input {h}x{w}, "
          f"{r['epochs']} epochs, batch {r['batch_size']}, weights none")
    for name, key in (("no cache", "no_cache"), ("cache", "cache")):
        x = r["runs"][key]
        per_pass = 1000 * x["backbone_seconds"] / max(x["passes"], 1)
        print(f"{name:<9}: {x['wall']:8.2f} s wall, {x['cpu']:8.2f} s CPU, {x['passes']:6d} backbone passes "
              f"({per_pass:.1f} ms each), {x['wall'] - x['backbone_seconds']:6.2f} s outside the backbone")
    full, cached = r["runs"]["no_cache"], r["runs"]["cache"]
    measured, theoretical = full["wall"] / cached["wall"], full["passes"] / max(cached["passes"], 1)
    print(f"measured ratio    {measured:6.2f}x wall, {full['cpu'] / cached['cpu']:6.2f}x CPU time")
    print(f"theoretical ratio {theoretical:6.2f}x (backbone passes without / with the cache)")
    print(f"measured / theoretical {measured / theoretical:6.1%} wall, "
          f"{full['cpu'] / cached['cpu'] / theoretical:6.1%} CPU time (target >= 80%)")
    print(f"load average during the run: {r['load_average']:.2f} (other processes share these cores)")
    print(f"max |p_cache - p_full| over out-of-fold predictions: {r['max_oof_difference']:.2e}")
    print(f"pooled counts equal: {r['pooled_equal']} ({r['pooled']})")
    print(f"head: {1000 * r['head_step_seconds']:.3f} ms per optimizer step on cached features "
          f"(batch {r['batch_size']}; {r['head_step_passes']} backbone passes to fill the cache first)")
    if "paper_estimate" in r:
        e, p = r["paper_estimate"], r["paper_pass_seconds"]
        print(f"backbone pass at {PAPER_INPUT[0]}x{PAPER_INPUT[1]}: {p['train']:.2f} s training path "
              f"({'+'.join(r['features'])}), {p['cache']:.2f} s cache path (every stage)")
        print(f"paper scale ({PAPER_BUNDLES} bundles, {PAPER_IMAGES} images, {PAPER_EPOCHS} epochs, leave-one-bundle-out), "
              f"computed from the measured per-pass and per-step times, not measured: "
              f"{e['hours_no_cache']:.1f} h without cache ({e['passes_no_cache']} passes), "
              f"{e['hours_cache']:.2f} h with cache ({e['passes_cache']} passes), head {e['head_hours']:.3f} h "
              f"({e['head_steps']} steps) in both")
    if args.json:
        print(json.dumps({"result": r, "figures": figures(r)}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
