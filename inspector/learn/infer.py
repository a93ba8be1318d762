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

from inspector.imaging import quality
from inspector.learn.devprep import DevicePrep
from inspector.base.errors import InspectorError, ModelError
from inspector.learn.model import load_model, preprocess_batch, resolve_device
from inspector.imaging.modelmeta import ModelMeta
from inspector.learn.normalmap import Regions, image_score, map_probability, regions
from inspector.imaging.prepare import InputSpec, Prepared, check_image16, prepare

CHECK_SEED = 20220201  # the built-in self-check image must be the same on every machine


@dataclass(frozen=True)
class Prediction:
    path: str | None
    p_abnormal: float | None  # None for a rescan: it never went through the network
    verdict: str  # "normal", "abnormal" or "rescan"
    threshold: float
    seconds: float
    reason: str | None = None
    regions: Regions | None = None  # where the normal model's map peaks and what it boxes (None: no map)
    heat: np.ndarray | None = None  # the map itself (h, w) over the whole image, for a heat map drawn later


def check_quality(img16: np.ndarray, meta: ModelMeta) -> str | None:
    """The reason a capture should be rescanned (the model's quality gate), or None."""
    return quality.check(img16, meta.quality, meta.conversion.window)


PREPARE_ON = ("auto", "cpu", "device")


