"""Does the detector learn? `inspector cv` on the synthetic set with a random backbone, per feature choice.

The set is `inspector synth --bundles 12 --per-bundle 8 --scale 0.5 --seed 3` (made once, kept in
bench/.work/), cross-validated leave-one-bundle-out at a 1000 x 500 input with `weights = "none"`
(the only backbone this machine can load). The first row is the published network and schedule
(layer4 -> fc -> 512/256/2, SGD with step decay, unweighted loss), as inspector trained before;
the others are the linear head on standardized features with AdamW, per choice of stages and
pooling. Every variant of one conversion shares the embedding cache (it keeps all stages under all
poolings), so only the first pays for backbone passes. `global` runs with the window rounded to
the nearest hundred (the paper's rounding) so that folds share windows and cached features.

Part `maps` (bench/learning_maps.py): on sets with defect masks at the demo's scale, where the normal
model's held-out maps peak against the defects, and the head, the map score and their fusion side by side.

Writes bench/LEARNING.md (one section per part; a part not run keeps the section its last run wrote) and
the blocks between the `learning` and `learning-maps` markers in docs/BENCHMARKS.md.

    .venv/bin/python bench/learning.py [--part features|maps|all] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from convert_read import describe_machine, write_doc_block  # noqa: E402

OUT = HERE / "LEARNING.md"
SET = {"bundles": 12, "per_bundle": 8, "scale": 0.5, "seed": 3}
PAPER = {"head": "paper", "optimizer": "paper", "class_weights": "none"}
VARIANTS = [  # (label, model/train settings); unnamed settings are the shipped defaults
    ("paper network and schedule (before)", PAPER),
    ("layer4, mean", {"features": ("layer4",)}),
    ("layer2+layer3, mean (default)", {}),
    ("layer1+layer2+layer3, mean", {"features": ("layer1", "layer2", "layer3")}),
    ("layer2+layer3+layer4, mean", {"features": ("layer2", "layer3", "layer4")}),
    ("layer2+layer3, mean+std", {"pooling": ("mean", "std")}),
    ("layer2+layer3, mean+max", {"pooling": ("mean", "max")}),
]
METHODS = ("local", "global")


def make_config(root: Path, size: tuple[int, int], settings: dict):
    from inspector.base.config import Config

    cfg = Config()
    model_keys = {f.name for f in dataclasses.fields(cfg.model)}
    model = {k: v for k, v in settings.items() if k in model_keys}
    train = {k: v for k, v in settings.items() if k not in model_keys}
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, weights="none", device="cpu", input_size=size, **model),
        convert=dataclasses.replace(cfg.convert, round_window=True),
        train=dataclasses.replace(cfg.train, cache_dir=str(root / "cache"), **train),
        state=dataclasses.replace(cfg.state, dir=root / "var"))


def run(quick: bool) -> tuple[list[dict], str]:
    import torch

    from inspector.data import metrics
    from inspector.learn.crossval import cross_validate
    from inspector.data.dataset import load_dataset
    from inspector.learn.features import EmbedStats
    from inspector.data.synth import synthesize
    from inspector.learn.train import set_threads

    set_threads(0)
    size = (256, 128) if quick else (1000, 500)
    spec = {**SET, "per_bundle": 4, "scale": 0.15} if quick else SET
    root = HERE / ".work" / ("learning-quick" if quick else "learning")
    data = root / "set"
    if not (data / "labels.csv").exists():
        synthesize(data, bundles=spec["bundles"], per_bundle=spec["per_bundle"], scale=spec["scale"],
                   seed=spec["seed"], progress=False)
    ds = load_dataset(data)
    y = ds.y
    rows = []
    for method in METHODS:
        for label, settings in VARIANTS:
            cfg = make_config(root, size, settings)
            stats = EmbedStats()
            started = time.perf_counter()
            res = cross_validate(ds, [method], cfg, torch.device("cpu"), use_cache=True, warn=lambda m: None,
                                 stats=stats)
            seconds = time.perf_counter() - started
            r = res.methods[method]
            rows.append({"method": method, "variant": label, "ba": r.pooled.balanced_accuracy,
                         "auc": metrics.roc_auc(y, r.oof), "tp": r.pooled.tp, "fp": r.pooled.fp, "tn": r.pooled.tn,
                         "fn": r.pooled.fn, "pass95": metrics.pass_rate_at_recall(y, r.oof, 0.95),
                         "pass99": metrics.pass_rate_at_recall(y, r.oof, 0.99),
                         "fold_s": float(np.median([f.seconds for f in r.folds])),
                         "steps": int(np.median([f.steps for f in r.folds])),
                         "loss": float(np.median([f.final_loss for f in r.folds])),
                         "prior": float(np.median([f.prior_loss for f in r.folds])),
                         "passes": stats.passes, "backbone_s": stats.backbone_seconds, "seconds": seconds})
            print(f"{method:7s} {label:38s} BA {100 * rows[-1]['ba']:5.1f}  AUC {rows[-1]['auc']:.3f}  "
                  f"passed@95 {100 * rows[-1]['pass95']:5.1f}  passed@99 {100 * rows[-1]['pass99']:5.1f}  "
                  f"({seconds:.0f} s, {stats.passes} backbone passes)", flush=True)
    h, w = size
    setting = (f"`inspector synth --bundles {spec['bundles']} --per-bundle {spec['per_bundle']} --scale "
               f"{spec['scale']} --seed {spec['seed']}` ({len(ds)} images, {int(y.sum())} abnormal), input {h}x{w}, "
               f"weights none (random backbone, seed 0), leave-one-bundle-out; machine: "
               f"{describe_machine()}")
    return rows, setting


def table(rows: list[dict]) -> str:
    lines = ["| conversion | features | pooled BA | ROC AUC | TP/FP/TN/FN | passed @95% | passed @99% | "
             "steps, final loss (prior) | s per fold |",
             "|---|---|---:|---:|---|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['variant']} | {100 * r['ba']:.1f}% | {r['auc']:.3f} | "
                     f"{r['tp']}/{r['fp']}/{r['tn']}/{r['fn']} | {100 * r['pass95']:.1f}% | {100 * r['pass99']:.1f}% | "
                     f"{r['steps']}, {r['loss']:.3f} ({r['prior']:.3f}) | {r['fold_s']:.1f} |")
    return "\n".join(lines)


SECTIONS = {"features": "## Which features the head learns from",
            "maps": "## Where the maps point, and which score decides"}


def features_body(rows: list[dict], setting: str, command: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    backbone = "; ".join(f"{m}: {sum(r['passes'] for r in rows if r['method'] == m)} backbone passes in "
                         f"{sum(r['backbone_s'] for r in rows if r['method'] == m):.0f} s"
                         for m in METHODS)
    return (f"On {setting}; {stamp}; `{command}`.\n\n{table(rows)}\n\n"
            f"Backbone passes (shared by all variants of a conversion through the cache): {backbone}. "
            "passed @R: share of normal electrodes passed automatically at the threshold that flags at "
            "least R of the abnormal ones; s per fold: head training and scoring of one held-out bundle.")


def kept_sections() -> dict[str, str]:
    """The sections LEARNING.md holds now (a file from before the sections: all of it is the features part)."""
    if not OUT.exists():
        return {}
    text = OUT.read_text()
    found: dict[str, str] = {}
    for part, heading in SECTIONS.items():
        if heading in text:
            rest = text.split(heading, 1)[1]
            nxt = [rest.index(h) for h in SECTIONS.values() if h in rest]
            found[part] = rest[:min(nxt)] if nxt else rest
    if not found and "On `inspector synth" in text:
        found["features"] = "\n\n" + text[text.index("On `inspector synth"):]
    return {k: v.strip() for k, v in found.items()}


def write(bodies: dict[str, str]) -> None:
    """LEARNING.md from the parts just run and the sections kept; docs/BENCHMARKS.md's blocks for the parts just run."""
    sections = {**kept_sections(), **bodies}
    text = "# Does the detector learn?\n\nWritten by `bench/learning.py`; every figure of a section is measured in " \
           "the same run.\n"
    for part, heading in SECTIONS.items():
        if part in sections:
            text += f"\n{heading}\n\n{sections[part]}\n"
    OUT.write_text(text)
    for part, body in bodies.items():
        write_doc_block("learning" if part == "features" else "learning-maps", "learning.py", body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("features", "maps", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="a small set at 256x128 (a check that it runs)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    command = "python bench/learning.py" + (f" --part {args.part}" if args.part != "all" else "")
    bodies: dict[str, str] = {}
    if args.part in ("features", "all"):
        rows, setting = run(args.quick)
        print(table(rows))
        bodies["features"] = features_body(rows, setting, command)
    if args.part in ("maps", "all"):
        import learning_maps

        result = learning_maps.run(HERE / ".work" / ("learning-quick" if args.quick else "learning"), args.quick)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        bodies["maps"] = learning_maps.section(result, describe_machine(), stamp, command)
        print(bodies["maps"])
    if not args.no_write and not args.quick:
        write(bodies)
        print(f"wrote {OUT} and the docs/BENCHMARKS.md blocks of {', '.join(bodies)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
