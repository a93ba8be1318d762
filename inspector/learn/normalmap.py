"""A model of what a normal electrode looks like at each position, and the map of what is not normal.

Fitted on the training normals at the model's input size: for every chosen stage (the network's own
input, "input", in cells of input_pool() pixels, or a backbone stage), every channel and every
position, the mean and the variance of the image's features there. Each image's features are first
standardized per channel over the image itself, so a bundle's brighter coating or stronger grain does
not light the whole scan. The variance is the one a new bundle meets: with several bundles, each
bundle's normals are compared with the mean of the OTHER bundles (leave-one-bundle-out), so a place
where bundles differ (the frame of a coating whose margins vary) gets a wide variance and stays cold;
it is shrunk towards the channel's variance over all positions, so few images do not make it noisy.

The map of an image is, per position, its squared z-scores (each capped at 3 sigma: a lone hot pixel is
not a defect) averaged over the channels, against the best-matching position of the model within SHIFT
cells (on the "input" stage: a coating edge or frame a pixel or two off the training normals is not a
defect), then over the stages (each brought to the finest grid), then smoothed: about 1 where the
electrode looks like the training normals there, far above where it does not. What is shown and measured
is the excess over the 97th percentile of held-out normal maps (`excess`); regions above what 95% of
held-out normal scans reach at their maximum are boxed. It is computed from the verdict's own forward pass
(the normalized input and the stage activations), with no second pass and no backward pass. Its maximum
is an image-level anomaly score that needs no abnormal example.

Statistics are kept as sums per group (a bundle), in float64: the statistics of all groups but one, the
leave-one-bundle-out variance, and the maps of held-out normals that calibrate the score and the box
threshold are all subtractions, never a second pass over the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT = "input"  # the normalized network input itself, in cells of input_pool() pixels
MAP_STAGES = (INPUT, "layer1", "layer2", "layer3")  # what a normal model may be fitted on, finest first
DEFAULT_MAP_STAGES = (INPUT,)  # chosen by figures (bench/LEARNING.md)
MAP_ROWS = 384  # the "input" stage's grid has about this many rows, whatever the input size
SHRINK = 4.0  # pseudo-images of the channel-wide variance added to each position's own
Z2_CAP = 9.0  # a channel's squared z-score counts at most this (3 sigma): one hot pixel is not a defect
SATURATION = 0.98  # of Z2_CAP: no threshold is put above this (a map can reach the cap, never exceed it)
SMOOTH_SIGMA = 1.0  # Gaussian smoothing of the map, in cells of the finest grid
VAR_FLOOR = 1e-4  # relative to the channel's mean variance: no position is trusted more than this
BASE_PERCENTILE = 97.0  # of held-out normal map values: the map shown is what exceeds it (bench/learning.py --part maps)
SHIFT = 2  # cells of the "input" stage: each position is matched against the normal model this far around it
BOX_PERCENTILE = 95.0  # of held-out normal scans' map maxima: above it, a region is boxed (at most 1 normal in 20)
MAX_BOXES = 5
MIN_NORMALS = 3  # training normals a normal model needs (two to fit, one more to calibrate)


def input_pool(height: int) -> int:
    """Input pixels per cell side of the "input" stage: about MAP_ROWS rows of cells."""
    return max(1, round(height / MAP_ROWS))


def stage_features(stage: str, x: torch.Tensor, maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(N, C, h, w) features of one stage, each channel standardized over the image itself."""
    if stage == INPUT:
        pool = input_pool(x.shape[2])
        f = F.avg_pool2d(x.float(), pool) if pool > 1 else x.float()
    else:
        f = maps[stage].float()
    mean = f.mean(dim=(2, 3), keepdim=True)
    std = f.std(dim=(2, 3), keepdim=True, correction=0)
    return (f - mean) / std.clamp_min(1e-6)