class Detector:
    """A loaded model on a device; predict() batches, converts and applies the model's threshold.

    prepare_on: where the gate, conversion and resize run. "auto": on a CUDA device when DevicePrep supports
    the model's method (all but clahe), else on the CPU (prepare.py); "cpu"; "device": DevicePrep on this
    detector's device whatever it is (on a CPU device: the same torch code, for tests and benchmarks).
    """

    def __init__(self, net: torch.nn.Module, meta: ModelMeta, sha256: str, device: torch.device,
                 path: str, batch_size: int = 4, prepare_on: str = "auto"):
        if batch_size <= 0:
            raise InspectorError(f"infer.batch_size must be positive, got {batch_size}")
        if prepare_on not in PREPARE_ON:
            raise InspectorError(f"prepare_on must be one of {', '.join(PREPARE_ON)}, got {prepare_on!r}")
        self.net = net
        self.meta = meta
        self.sha256 = sha256
        self.device = device
        self.path = path
        self.batch_size = batch_size
        self.spec = InputSpec.of(meta)
        if device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
        on_device = prepare_on == "device" or (prepare_on == "auto" and device.type == "cuda")
        if prepare_on == "device" and not DevicePrep.supports(self.spec):
            raise InspectorError(f"method {meta.method!r} cannot be prepared on the device; use prepare_on "
                                 "\"auto\" or \"cpu\"")
        self.devprep = DevicePrep(self.spec, device) if on_device and DevicePrep.supports(self.spec) else None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", batch_size: int = 4,
             prepare_on: str = "auto") -> "Detector":
        """Resolve the device first, so a CUDA request on a CPU machine fails before the read."""
        dev = resolve_device(device)
        loaded = load_model(path, dev)
        return cls(loaded.net, loaded.meta, loaded.sha256, dev, str(path), batch_size, prepare_on)

    def convert(self, img16: np.ndarray) -> np.ndarray:
        """The model's own 16->8-bit conversion at the image's size, with the window and CLAHE settings it was
        trained with (what a heat map is drawn over)."""
        return self.spec.conversion.apply(img16)

    def score_batch(self, imgs8: Sequence[np.ndarray]) -> list[float]:
        """P(abnormal) for converted images; fp16 autocast and channels_last on CUDA."""
        return self.score_tensor(preprocess_batch(imgs8, self.meta.input_size))

    def score_tensor(self, x: torch.Tensor) -> list[float]:
        """P(abnormal) for a normalized (N, 3, H, W) batch on any device."""
        p, heat = self._forward(x)
        return self.final_p(p, heat)[0].tolist()

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's P(abnormal) and, with a normal model, the map, as tensors on the device, not waited for
        (on CUDA the caller overlaps work with them): one pass for both."""
        cuda = self.device.type == "cuda"
        x = x.to(self.device, memory_format=torch.channels_last) if cuda else x
        autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
        self.net.eval()
        with torch.inference_mode(), autocast:
            logits, heat = self.net.scored(x)
        return logits.float().softmax(dim=1)[:, 1], (heat.float() if heat is not None else None)

    def final_p(self, p_head: torch.Tensor, heat: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
        """P(abnormal) as the model scores (meta.score: the head, the map, or their fusion) and the maps on the
        CPU (None without a normal model)."""
        head = p_head.cpu().double().numpy()
        if heat is None:
            return head, None
        maps = heat.cpu().numpy()
        p_map = map_probability(image_score(maps), self.meta.normal["calibration"])
        return {"head": head, "map": p_map, "fusion": (head + p_map) / 2.0}[self.meta.score], maps

    def regions(self, heat: np.ndarray, shape: tuple[int, int]) -> Regions:
        """The map's peak and boxes in pixels of the original image of `shape` (rows, columns)."""
        return regions(heat, float(self.meta.normal["calibration"]["box_threshold"]), shape)

    def prepare(self, img16: np.ndarray) -> Prepared:
        """The CPU part of scoring (quality gate, conversion, resize); thread-safe and torch-free, so a
        pool of workers runs it while this detector's thread runs the network. When the device prepares
        (self.devprep), only the array checks: the raw image is kept for score_prepared."""
        if self.devprep is not None:
            check_image16(img16)
            return Prepared(None, None, img16=img16, shape=img16.shape[:2])
        return prepare(img16, self.spec)

    def score_prepared(self, prepared: Sequence[Prepared], paths: Sequence[str | None] | None = None,
                       seconds: Sequence[float] | None = None) -> list[Prediction]:
        """Predictions for prepared images, the network run in batches of batch_size.

        `seconds` of each prediction: its share of its batch's forward pass, plus `seconds[i]` (the time
        its preparation took, where the caller measured it)."""
        names = list(paths) if paths is not None else [None] * len(prepared)
        extra = list(seconds) if seconds is not None else [0.0] * len(prepared)
        threshold = float(self.meta.threshold)
        if self.devprep is None:  # raw images handed in, but this detector prepares on the CPU
            prepared = [prepare(p.img16, self.spec) if p.img16 is not None and p.reason is None else p
                        for p in prepared]
        chunks = [prepared[start:start + self.batch_size] for start in range(0, len(prepared), self.batch_size)]
        side = torch.cuda.Stream(self.device) if self.devprep is not None and self.devprep.cuda else None
        pending = self._upload(chunks[0], side) if chunks else []
        out: list[Prediction] = []
        start = 0
        for k, chunk in enumerate(chunks):
            t0 = time.perf_counter()
            uploaded = pending
            if any(t is not None for t in uploaded):
                if side is not None:  # the copies were queued on the side stream: wait for them here
                    current = torch.cuda.current_stream(self.device)
                    current.wait_stream(side)
                    for t in uploaded:
                        if t is not None:
                            t.record_stream(current)
                reasons, on_device = self._score_on_device(chunk, uploaded)
                pending = self._upload(chunks[k + 1], side) if k + 1 < len(chunks) else []  # beside the forward
            else:
                reasons = [p.reason for p in chunk]
                imgs8 = [p.img8 for p in chunk if p.reason is None]
                on_device = self._forward(preprocess_batch(imgs8, self.meta.input_size)) if imgs8 else None
                pending = self._upload(chunks[k + 1], side) if k + 1 < len(chunks) else []
            p_all, heats = self.final_p(*on_device) if on_device is not None else (np.zeros(0), None)
            scored = iter(range(len(p_all)))
            share = (time.perf_counter() - t0) / len(chunk)
            for i, (reason, item) in enumerate(zip(reasons, chunk), start):
                if reason is not None:
                    out.append(Prediction(names[i], None, "rescan", threshold, share + extra[i], reason))
                    continue
                row = next(scored)
                p = float(p_all[row])
                verdict = "abnormal" if p >= threshold else "normal"
                heat = heats[row] if heats is not None else None
                where = self.regions(heat, item.shape) if heat is not None and item.shape is not None else None
                out.append(Prediction(names[i], p, verdict, threshold, share + extra[i], regions=where, heat=heat))
            start += len(chunk)
        return out

    def _upload(self, chunk: Sequence[Prepared], stream: "torch.cuda.Stream | None") -> list[torch.Tensor | None]:
        """The raw images of a chunk's device entries on the device (None for the others), queued on `stream`."""
        if self.devprep is None:
            return [None] * len(chunk)
        todo = [p.img16 for p in chunk if p.img16 is not None and p.reason is None]
        tensors = iter(self.devprep.upload(todo, stream) if todo else [])
        return [next(tensors) if p.img16 is not None and p.reason is None else None for p in chunk]

    def _score_on_device(self, chunk: Sequence[Prepared], uploaded: Sequence[torch.Tensor | None]) -> \
            tuple[list[str | None], tuple[torch.Tensor, torch.Tensor | None] | None]:
        """Each entry's rescan reason, and _forward's outputs for the others (on the device, not waited for):
        the uploaded ones prepared by DevicePrep, those prepared on the CPU normalized as score_batch does."""
        devprep = self.devprep
        assert devprep is not None
        on_device = [i for i, t in enumerate(uploaded) if t is not None]
        x_dev, dev_reasons = devprep.finish([uploaded[i] for i in on_device], [chunk[i].img16 for i in on_device])
        reasons: list[str | None] = [p.reason for p in chunk]
        for i, reason in zip(on_device, dev_reasons):
            reasons[i] = reason
        cpu_ok = [i for i, p in enumerate(chunk) if uploaded[i] is None and p.reason is None]
        x_cpu = preprocess_batch([chunk[i].img8 for i in cpu_ok], self.meta.input_size) if cpu_ok else None
        rows = iter(x_dev if x_dev is not None else [])
        cpu_rows = iter(x_cpu.to(self.device) if x_cpu is not None else [])
        batch = [next(rows) if uploaded[i] is not None else next(cpu_rows)
                 for i in range(len(chunk)) if reasons[i] is None]
        return reasons, (self._forward(torch.stack(batch)) if batch else None)

    def predict(self, images16: Sequence[np.ndarray], paths: Sequence[str | None] | None = None) -> list[Prediction]:
        """Quality gate, conversion and the network, on this thread; `seconds` is each image's share of its batch."""
        if paths is not None and len(paths) != len(images16):
            raise InspectorError(f"predict got {len(images16)} images but {len(paths)} paths")
        out: list[Prediction] = []
        names = list(paths) if paths is not None else [None] * len(images16)
        if self.devprep is not None and images16:  # only the array checks here: one pass, chunks overlap
            t0 = time.perf_counter()
            prepared = [self.prepare(img16) for img16 in images16]
            share = (time.perf_counter() - t0) / len(prepared)
            return self.score_prepared(prepared, names, [share] * len(prepared))
        for start in range(0, len(images16), self.batch_size):
            t0 = time.perf_counter()
            prepared = [self.prepare(img16) for img16 in images16[start:start + self.batch_size]]
            share = (time.perf_counter() - t0) / len(prepared)
            out.extend(self.score_prepared(prepared, names[start:start + len(prepared)], [share] * len(prepared)))
        return out

    def check_image(self) -> np.ndarray:
        """A smooth gradient plus noise in the model's value range, at its input size, from a fixed seed."""
        h, w = self.meta.input_size
        window = self.spec.conversion.window
        lo, hi = window.as_tuple() if window else (1700, 2800)
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
