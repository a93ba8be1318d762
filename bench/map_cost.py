"""What the normal model's map costs a lone file: Detector.predict of one synthetic electrode with the map
(forward pass, map, its peak and boxes) against the same detector's bare predict without it, in turns.

The detector is the bench's untrained ResNet-34 with a normal model fitted on synthetic normal electrodes
(its values do not change the cost; its shapes do). Each size runs ROUNDS rounds of the two in turn, each
timing the median of PASSES predicts, after a warm-up; the figure is the median of the rounds and the ratio
of the medians. Target (issue 23): the map adds at most 15% to the bare forward pass.

    python bench/map_cost.py [--rounds 5] [--passes 7] [--sizes 384x192,768x384,2000x1000] [--json] [--write]

--write puts the table into docs/BENCHMARKS.md's `map-cost` block (make bench's table holds it too, as part "map").
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_read import Figure, describe_machine, format_table, print_figures, write_doc_block  # noqa: E402

TARGET = 1.15


def build(folder: Path, size: tuple[int, int]):
    """(detector with its normal model, one scan): a model written and loaded as the station would."""
    import numpy as np
    import torch

    from inspector.learn import normalmap
    from inspector.imaging.convert import convert_image
    from inspector.learn.infer import Detector
    from inspector.learn.model import ModelMeta, build_detector, preprocess_batch, save_model
    from inspector.data.synth import synth_bundle_electrode

    torch.manual_seed(0)
    net = build_detector("none")
    normals = [synth_bundle_electrode(5, 1 + k % 3, index=k, scale=0.3) for k in range(9)]
    x = preprocess_batch([convert_image(img, "local") for img in normals], size)
    feats = normalmap.NormalFeatures.collect([({normalmap.INPUT: normalmap.stage_features(normalmap.INPUT, x, {})},
                                               [str(k % 3) for k in range(len(normals))])])
    model, cal = normalmap.fit(feats)
    net.normal = model
    meta = ModelMeta(method="local", window=None, input_size=size, weights="none", trained=False,
                     normal={"stages": list(model.stages), "calibration": cal, "images": 9, "bundles": 3})
    path = folder / f"map-{size[0]}x{size[1]}.safetensors"
    save_model(path, net, meta)
    det = Detector.load(path, device="cpu", batch_size=1)
    scan = synth_bundle_electrode(5, 1, index=99, scale=size[0] / 2072 * 1.05, abnormal=True)
    return det, np.ascontiguousarray(scan)


def timed(det, scan, passes: int) -> float:
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        det.predict([scan])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(sizes: list[tuple[int, int]], rounds: int, passes: int) -> list[Figure]:
    from inspector.learn.train import set_threads

    set_threads(0)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            det, scan = build(Path(tmp), size)
            normal, meta = det.net.normal, det.meta
            bare_meta = dataclasses.replace(meta, normal={}, score="head")
            with_map, bare = [], []
            for k in range(rounds + 1):  # the first round warms up both
                for which in ("map", "bare") if k % 2 == 0 else ("bare", "map"):
                    det.net.normal, det.meta = (normal, meta) if which == "map" else (None, bare_meta)
                    seconds = timed(det, scan, passes)
                    if k:
                        (with_map if which == "map" else bare).append(seconds)
            det.net.normal, det.meta = normal, meta
            assert det.predict([scan])[0].regions is not None
            h, w = size
            figures.append(Figure(f"predict of one scan with the normal model's map, peak and boxes ({h}x{w} input)",
                                  1000 * statistics.median(with_map), 1000 * statistics.median(bare), "ms",
                                  "bare predict without the map", f"<= {TARGET:.2f}x"))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--sizes", default="384x192,768x384,2000x1000")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the table rows")
    parser.add_argument("--write", action="store_true", help="write the table into docs/BENCHMARKS.md's map-cost block")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    machine = describe_machine()
    print(f"machine: {machine}")
    figures = measure(sizes, args.rounds, args.passes)  # type: ignore[arg-type]
    print_figures(figures, args.json)
    if args.write:
        from datetime import datetime, timezone

        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        body = (f"Machine: {machine}; {stamp}; `python bench/map_cost.py --write` ({args.rounds} rounds of "
                f"{args.passes} predicts each way, medians):\n\n```\n{format_table(figures)}\n```")
        write_doc_block("map-cost", "map_cost.py", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
