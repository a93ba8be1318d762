"""Heat maps: where a scan is not normal (the normal model's map, normalmap.py) and, for the paper's network
and models without a normal model, Grad-CAM evidence: where the detector looked when it called an electrode
abnormal.

The map follows the stages the head classifies (model.features): each chosen stage's activations
are made leaves that require grad (the stage that feeds the next one is detached there, so each
map holds only its own stage's direct share of the decision), the pooling, standardization and
head run under enable_grad, and each stage's Grad-CAM (channel weights = mean gradient) is
weighted by its number of positions, so every map is in logit per image area, resized to the
input and summed. Nothing on the shared module is changed (no hooks, no requires_grad flags, no
train/eval switch that stays), so another thread may run inference on the same network while a
heat map is computed.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from inspector.base.durable import write_atomic
from inspector.base.errors import InspectorError, ModelError
from inspector.learn.model import preprocess_batch

log = logging.getLogger("inspector.explain")

OVERLAY_ALPHA = 0.4
# One Grad-CAM at a time: at 2000x1000 each holds layer4 activations and their gradients, and
# a second concurrent call would only double peak memory without finishing sooner.
_GRADCAM_LOCK = threading.Lock()


EXPLAIN_METHODS = ("auto", "normal", "gradcam")


@dataclass(frozen=True)
class Explanation:
    """A heat map at the converted image's size, the image itself, and the network's output."""

    cam: np.ndarray  # (H, W) float32 in [0, 1], H x W of img8
    img8: np.ndarray  # HxWx3 uint8, the detector's own conversion
    p_abnormal: float
    verdict: str  # "normal", "abnormal" or "rescan" (the quality gate; p_abnormal is then for reference)
    reason: str | None = None
    method: str = "gradcam"  # "normal": the normal model's map; "gradcam": where the head's evidence came from
    regions: object = None  # normalmap.Regions with the normal model's map (peak and boxes), else None


def display_scale(heat: np.ndarray, calibration: dict) -> np.ndarray:
    """A normal model's map for the eye, in [0, 1]: 0 up to the held-out normals' 97th percentile, 0.5 at the
    box threshold, 1 beyond (cold stays cold: a normal scan is not stretched to its own maximum)."""
    from inspector.learn.normalmap import excess

    span = 2.0 * max(float(calibration["box_threshold"]) - float(calibration["map_base"]), 1e-6)
    return np.clip(excess(heat, calibration) / span, 0.0, 1.0)


def _check_resnet(net: torch.nn.Module) -> torch.nn.Module:
    backbone = getattr(net, "backbone", None)
    needed = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    if backbone is None or not all(hasattr(backbone, name) for name in needed) or not hasattr(net, "embedding"):
        raise ModelError("Grad-CAM needs an ElectrodeNet whose backbone is a torchvision ResNet "
                         "(conv1 ... layer4); this network has none")
    return backbone


def gradcam_logits(net: torch.nn.Module, x: torch.Tensor, target: int = 1) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM of class `target` over the net's feature stages for one input, and the logits of the same pass."""
    from inspector.learn.model import STAGES, pool_map

    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise InspectorError(f"Grad-CAM takes one image as a (1, 3, H, W) tensor, got shape {tuple(x.shape)}")
    b = _check_resnet(net)
    stages, pooling = net.embedding.stages, net.embedding.pooling
    with _GRADCAM_LOCK:
        was_training = net.training
        net.eval()  # BN running statistics must not move, and dropout (if any) must not fire
        try:
            acts: dict[str, torch.Tensor] = {}
            with torch.inference_mode(False):  # also when a caller sits in inference_mode
                with torch.no_grad():
                    h = b.maxpool(b.relu(b.bn1(b.conv1(x.detach().clone()))))
                for stage in STAGES[:STAGES.index(stages[-1]) + 1]:
                    with torch.no_grad():
                        h = getattr(b, stage)(h)
                    if stage in stages:
                        acts[stage] = h.detach().float().requires_grad_(True)  # a leaf per chosen stage
                with torch.enable_grad():
                    features = torch.cat([pool_map(acts[s], pooling) for s in stages], dim=1)
                    logits = net.classify(features)
                    grads = torch.autograd.grad(logits[0, target], [acts[s] for s in stages])
        finally:
            net.train(was_training)
        with torch.no_grad():
            cam = torch.zeros((1, 1, *x.shape[2:]), dtype=torch.float32, device=x.device)
            for stage, grad in zip(stages, grads):
                a = acts[stage].detach()
                weights = grad.mean(dim=(2, 3), keepdim=True)  # one weight per channel: its mean gradient
                part = (weights * a).sum(dim=1, keepdim=True) * (a.shape[2] * a.shape[3])
                cam += F.interpolate(part, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
            cam = F.relu(cam)[0, 0]
            peak = float(cam.max())
            cam = cam / peak if peak > 0 and np.isfinite(peak) else torch.zeros_like(cam)
    out = np.nan_to_num(cam.clamp(0.0, 1.0).cpu().numpy().astype(np.float32), nan=0.0)
    return out, logits.detach()


def gradcam(net: torch.nn.Module, x: torch.Tensor, target: int = 1) -> np.ndarray:
    """(H, W) map in [0, 1] of where class `target` (1 = abnormal) drew its evidence; 0 everywhere when none."""
    return gradcam_logits(net, x, target)[0]


def explain_image(detector, img16: np.ndarray, method: str = "auto", heat: np.ndarray | None = None) -> Explanation:
    """Convert with the detector's own settings and map where the scan is not normal: the normal model's map
    (method "normal"; "auto" where the model has one) from one forward pass, or Grad-CAM of the head
    ("gradcam"; "auto" for a model without a normal model). `heat`: the map the verdict's own pass gave,
    so the network does not run again."""
    from inspector.learn.infer import check_quality
    from inspector.imaging.prepare import check_image16

    if method not in EXPLAIN_METHODS:
        raise InspectorError(f"explain method {method!r} is unknown; use one of {', '.join(EXPLAIN_METHODS)}")
    has_map = bool(detector.meta.normal) and getattr(detector.net, "normal", None) is not None
    if method == "normal" and not has_map:
        raise ModelError("this model has no normal model (it was trained before inspector fitted one): retrain it, "
                         "or explain it with --method gradcam")
    use_map = method == "normal" or (method == "auto" and has_map)
    check_image16(img16)
    reason = check_quality(img16, detector.meta)
    img8 = detector.convert(img16)
    where = None
    if use_map:
        if heat is None:
            x = preprocess_batch([img8], detector.meta.input_size).to(detector.device)
            p_all, maps = detector.final_p(*detector._forward(x))
            p_abnormal, heat = float(p_all[0]), maps[0]
        else:
            p_abnormal = float("nan")
        where = detector.regions(heat, img16.shape[:2])
        cam = display_scale(heat, detector.meta.normal["calibration"])
    else:
        x = preprocess_batch([img8], detector.meta.input_size).to(detector.device)
        cam, logits = gradcam_logits(detector.net, x, target=1)
        p_abnormal = float(logits.float().softmax(dim=1)[0, 1])
    height, width = img8.shape[:2]
    if cam.shape != (height, width):
        cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    cam = np.clip(cam, 0.0, 1.0).astype(np.float32)
    if reason is not None:
        verdict = "rescan"
    else:
        verdict = "abnormal" if p_abnormal >= float(detector.meta.threshold) else "normal"
    return Explanation(cam, img8, p_abnormal, verdict, reason, "normal" if use_map else "gradcam", where)


def render_overlay(img8: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA,
                   boxes: tuple = ()) -> np.ndarray:
    """JET heat map blended over the converted image at the image's own size (red = strongest evidence), the
    boxes ([x0, y0, x1, y1] in the image's pixels) outlined in white."""
    if img8.dtype != np.uint8 or img8.ndim != 3 or img8.shape[2] != 3:
        raise InspectorError(f"the overlay takes an HxWx3 uint8 image, got {img8.dtype} of shape {img8.shape}")
    height, width = img8.shape[:2]
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise InspectorError(f"the heat map must be 2-D, got shape {cam.shape}")
    if cam.shape != (height, width):
        cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.rint(np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(heat, alpha, img8, 1.0 - alpha, 0.0)
    line = max(1, round(min(height, width) / 300))
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(x0), int(y0)), (max(int(x0), int(x1) - 1), max(int(y0), int(y1) - 1)),
                      (255, 255, 255), line)
    return out


