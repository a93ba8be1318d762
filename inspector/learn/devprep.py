"""prepare.prepare on a torch device: quality gate, conversion, resize and normalization of raw 16-bit images.

On a GPU box the CPU should not touch every pixel: each uint16 image is uploaded once (pinned host memory,
non_blocking copy on CUDA) and everything else runs where the network runs. The same code runs on the CPU
(tests/test_devprep.py checks it there against prepare.prepare):

- the gate is quality.check's, in its order and with its texts (quality's *_reason functions): blank,
  size, clipped shares from exact counts, and the Laplacian variance of the windowed 8-bit image from
  exact integer sums (int32 Laplacian, int64 sums, then cv2.meanStdDev's float64 steps), so it equals
  quality.measure_blur;
- the conversion looks up convert.py's own 65536-entry tables (`_window_lut`, `_naive_lut`), uploaded
  once per window; method local's window comes from a device histogram, picked as convert.WindowHistogram
  picks it;
- the resize follows prepare.resize_to: cv2.INTER_AREA when shrinking both ways (integer factors as exact
  block sums rounded as OpenCV rounds them, other factors as two float32 matrix products with OpenCV's area
  weights), else cv2.INTER_LINEAR's 11-bit fixed-point arithmetic, in integers. The result is whole grey
  levels, equal to the CPU path's or at most 1 off (a float32 sum landing on the other side of a half).

Method clahe is not done here (`DevicePrep.supports` says False): its caller keeps the CPU path.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from inspector.imaging import quality
from inspector.imaging.convert import HIGH_PERCENTILE, LEVELS, LOW_PERCENTILE, _inverted_cdf_index, _naive_lut, \
    _window_lut, local_window
from inspector.base.errors import InspectorError
from inspector.learn.model import normalize_levels
from inspector.imaging.prepare import InputSpec

DEVICE_METHODS = ("naive", "global", "local", "mix")
COEF_BITS = 11  # cv2's INTER_RESIZE_COEF_BITS: bilinear weights in 1/2048ths
CACHED = 16  # local-window tables and resize weights kept on the device


class _Cache(OrderedDict):
    """A small least-recently-used map of device tensors."""

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > CACHED:
            self.popitem(last=False)
        return value


class DevicePrep:
    """The gate, conversion, resize and normalization of a model's InputSpec, on `device`."""

    def __init__(self, spec: InputSpec, device: torch.device | str):
        if not self.supports(spec):
            raise InspectorError(f"method {spec.conversion.method!r} is prepared on the CPU, not on a device "
                                 "(DevicePrep.supports)")
        self.spec = spec
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._luts = _Cache()
        self._weights = _Cache()

    @staticmethod
    def supports(spec: InputSpec) -> bool:
        """Whether this spec's preparation can run on a device (clahe stays on the CPU)."""
        return spec.conversion.method in DEVICE_METHODS

    # -- upload -----------------------------------------------------------------------------------------------
    def upload(self, images16: Sequence[np.ndarray], stream: "torch.cuda.Stream | None" = None) -> list[torch.Tensor]:
        """Each image on the device as it was (int16 bits), copied once: from pinned memory and non_blocking on
        CUDA, on `stream` when given (the caller makes its stream wait for it before finish())."""
        out = []
        ctx = torch.cuda.stream(stream) if (self.cuda and stream is not None) else contextlib.nullcontext()
        with ctx:
            for img16 in images16:
                host = torch.from_numpy(np.ascontiguousarray(img16).view(np.int16))
                if self.cuda:
                    out.append(host.pin_memory().to(self.device, non_blocking=True))
                else:
                    out.append(host.to(self.device))
        return out

    def run(self, images16: Sequence[np.ndarray]) -> tuple[torch.Tensor | None, list[str | None]]:
        """(N', 3, h, w) float32 network input of the images without a rescan reason, in order (None when
        there is none), and each image's reason or None."""
        return self.finish(self.upload(images16), images16)

    def finish(self, uploaded: Sequence[torch.Tensor], images16: Sequence[np.ndarray]) -> \
            tuple[torch.Tensor | None, list[str | None]]:
        """run() on images already uploaded; images16 are their host arrays (read only for the rare
        "cannot convert" text, which convert.local_window words)."""
        spec, limits = self.spec, self.spec.quality
        xs = [(t.to(torch.int32) & 0xFFFF) for t in uploaded]
        blur_min = limits.get("blur_min")
        method, window = spec.conversion.method, spec.conversion.window
        clip = limits.get("clipped_fraction") is not None and window is not None
        need_local = method in ("local", "mix") or (blur_min is not None and window is None)
        stats = [self._stats(x, clip, need_local) for x in xs]
        values = torch.stack(stats).tolist() if stats else []  # one wait for every image's numbers
        reasons: list[str | None] = []
        for x, (lo, hi, n_low, n_high, w_lo, w_hi) in zip(xs, values):
            if lo == hi:
                reasons.append(quality.blank_reason(lo))
                continue
            reason = quality.size_reason(tuple(x.shape), limits)
            if reason is None and clip:
                n = x.numel()
                reason = quality.clipping_reason(n_low / n, n_high / n, limits["clipped_fraction"])
            reasons.append(reason)
        local = [(w_lo, w_hi) if w_hi > w_lo else None for *_, w_lo, w_hi in values]
        if blur_min is not None:
            todo = [i for i, r in enumerate(reasons) if r is None]
            sums = [self._laplacian_sums(self._gate_gray(xs[i], local[i])) for i in todo]
            for i, (s1, s2) in zip(todo, torch.stack(sums).tolist() if sums else []):
                reasons[i] = quality.blur_reason(variance_from_sums(xs[i].numel(), s1, s2), blur_min)
        out = []
        for i, x in enumerate(xs):
            if reasons[i] is not None:
                continue
            if method in ("local", "mix") and local[i] is None:
                try:
                    local_window(images16[i])  # raises, with convert.py's words
                except InspectorError as exc:
                    reasons[i] = f"cannot convert: {exc}"
                    continue
            out.append(self._convert_resized(x, local[i]))
        return (normalize_levels(torch.stack(out)) if out else None), reasons

    # -- gate -------------------------------------------------------------------------------------------------
    def _stats(self, x: torch.Tensor, clip: bool, need_local: bool) -> torch.Tensor:
        """min, max, pixels <= window lo, pixels >= window hi, local window lo, hi (int64, on the device)."""
        zero = torch.zeros((), dtype=torch.int64, device=x.device)
        lo, hi = torch.aminmax(x)
        parts = [lo.long(), hi.long()]
        if clip:
            window = self.spec.conversion.window
            parts += [(x <= window.lo).sum(), (x >= window.hi).sum()]
        else:
            parts += [zero, zero]
        if need_local:
            parts += list(self._local_window(x).unbind())
        else:
            parts += [zero, zero]
        return torch.stack(parts)

    def _local_window(self, x: torch.Tensor) -> torch.Tensor:
        """The image's own LOW/HIGH percentile values, as convert.WindowHistogram.percentile picks them."""
        n = x.numel()
        counts = torch.bincount(x.reshape(-1), minlength=LEVELS)
        cumulative = torch.cumsum(counts, 0)
        index = torch.tensor([_inverted_cdf_index(n, LOW_PERCENTILE), _inverted_cdf_index(n, HIGH_PERCENTILE)],
                             dtype=cumulative.dtype, device=x.device)
        return torch.searchsorted(cumulative, index, right=True)

    def _gate_gray(self, x: torch.Tensor, local: tuple[int, int] | None) -> torch.Tensor:
        """quality.gate_image on the device: the model's window, else the image's own, else zeros."""
        if self.spec.conversion.window is not None:
            return self._lookup(x, self.spec.conversion.window.as_tuple())
        if local is None:
            return torch.zeros_like(x)
        return self._lookup(x, local)

    @staticmethod
    def _laplacian_sums(gray: torch.Tensor) -> torch.Tensor:
        """(sum, sum of squares) of cv2.Laplacian(gray, ksize=1) with BORDER_REFLECT_101, exact in int64."""
        h, w = gray.shape
        rows = _reflect101_index(h, gray.device)
        cols = _reflect101_index(w, gray.device)
        p = gray.index_select(0, rows).index_select(1, cols)
        lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]
        return torch.stack([lap.sum(dtype=torch.int64), (lap * lap).sum(dtype=torch.int64)])

    # -- conversion -------------------------------------------------------------------------------------------
    def _lut(self, window: tuple[int, int] | None) -> torch.Tensor:
        """convert.py's table for a window (None: the naive one), as int32 on the device, uploaded once."""
        def make() -> torch.Tensor:
            table = _naive_lut() if window is None else _window_lut(*window)
            return torch.from_numpy(table.astype(np.int32)).to(self.device)
        return self._luts.get_or(window, make)

    def _lookup(self, x: torch.Tensor, window: tuple[int, int] | None) -> torch.Tensor:
        return self._lut(window).index_select(0, x.reshape(-1)).view(x.shape)

    def _convert_resized(self, x: torch.Tensor, local: tuple[int, int] | None) -> torch.Tensor:
        """(3, h, w) float32 grey levels: the method's channels looked up, resized, repeated for gray methods."""
        method = self.spec.conversion.method
        window = self.spec.conversion.window.as_tuple() if self.spec.conversion.window is not None else None
        if method == "naive":
            channels = [self._lookup(x, None)]
        elif method == "global":
            channels = [self._lookup(x, window)]
        elif method == "local":
            channels = [self._lookup(x, local)]
        else:  # mix: naive, global, local in channels 0, 1, 2
            channels = [self._lookup(x, None), self._lookup(x, window), self._lookup(x, local)]
        small = self.resize(torch.stack(channels), self.spec.input_size)
        return small.expand(3, -1, -1) if small.shape[0] == 1 else small

    # -- resize -----------------------------------------------------------------------------------------------
    def resize(self, img: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
        """(C, H, W) int32 grey levels -> (C, h, w) float32 whole grey levels, by prepare.resize_to's rule."""
        h, w = (int(v) for v in input_size)
        _, big_h, big_w = img.shape
        if (big_h, big_w) == (h, w):
            return img.float()
        if big_h >= h and big_w >= w:
            if big_h % h == 0 and big_w % w == 0:
                return _area_integer(img, big_h // h, big_w // w)
            rows = self._weights.get_or(("area", big_h, h), lambda: self._upload(_area_weights(big_h, h)))
            cols = self._weights.get_or(("area", big_w, w), lambda: self._upload(_area_weights(big_w, w)))
            x = img.float()
            if big_h * big_w * w + h * big_h * w <= h * big_h * big_w + h * big_w * w:
                out = rows @ (x @ cols.T)
            else:
                out = (rows @ x) @ cols.T
            return out.round_().clamp_(0, 255)
        ys, beta = self._weights.get_or(("rows", big_h, h), lambda: self._linear_table(big_h, h, False))
        xs, alpha = self._weights.get_or(("columns", big_w, w), lambda: self._linear_table(big_w, w, True))
        return _linear_fixed_point(img, ys, beta, xs, alpha)

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def _linear_table(self, size: int, out: int, columns: bool) -> tuple[torch.Tensor, torch.Tensor]:
        offsets, weights = _linear_coefficients(size, out, columns)
        return self._upload(offsets), self._upload(weights)


def variance_from_sums(n: int, s1: int, s2: int) -> float:
    """The variance cv2.meanStdDev gives (and quality.measure_blur squares) from exact sums of x and x**2."""
    scale = 1.0 / n
    mean = s1 * scale
    return float(np.sqrt(max(s2 * scale - mean * mean, 0.0))) ** 2


def _reflect101_index(n: int, device: torch.device) -> torch.Tensor:
    """Indices -1..n of a length-n axis under BORDER_REFLECT_101 (cv2's default border)."""
    idx = np.arange(-1, n + 1)
    idx = np.abs(idx)
    idx = np.where(idx >= n, 2 * (n - 1) - idx, idx)
    return torch.from_numpy(np.clip(idx, 0, n - 1)).to(device)


def _area_integer(img: torch.Tensor, ky: int, kx: int) -> torch.Tensor:
    """cv2.INTER_AREA by whole factors: exact block sums, rounded as OpenCV's fast path rounds them."""
    c, big_h, big_w = img.shape
    sums = img.view(c, big_h // ky, ky, big_w // kx, kx).sum(dim=(2, 4), dtype=torch.int32)
    if ky == 2 and kx == 2:
        return ((sums + 2) >> 2).float()
    scale = float(np.float32(1) / np.float32(ky * kx))  # OpenCV: saturate_cast<uchar>(sum * (1.f / area))
    return (sums.float() * scale).round_().clamp_(0, 255)


def _area_weights(size: int, out: int) -> np.ndarray:
    """(out, size) float32 weights of cv2.INTER_AREA along one axis (OpenCV's computeResizeAreaTab)."""
    scale = 1.0 / (out / size)
    weights = np.zeros((out, size), np.float64)
    for d in range(out):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, size - f1)
        s2 = min(int(np.floor(f2)), size - 1)
        s1 = min(int(np.ceil(f1)), s2)
        if s1 - f1 > 1e-3:
            weights[d, s1 - 1] = np.float32((s1 - f1) / cell)
        weights[d, s1:s2] = np.float32(1.0 / cell)
        if f2 - s2 > 1e-3:
            weights[d, s2] = np.float32(min(min(f2 - s2, 1.0), cell) / cell)
    return weights.astype(np.float32)


def _linear_coefficients(size: int, out: int, columns: bool) -> tuple[np.ndarray, np.ndarray]:
    """cv2.INTER_LINEAR along one axis: (out, 2) source indices and (out, 2) weights in 1/2048ths.

    As OpenCV's resizeGeneric: a column beyond either edge takes the edge pixel whole, while a row keeps
    its fractional weights on two clamped (equal) rows, which its vertical pass truncates differently."""
    scale = 1.0 / (out / size)
    f = ((np.arange(out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if columns:
        f[(s < 0) | (s >= size - 1)] = 0
        s = np.clip(s, 0, size - 1)
    one = np.float32(1 << COEF_BITS)
    weights = np.stack([np.rint((np.float32(1) - f) * one), np.rint(f * one)], axis=1).astype(np.int32)
    offsets = np.clip(np.stack([s, s + 1], axis=1), 0, size - 1)
    return offsets, weights


def _linear_fixed_point(img: torch.Tensor, ys: torch.Tensor, beta: torch.Tensor, xs: torch.Tensor,
                        alpha: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit INTER_LINEAR: horizontal int sums of 11-bit weights, then its vertical rounding steps."""
    left, right = img.index_select(2, xs[:, 0]), img.index_select(2, xs[:, 1])
    horizontal = left * alpha[:, 0] + right * alpha[:, 1]  # (C, H, w), at most 255 * 2048
    top = horizontal.index_select(1, ys[:, 0]) >> 4
    bottom = horizontal.index_select(1, ys[:, 1]) >> 4
    b0, b1 = beta[:, 0].view(-1, 1), beta[:, 1].view(-1, 1)
    out = (((top * b0) >> 16) + ((bottom * b1) >> 16) + 2) >> 2
    return out.clamp_(0, 255).float()
