"""The normal model fitted on a dataset's normals (training) and its out-of-fold maps (cross-validation).

normalmap.py holds the model and its arithmetic; this module feeds it images: each image read, converted
and resized as the network takes it (views.View), through the backbone only as deep as the chosen stages
need (none at all for the "input" stage), each stage's features kept in float16 with the image's bundle.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from inspector.learn import normalmap
from inspector.base.config import Config
from inspector.learn.features import show_progress
from inspector.learn.model import preprocess_batch
from inspector.base.pipeline import ordered_map
from inspector.learn.train import network_input
from inspector.data.views import ImageSource, View


def map_features(net: torch.nn.Module, source: ImageSource, idx: Sequence[int], view: View, cfg: Config,
                 device: torch.device, stages: Sequence[str], desc: str = "normal model") -> normalmap.NormalFeatures:
    """Every chosen stage's features of images `idx` under `view`, with each image's bundle as its group."""
    from tqdm import tqdm

    idx = [int(i) for i in idx]
    deep = normalmap.backbone_stages(stages)
    batch = cfg.train.batch_size
    images = ordered_map(network_input(source, view, cfg), idx, source.workers, ahead=batch + 2 * source.workers)
    samples = source.dataset.samples
    net.eval()

    def batches():
        bar = tqdm(total=len(idx), desc=desc, unit="img", disable=not show_progress(), leave=False)
        try:
            pending: list[np.ndarray] = []
            for k, img8 in enumerate(images):
                pending.append(img8)
                if len(pending) == batch or k == len(idx) - 1:
                    x = preprocess_batch(pending, cfg.model.input_size).to(device)
                    with torch.inference_mode():
                        maps = net.stage_maps(x, deep) if deep else {}
                        feats = {s: normalmap.stage_features(s, x, maps) for s in stages}
                    start = k + 1 - len(pending)
                    yield feats, [samples[i].bundle for i in idx[start:k + 1]]
                    bar.update(len(pending))
                    pending = []
        finally:
            bar.close()
            images.close()

    return normalmap.NormalFeatures.collect(batches())


def fit_normal(net: torch.nn.Module, source: ImageSource, idx: Sequence[int], view: View, cfg: Config,
               device: torch.device) -> dict:
    """Fit net.normal on the normal images among `idx`; returns the metadata the artifact keeps ({} and no
    normal model when there are fewer than normalmap.MIN_NORMALS normal images)."""
    normals = [int(i) for i in idx if source.y[int(i)] == 0]
    if len(normals) < normalmap.MIN_NORMALS:
        net.normal = None
        return {}
    stages = tuple(s for s in normalmap.MAP_STAGES if s in cfg.model.map_stages)
    feats = map_features(net, source, normals, view, cfg, device, stages)
    model, cal = normalmap.fit(feats)
    net.normal = model.to(device)
    return {"stages": list(model.stages), "calibration": cal, "images": len(normals),
            "bundles": len(set(feats.groups))}