def overlay_png(img8: np.ndarray, cam: np.ndarray, boxes: tuple = ()) -> bytes:
    """render_overlay's picture encoded as PNG."""
    ok, buf = cv2.imencode(".png", render_overlay(img8, cam, boxes=boxes))
    if not ok:
        raise InspectorError("OpenCV could not encode the heat map")
    return buf.tobytes()


def write_overlay(png: bytes, out_png: str | os.PathLike) -> Path:
    """Write an overlay's PNG atomically (temp file, fsync, rename): a reader never sees half a file."""
    out = Path(out_png)
    try:
        write_atomic(out, png)
    except OSError as exc:
        raise InspectorError(f"cannot write heat map {out}: {exc.strerror}; check the folder exists "
                             f"and is writable (state.dir for the daemon)") from exc
    return out


def save_overlay(img8: np.ndarray, cam: np.ndarray, out_png: str | os.PathLike, boxes: tuple = ()) -> Path:
    """Encode the overlay and write it atomically."""
    return write_overlay(overlay_png(img8, cam, boxes), out_png)


def heatmap_path(state_dir: str | os.PathLike, sha256: str) -> Path:
    """state_dir/heatmaps/ab/<sha256>.png: one file per image content, spread over 256 folders."""
    return Path(state_dir) / "heatmaps" / sha256[:2] / f"{sha256}.png"
