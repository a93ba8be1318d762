"""Detector: load a model once, then score many 16-bit images with its own conversion and threshold."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from inspector import quality
from inspector.convert import Window, convert_image
from inspector.errors import InspectorError, ModelError
from inspector.model import ModelMeta, load_model, preprocess_batch, resolve_device
from inspector.prepare import InputSpec, Prepared, prepare

CHECK_SEED = 20220201  # the built-in self-check image must be the same on every machine


@dataclass(frozen=True)
class Prediction:
    path: str | None
    p_abnormal: float | None  # None for a rescan: it never went through the network
    verdict: str  # "normal", "abnormal" or "rescan"
    threshold: float
    seconds: float
    reason: str | None = None


def model_window(meta: ModelMeta) -> Window | None:
    return Window(*meta.window) if meta.window else None


def check_quality(img16: np.ndarray, meta: ModelMeta) -> str | None:
    """The reason a capture should be rescanned (the model's quality gate), or None."""
    return quality.check(img16, meta.quality, model_window(meta))


class Detector:
    """A loaded model on a device; predict() batches, converts and applies the model's threshold."""

    def __init__(self, net: torch.nn.Module, meta: ModelMeta, sha256: str, device: torch.device,
                 path: str, batch_size: int = 4):
        if batch_size <= 0:
            raise InspectorError(f"infer.batch_size must be positive, got {batch_size}")
        self.net = net
        self.meta = meta
        self.sha256 = sha256
        self.device = device
        self.path = path
        self.batch_size = batch_size
        self.window = model_window(meta)
        self.spec = InputSpec.of(meta)
        if device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", batch_size: int = 4) -> "Detector":
        """Resolve the device first, so a CUDA request on a CPU machine fails before the read."""
        dev = resolve_device(device)
        loaded = load_model(path, dev)
        return cls(loaded.net, loaded.meta, loaded.sha256, dev, str(path), batch_size)

    def convert(self, img16: np.ndarray) -> np.ndarray:
        """The model's own 16->8-bit conversion at the image's size, with the window and CLAHE settings it was
        trained with (what a heat map is drawn over)."""
        clahe = self.meta.clahe or {}
        return convert_image(img16, self.meta.method, window=self.window,
                             clahe_clip_limit=float(clahe.get("clip_limit", 2.0)),
                             clahe_tile_grid=int(clahe.get("tile_grid", 8)))

    def score_batch(self, imgs8: Sequence[np.ndarray]) -> list[float]:
        """P(abnormal) for converted images; fp16 autocast and channels_last on CUDA."""
        x = preprocess_batch(imgs8, self.meta.input_size)
        cuda = self.device.type == "cuda"
        x = x.to(self.device, memory_format=torch.channels_last) if cuda else x
        autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
        self.net.eval()
        with torch.inference_mode(), autocast:
            logits = self.net(x)
        return logits.float().softmax(dim=1)[:, 1].cpu().tolist()

    def prepare(self, img16: np.ndarray) -> Prepared:
        """The CPU part of scoring (quality gate, conversion, resize); thread-safe and torch-free, so a
        pool of workers runs it while this detector's thread runs the network."""
        return prepare(img16, self.spec)

    def score_prepared(self, prepared: Sequence[Prepared], paths: Sequence[str | None] | None = None,
                       seconds: Sequence[float] | None = None) -> list[Prediction]:
        """Predictions for prepared images, the network run in batches of batch_size.

        `seconds` of each prediction: its share of its batch's forward pass, plus `seconds[i]` (the time
        its preparation took, where the caller measured it)."""
        names = list(paths) if paths is not None else [None] * len(prepared)
        extra = list(seconds) if seconds is not None else [0.0] * len(prepared)
        threshold = float(self.meta.threshold)
        out: list[Prediction] = []
        for start in range(0, len(prepared), self.batch_size):
            t0 = time.perf_counter()
            chunk = prepared[start:start + self.batch_size]
            imgs8 = [p.img8 for p in chunk if p.reason is None]
            probs = iter(self.score_batch(imgs8) if imgs8 else [])
            share = (time.perf_counter() - t0) / len(chunk)
            for i, item in enumerate(chunk, start):
                if item.reason is not None:
                    out.append(Prediction(names[i], None, "rescan", threshold, share + extra[i], item.reason))
                    continue
                p = next(probs)
                verdict = "abnormal" if p >= threshold else "normal"
                out.append(Prediction(names[i], p, verdict, threshold, share + extra[i]))
        return out

    def predict(self, images16: Sequence[np.ndarray], paths: Sequence[str | None] | None = None) -> list[Prediction]:
        """Quality gate, conversion and the network, on this thread; `seconds` is each image's share of its batch."""
        if paths is not None and len(paths) != len(images16):
            raise InspectorError(f"predict got {len(images16)} images but {len(paths)} paths")
        out: list[Prediction] = []
        names = list(paths) if paths is not None else [None] * len(images16)
        for start in range(0, len(images16), self.batch_size):
            t0 = time.perf_counter()
            prepared = [self.prepare(img16) for img16 in images16[start:start + self.batch_size]]
            share = (time.perf_counter() - t0) / len(prepared)
            out.extend(self.score_prepared(prepared, names[start:start + len(prepared)], [share] * len(prepared)))
        return out

    def check_image(self) -> np.ndarray:
        """A smooth gradient plus noise in the model's value range, at its input size, from a fixed seed."""
        h, w = self.meta.input_size
        lo, hi = self.meta.window if self.meta.window else (1700, 2800)
        centre, span = (lo + hi) / 2.0, (hi - lo)
        rng = np.random.default_rng(CHECK_SEED)
        ramp = np.linspace(-0.25, 0.25, h, dtype=np.float64)[:, None] * span + np.zeros((1, w))
        img = centre + ramp + rng.normal(0.0, 0.02 * span, size=(h, w))
        return np.clip(np.rint(img), 0, 65535).astype(np.uint16)

    def self_check(self) -> float:
        """Score the check image without the gate; a NaN or out-of-range output means the model is unusable."""
        try:
            (p,) = self.score_batch([self.convert(self.check_image())])
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"model {self.path} failed its self-check: {exc}") from exc
        if not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise ModelError(f"model {self.path} failed its self-check: P(abnormal) of the check image is {p}; "
                             f"retrain or restore the model")
        return p

    def __repr__(self) -> str:
        return f"Detector({Path(self.path).name}, {self.meta.method}, device={self.device}, sha256={self.sha256[:12]})"
