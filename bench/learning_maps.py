"""Where the maps point, and which score decides: the maps section of bench/LEARNING.md (bench/learning.py).

On synthetic sets with defect masks (`inspector synth` writes them) at the demo's scale, each
cross-validated leave-one-bundle-out with the shipped defaults and a random backbone: for every held-out
abnormal image, does the normal model's map peak on the defect (the mask dilated by 2% of the width), and
how much of the map's mass lies there, against the dilated mask's share of the image (chance); per anomaly
type and pooled. Beside it, the three image-level scores out of fold: the head, the map score and their
fusion (ROC AUC, balanced accuracy at 0.5, normal electrodes passed at 95% and 99% recall), pooled over the
sets: the default `model.score` is the best of them by these figures.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

SETS = [  # synth settings; the first is the demo's own set
    {"bundles": 5, "per_bundle": 16, "scale": 0.2, "seed": 7},
    {"bundles": 12, "per_bundle": 12, "scale": 0.2, "seed": 3},
    {"bundles": 8, "per_bundle": 12, "scale": 0.2, "seed": 11},
    {"bundles": 8, "per_bundle": 12, "scale": 0.2, "seed": 23},
]
QUICK_SETS = [{"bundles": 4, "per_bundle": 8, "scale": 0.15, "seed": 7}]
SIZE = (384, 192)  # the demo's input
SCORE_NAMES = ("head", "map", "fusion")


def run(root: Path, quick: bool) -> dict:
    """Cross-validate every set; returns the rows and pooled figures."""
    import torch

    from inspector.data import localize, metrics
    from inspector.base.config import Config
    from inspector.learn.crossval import cross_validate
    from inspector.data.dataset import load_dataset
    from inspector.data.synth import synthesize
    from inspector.learn.train import set_threads

    set_threads(0)
    sets = QUICK_SETS if quick else SETS
    rows, all_hits, ys, scores = [], [], [], {name: [] for name in SCORE_NAMES}
    for spec in sets:
        data = root / "maps" / f"synth-{spec['bundles']}x{spec['per_bundle']}-s{spec['scale']}-seed{spec['seed']}"
        if not (data / "labels.csv").exists() or not (data / "masks").is_dir():
            synthesize(data, progress=False, **spec)
        ds = load_dataset(data)
        cfg = Config()
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, weights="none", device="cpu", input_size=SIZE),
            train=dataclasses.replace(cfg.train, cache_dir=str(root / "maps-cache")),
            state=dataclasses.replace(cfg.state, dir=root / "var"))
        started = time.perf_counter()
        res = cross_validate(ds, ["local"], cfg, torch.device("cpu"), use_cache=True, warn=lambda m: None)
        seconds = time.perf_counter() - started
        r = res.methods["local"]
        where = r.localization or {}
        pooled = where.get("pooled", {})
        row = {"set": spec, "images": len(ds), "abnormal": int(ds.y.sum()), "seconds": seconds,
               "localization": where,
               "scores": {name: {"auc": metrics.roc_auc(ds.y, p),
                                 "ba": metrics.counts_at_threshold(ds.y, p, 0.5).balanced_accuracy,
                                 "pass95": metrics.pass_rate_at_recall(ds.y, p, 0.95),
                                 "pass99": metrics.pass_rate_at_recall(ds.y, p, 0.99)}
                          for name, p in r.scores.items()}}
        rows.append(row)
        ys.append(ds.y)
        for name in SCORE_NAMES:
            scores[name].append(r.scores[name])
        all_hits.extend(r.hits)
        print(f"set seed {spec['seed']} ({len(ds)} images): hits {pooled.get('hit_rate', float('nan')):.3f}, "
              f"mass {pooled.get('mass_ratio', float('nan')):.2f}x chance; AUC head/map/fusion "
              + "/".join(f"{row['scores'][n]['auc']:.3f}" for n in SCORE_NAMES) + f" ({seconds:.0f} s)", flush=True)
    y = np.concatenate(ys)
    pooled_scores = {}
    for name in SCORE_NAMES:
        p = np.concatenate(scores[name])
        pooled_scores[name] = {"auc": float(np.mean([row["scores"][name]["auc"] for row in rows])),
                               "ba": metrics.counts_at_threshold(y, p, 0.5).balanced_accuracy,
                               "pass95": float(np.mean([row["scores"][name]["pass95"] for row in rows])),
                               "pass99": float(np.mean([row["scores"][name]["pass99"] for row in rows]))}
    best = max(SCORE_NAMES, key=lambda n: (pooled_scores[n]["ba"], pooled_scores[n]["pass99"]))
    return {"rows": rows, "pooled_scores": pooled_scores, "best": best,
            "localization": localize.summarize(all_hits) if all_hits else None, "size": SIZE}


def section(result: dict, machine: str, stamp: str, command: str) -> str:
    """The markdown of the maps section."""
    from inspector.data.localize import format_localization

    h, w = result["size"]
    sets = ", ".join(f"`synth --bundles {r['set']['bundles']} --per-bundle {r['set']['per_bundle']} --scale "
                     f"{r['set']['scale']} --seed {r['set']['seed']}` ({r['images']} images, {r['abnormal']} abnormal)"
                     for r in result["rows"])
    lines = [f"On {sets}; input {h}x{w}, `local`, layer2+layer3 means, linear head, the normal model on "
             f"`model.map_stages` = input, weights none, leave-one-bundle-out; machine: {machine}; {stamp}; "
             f"`{command}`.", "",
             "Per set: the held-out maps' peak on the defect (hits) and their mass inside it against chance, and "
             "the three scores' ROC AUC, BA at 0.5 and normals passed at 99% recall:", "",
             "| set (seed) | hits | mass inside / chance | head AUC, BA, passed@99 | map AUC, BA, passed@99 | "
             "fusion AUC, BA, passed@99 | s |", "|---|---:|---:|---|---|---|---:|"]
    for r in result["rows"]:
        p = r["localization"].get("pooled", {})
        cells = [f"{r['scores'][n]['auc']:.3f}, {100 * (r['scores'][n]['ba'] or 0):.1f}%, "
                 f"{100 * r['scores'][n]['pass99']:.1f}%" for n in SCORE_NAMES]
        lines.append(f"| {r['set']['seed']} | {p.get('hits', 0)}/{p.get('n', 0)} ({100 * p.get('hit_rate', 0):.0f}%) | "
                     f"{p.get('mass_inside', 0):.2f} / {p.get('area_share', 0):.2f} = {p.get('mass_ratio', 0):.1f}x | "
                     + " | ".join(cells) + f" | {r['seconds']:.0f} |")
    lines += ["", "Pooled over the sets, by anomaly type (a hit: the map's maximum lies in the defect mask dilated "
              "by 2% of the width; chance: that dilated mask's share of the image):", "", "```",
              format_localization(result["localization"]) if result["localization"] else "no masks", "```", "",
              "The scores, pooled over the sets (AUC and passed@R: mean over the sets; BA at 0.5: pooled counts):", "",
              "| score | mean ROC AUC | pooled BA @0.5 | passed @95% | passed @99% |", "|---|---:|---:|---:|---:|"]
    for name in SCORE_NAMES:
        s = result["pooled_scores"][name]
        lines.append(f"| {name}{' (best: the default model.score)' if name == result['best'] else ''} | "
                     f"{s['auc']:.3f} | {100 * (s['ba'] or 0):.1f}% | {100 * s['pass95']:.1f}% | {100 * s['pass99']:.1f}% |")
    lines += ["", "head: the linear head's P(abnormal); map: the normal model's map maximum as a probability (0.5 at "
              "the held-out normals' 99th percentile); fusion: their mean. The default is the score with the best "
              "pooled BA (then passed @99%)."]
    return "\n".join(lines)