def backbone_stages(stages: Sequence[str]) -> tuple[str, ...]:
    return tuple(s for s in stages if s != INPUT)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(round(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth(heat: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """(N, h, w) map smoothed by a separable Gaussian, borders replicated (no cold rim); as weighted sums of
    shifted views (a few taps: cheaper than a convolution on every verdict)."""
    if sigma <= 0:
        return heat
    k = _gaussian_kernel(sigma).tolist()
    r = (len(k) - 1) // 2
    h, w = heat.shape[1:]
    x = F.pad(heat[:, None], (r, r, r, r), mode="replicate")[:, 0]
    rows = x[:, :, :w] * k[0]
    for i in range(1, len(k)):
        rows.add_(x[:, :, i:i + w], alpha=k[i])
    out = rows[:, :h, :] * k[0]
    for i in range(1, len(k)):
        out.add_(rows[:, i:i + h, :], alpha=k[i])
    return out


class NormalModel(nn.Module):
    """Per stage, channel and position: the mean and 1/std of the training normals' standardized features."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        super().__init__()
        unknown = [s for s in shapes if s not in MAP_STAGES]
        if unknown or not shapes:
            raise ValueError(f"normal model stages {list(shapes)} must be among {', '.join(MAP_STAGES)}")
        self.stages = tuple(s for s in MAP_STAGES if s in shapes)  # finest first
        for stage in self.stages:
            c, h, w = shapes[stage]
            self.register_buffer(f"mean_{stage}", torch.zeros(c, h, w))
            self.register_buffer(f"inv_std_{stage}", torch.ones(c, h, w))

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], prefix: str = "normal.") -> "NormalModel | None":
        """The model whose buffers are in a state dict (shapes from the tensors); None when there are none."""
        shapes = {name[len(prefix) + len("mean_"):]: tuple(t.shape) for name, t in tensors.items()
                  if name.startswith(prefix + "mean_")}
        return cls(shapes) if shapes else None

    def grid(self) -> tuple[int, int]:
        """The finest stage's (h, w): the map's own size."""
        shape = getattr(self, f"mean_{self.stages[0]}").shape
        return int(shape[1]), int(shape[2])

    def forward(self, x: torch.Tensor, maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The normalized input (N, 3, H, W) and its stage activations -> the map (N, h0, w0), float32."""
        return self.from_features({s: stage_features(s, x, maps) for s in self.stages})

    def from_features(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        size = self.grid()
        total = None
        for stage in self.stages:
            mean, inv_std = getattr(self, f"mean_{stage}"), getattr(self, f"inv_std_{stage}")
            z2 = nearest_z2(feats[stage].to(mean.device), mean, inv_std, SHIFT if stage == INPUT else 0)
            if tuple(z2.shape[2:]) != size:
                z2 = F.interpolate(z2, size=size, mode="bilinear", align_corners=False)
            total = z2 if total is None else total + z2
        assert total is not None
        return smooth(total[:, 0] / len(self.stages))


def shifts(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets within a disk of `radius` cells (the centre first)."""
    return sorted(((dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                   if dy * dy + dx * dx <= radius * radius + radius), key=lambda d: d[0] ** 2 + d[1] ** 2)


def nearest_z2(f: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 1, h, w): per position, the channel mean of the capped squared z-scores against the normal model at
    the best-matching position within `radius` cells (the least of them), so a scan registered a cell or two off
    the training normals (a coating edge, the frame) is not a defect; a defect wider than that still is."""
    h, w = mean.shape[1:]
    r = radius
    mp = F.pad(mean[None], (r, r, r, r), mode="replicate")[0] if r else mean
    ip = F.pad(inv_std[None], (r, r, r, r), mode="replicate")[0] if r else inv_std
    best = None
    for dy, dx in shifts(r):  # in place: this runs on every verdict (bench/map_cost.py)
        d = f - mp[:, r + dy:r + dy + h, r + dx:r + dx + w]
        d.mul_(ip[:, r + dy:r + dy + h, r + dx:r + dx + w]).square_().clamp_max_(Z2_CAP)
        z2 = d.sum(dim=1, keepdim=True)
        best = z2 if best is None else torch.minimum(best, z2, out=best)
    assert best is not None
    return best.div_(f.shape[1])


def image_score(heat: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, h, w) maps -> (N,) image-level anomaly scores: each map's maximum."""
    h = torch.as_tensor(heat)
    return h.flatten(1).amax(dim=1).double().cpu().numpy()


# ---- fitting -------------------------------------------------------------------------------------
@dataclass
class Sums:
    """Sums of features and of their squares over n images, per stage (float64)."""

    n: int = 0
    s1: dict[str, torch.Tensor] = field(default_factory=dict)
    s2: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, feats: Mapping[str, torch.Tensor]) -> None:
        for stage, f in feats.items():
            f = f.double()
            s1, s2 = f.sum(dim=0), f.square().sum(dim=0)
            self.s1[stage] = self.s1[stage] + s1 if stage in self.s1 else s1
            self.s2[stage] = self.s2[stage] + s2 if stage in self.s2 else s2
        self.n += int(next(iter(feats.values())).shape[0])

    def __add__(self, other: "Sums") -> "Sums":
        if not self.n:
            return other
        if not other.n:
            return self
        return Sums(self.n + other.n, {s: self.s1[s] + other.s1[s] for s in self.s1},
                    {s: self.s2[s] + other.s2[s] for s in self.s2})


def fit_model(groups: Mapping[str, Sums], shrink: float = SHRINK) -> NormalModel:
    """The normal model of the groups' images (at least two). With two groups or more the variance is the
    leave-one-group-out one: each group against the mean of the others; with one, the plain variance."""
    total = Sums()
    for sums in groups.values():
        total = total + sums
    n = total.n
    if n < 2:
        raise ValueError(f"a normal model needs at least 2 normal images, got {n}")
    model = NormalModel({s: tuple(t.shape) for s, t in total.s1.items()})
    for stage in total.s1:
        s1, s2 = total.s1[stage], total.s2[stage]
        mean = s1 / n
        parts = [g for g in groups.values() if 0 < g.n < n]
        if len(parts) >= 2:
            res2 = torch.zeros_like(s1)
            for g in parts:
                m_out = (s1 - g.s1[stage]) / (n - g.n)  # the mean of the other groups
                res2 += g.s2[stage] - 2 * m_out * g.s1[stage] + g.n * m_out.square()
            var = (res2 / sum(g.n for g in parts)).clamp_min(0.0)
        else:
            var = (s2 / n - mean.square()).clamp_min(0.0) * n / (n - 1)
        channel = var.mean(dim=(1, 2), keepdim=True)  # the channel's variance, over all positions
        var = (n * var + shrink * channel) / (n + shrink)
        var = torch.maximum(var, VAR_FLOOR * channel.clamp_min(1e-12))
        getattr(model, f"mean_{stage}").copy_(mean.float())
        getattr(model, f"inv_std_{stage}").copy_(var.rsqrt().float())
    return model


@dataclass
class NormalFeatures:
    """The training normals' features per stage (float16, CPU) and each image's group (bundle)."""

    feats: dict[str, torch.Tensor]
    groups: list[str]

    @classmethod
    def collect(cls, batches: Iterable[tuple[Mapping[str, torch.Tensor], Sequence[str]]]) -> "NormalFeatures":
        parts: dict[str, list[torch.Tensor]] = {}
        groups: list[str] = []
        for feats, names in batches:
            for stage, f in feats.items():
                parts.setdefault(stage, []).append(f.detach().to("cpu", torch.float16))
            groups.extend(names)
        return cls({s: torch.cat(v) for s, v in parts.items()}, groups)

    def sums(self, index: np.ndarray | Sequence[int]) -> Sums:
        out = Sums()
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        if len(idx):
            out.add({s: f[idx] for s, f in self.feats.items()})
        return out

    def by_group(self, index: np.ndarray | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        chosen = np.arange(len(self.groups)) if index is None else np.asarray(index, dtype=np.int64)
        out: dict[str, list[int]] = {}
        for i in chosen:
            out.setdefault(self.groups[int(i)], []).append(int(i))
        return {g: np.asarray(v) for g, v in out.items()}

    def subset(self, index: np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return {s: f[idx].float() for s, f in self.feats.items()}


def fit(features: NormalFeatures, index: np.ndarray | Sequence[int] | None = None,
        shrink: float = SHRINK) -> tuple[NormalModel, dict]:
    """The normal model of the chosen normals, and its calibration: the score and map values of held-out
    normals (each group's against a model of the others; each image's against the rest with one group)."""
    groups = features.by_group(index)
    sums = {g: features.sums(idx) for g, idx in groups.items()}
    model = fit_model(sums, shrink)
    if len(groups) >= 2:
        held_out = [(idx, {h: s for h, s in sums.items() if h != g}) for g, idx in groups.items()]
    else:  # one bundle: each image against the others
        (idx,) = groups.values()
        held_out = [(np.asarray([i]), {"rest": features.sums(np.setdiff1d(idx, [i]))}) for i in idx]
    scores, values = [], []
    with torch.no_grad():
        for idx, rest in held_out:
            if sum(s.n for s in rest.values()) < 2:
                continue
            heat = fit_model(rest, shrink).from_features(features.subset(idx))
            scores.append(image_score(heat))
            values.append(heat.flatten(1).numpy())
    if not scores:
        raise ValueError("too few normal images to calibrate the normal model (at least 3 are needed)")
    return model, calibration(np.concatenate(scores), np.concatenate(values, axis=0),
                              lambda: _scan_values(features, groups, sums, shrink))


def _scan_values(features: NormalFeatures, groups: Mapping[str, np.ndarray], sums: Mapping[str, Sums],
                 shrink: float) -> np.ndarray:
    """Map values of each training normal against the model of all the others (its own bundle's included): a
    new scan of a coating the model has seen, as a station scores day after day. Boxes are drawn against these;
    scores are calibrated on whole held-out bundles (a new coating), which vary more."""
    values = []
    with torch.no_grad():
        for g, idx in groups.items():
            for i in idx:
                own = features.sums(np.setdiff1d(idx, [i]))
                rest = {h: (own if h == g else s) for h, s in sums.items()}
                if sum(s.n for s in rest.values()) < 2:
                    continue
                values.append(fit_model(rest, shrink).from_features(features.subset([i])).flatten(1).numpy())
    return np.concatenate(values, axis=0) if values else np.zeros((0, 0))


def calibration(scores: np.ndarray, values: np.ndarray,
                scan_values: Callable[[], np.ndarray] | None = None) -> dict:
    """What is kept with the model: the held-out normals' score distribution (`scores`, each map's maximum), the
    base of the map shown and the box threshold, from the held-out bundles' maps (`values`, one row per scan);
    where their maxima saturate, the box threshold from `scan_values()` (computed only then: a model fit per
    training normal).

    The box threshold is a percentile of normal scans' maxima, not of their values: a value percentile (e.g. the
    99.5th) is exceeded somewhere on most normal scans, which would box every normal electrode."""
    scores = np.asarray(scores, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    median = float(np.median(scores))
    ceiling = SATURATION * Z2_CAP
    box = float(np.percentile(scores, BOX_PERCENTILE))
    saturated = box >= ceiling
    scans = scan_values() if saturated and scan_values is not None else np.zeros((0, 0))
    if scans.size:
        # With few training bundles a held-out bundle's maps reach the cap: no value could exceed such a threshold.
        # Boxes are then drawn against scans of the bundles seen, a step more permissive.
        box = float(np.percentile(scans.max(axis=1), BOX_PERCENTILE))
    box = min(box, ceiling)
    return {"score_median": median,
            "score_scale": float(max(np.percentile(scores, 90) - median, 1e-6 * max(abs(median), 1.0))),
            "score_p99": min(float(np.percentile(scores, 99)), ceiling),
            "map_base": min(float(np.percentile(values, BASE_PERCENTILE)), box),
            "box_threshold": box,
            "saturated": bool(saturated),
            "normals": int(len(scores))}


def excess(heat: np.ndarray | torch.Tensor, cal: Mapping[str, float]) -> np.ndarray:
    """The map as shown and measured: what exceeds the held-out normals' 97th percentile (0 elsewhere), so a
    normal scan is cold nearly everywhere and a defect's share of the map is not drowned by the baseline."""
    h = heat.cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    return np.maximum(h.astype(np.float32) - np.float32(cal["map_base"]), 0.0)


def map_probability(score: np.ndarray | float, cal: Mapping[str, float]) -> np.ndarray:
    """A map score as a P(abnormal)-like value in (0, 1): 0.5 at the held-out normals' 99th percentile,
    rising with the distance above it in units of their spread (90th percentile minus median)."""
    s = np.asarray(score, dtype=np.float64)
    z = (s - cal["score_p99"]) / cal["score_scale"]
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


# ---- where to look -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Regions:
    """The map's maximum and the regions above the box threshold, in pixels of the original image
    (x the column, y the row; boxes [x0, y0, x1, y1] with x1, y1 exclusive)."""

    peak: tuple[int, int]
    boxes: tuple[tuple[int, int, int, int], ...]

    def to_json(self) -> dict:
        return {"peak": list(self.peak), "boxes": [list(b) for b in self.boxes]}


def regions(heat: np.ndarray, threshold: float, image_shape: tuple[int, int], max_boxes: int = MAX_BOXES) -> Regions:
    """Peak and boxes of one (h, w) map over a whole image of image_shape (rows, columns)."""
    import cv2

    heat = np.asarray(heat, dtype=np.float32)
    h, w = heat.shape
    rows, cols = int(image_shape[0]), int(image_shape[1])
    sy, sx = rows / h, cols / w
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    peak = (min(cols - 1, int((c + 0.5) * sx)), min(rows - 1, int((r + 0.5) * sy)))
    above = (heat > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    found = []
    for k in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[k, :4])
        strength = float(heat[labels == k].max())
        box = (int(x * sx), int(y * sy), min(cols, int(np.ceil((x + bw) * sx))), min(rows, int(np.ceil((y + bh) * sy))))
        found.append((strength, box))
    found.sort(key=lambda t: -t[0])
    return Regions(peak, tuple(box for _, box in found[:max_boxes]))
