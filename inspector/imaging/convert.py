"""16-bit -> 8-bit 3-channel conversion (naive, global, local, mix, clahe), window fitting, and the
Conversion value (method, window, CLAHE settings) that models, the config and every caller share.

All arithmetic is exact: the window stretch round((clip(x, lo, hi) - lo) / (hi - lo) * 255)
is done in integers with round-half-up (floor(v + 0.5)), never numpy's round-half-to-even,
so a value is converted the same way on every machine and in every test. Percentiles of
uint16 data come from one 65536-bin histogram, so a window over thousands of training
images costs one pass and equals numpy.percentile(..., method="inverted_cdf") exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping

import numpy as np

from inspector.base.config import METHODS, WINDOWED_METHODS, ConvertConfig
from inspector.base.errors import InspectorError, ModelError

LOW_PERCENTILE = 0.01  # the paper's window: 0.01th to 99.99th percentile
HIGH_PERCENTILE = 99.99
LEVELS = 65536


@dataclass(frozen=True)
class Window:
    """The 16-bit value range stretched onto 0-255; stored in the model artifact."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        for name in ("lo", "hi"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < LEVELS:
                raise InspectorError(f"window {name} must be a whole number from 0 to 65535, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.hi <= self.lo:
            raise InspectorError(f"window [{self.lo}, {self.hi}] is empty: its upper end must be above its lower "
                                 "end (pass --window LO HI with LO < HI)")

    def as_tuple(self) -> tuple[int, int]:
        return (self.lo, self.hi)


class WindowHistogram:
    """Pixel counts of any number of uint16 images, for exact percentiles in one pass."""

    def __init__(self) -> None:
        self.counts = np.zeros(LEVELS, dtype=np.int64)
        self.images = 0

    @property
    def pixels(self) -> int:
        return int(self.counts.sum())

    def add(self, img16: np.ndarray) -> None:
        """Count the pixels of one image."""
        _require_uint16(img16)
        self.counts += np.bincount(img16.ravel(), minlength=LEVELS)
        self.images += 1

    def percentile(self, q: float) -> int:
        """Value at percentile q (0-100), as numpy.percentile(all_pixels, q, method="inverted_cdf")."""
        n = self.pixels
        if n == 0:
            raise InspectorError("no pixels were counted: add at least one image before fitting a window")
        if not 0 <= q <= 100:
            raise InspectorError(f"percentile must be between 0 and 100, got {q}")
        index = _inverted_cdf_index(n, q)
        cumulative = np.cumsum(self.counts)
        return int(np.searchsorted(cumulative, index, side="right"))

    def window(self, low_percentile: float = LOW_PERCENTILE, high_percentile: float = HIGH_PERCENTILE,
               round_window: bool = False) -> Window:
        """The window [low, high] percentiles; round_window rounds both ends to the nearest hundred."""
        if low_percentile >= high_percentile:
            raise InspectorError(f"low_percentile {low_percentile} must be below high_percentile {high_percentile}")
        lo, hi = self.percentile(low_percentile), self.percentile(high_percentile)
        if round_window and hi > lo:
            nearest = _round_hundred(lo), _round_hundred(hi)
            # a range narrower than a hundred would round to nothing: round outwards instead
            lo, hi = nearest if nearest[1] > nearest[0] else (lo // 100 * 100, min(-(-hi // 100) * 100, 65535))
        if hi <= lo:
            what = "the image has" if self.images == 1 else f"the {self.images} images have"
            raise InspectorError(f"{what} no contrast: the {low_percentile:g}th and {high_percentile:g}th "
                                 f"percentiles are {lo} and {hi}, so there is no window to stretch "
                                 "(check for blank or saturated captures)")
        return Window(lo, hi)


def fit_window(images: Iterable[np.ndarray], low_percentile: float = LOW_PERCENTILE,
               high_percentile: float = HIGH_PERCENTILE, round_window: bool = False) -> Window:
    """The global window of a set of training images (all their pixels pooled)."""
    hist = WindowHistogram()
    for img16 in images:
        hist.add(img16)
    return hist.window(low_percentile, high_percentile, round_window)


def to_uint8(img16: np.ndarray, window: Window | tuple[int, int]) -> np.ndarray:
    """round((clip(x, lo, hi) - lo) / (hi - lo) * 255), exact, round half up."""
    _require_uint16(img16)
    window = _as_window(window)
    return np.take(_window_lut(window.lo, window.hi), img16)  # a third faster than lut[img16]


def to_uint8_naive(img16: np.ndarray) -> np.ndarray:
    """round(x / 257): the full 16-bit range onto 0-255 (the paper's dark baseline)."""
    _require_uint16(img16)
    return np.take(_naive_lut(), img16)


def convert_image(img16: np.ndarray, method: str, window: Window | tuple[int, int] | None = None,
                  clahe_clip_limit: float = 2.0, clahe_tile_grid: int = 8) -> np.ndarray:
    """The HxWx3 uint8 image the network sees; mix puts (naive, global, local) in channels 0, 1, 2."""
    if method not in METHODS:
        raise InspectorError(f"unknown conversion method {method!r} (known: {', '.join(METHODS)})")
    _require_uint16(img16)
    if method in WINDOWED_METHODS:
        if window is None:
            raise InspectorError(f"method '{method}' needs a window: pass --window LO HI or a model")
        window = _as_window(window)
    if method == "naive":
        return _three_channels(to_uint8_naive(img16))
    if method == "global":
        return _three_channels(to_uint8(img16, window))
    if method == "local":
        return _three_channels(to_uint8(img16, local_window(img16)))
    if method == "mix":
        channels = (to_uint8_naive(img16), to_uint8(img16, window), to_uint8(img16, local_window(img16)))
        return np.stack(channels, axis=-1)
    import cv2

    clahe = cv2.createCLAHE(clipLimit=float(clahe_clip_limit), tileGridSize=(int(clahe_tile_grid),) * 2)
    return _three_channels(clahe.apply(to_uint8(img16, window)))


@dataclass(frozen=True)
class Conversion:
    """How a 16-bit image becomes the network's 8-bit image: the method, its window (kept where given, needed
    by global, mix and clahe) and CLAHE's (clip_limit, tile_grid). A model stores it, the config names it."""

    method: str
    window: Window | None = None
    clahe: tuple[float, int] = (2.0, 8)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InspectorError(f"unknown conversion method {self.method!r} (known: {', '.join(METHODS)})")
        if self.window is not None:
            object.__setattr__(self, "window", _as_window(self.window))
        elif self.method in WINDOWED_METHODS:
            raise InspectorError(f"method '{self.method}' needs a window: pass --window LO HI or a model")
        try:
            clip_limit, tile_grid = self.clahe
            clahe = (float(clip_limit), int(tile_grid))
        except (TypeError, ValueError):
            raise InspectorError(f"CLAHE settings are a clip limit and a tile grid, got {self.clahe!r}") from None
        if clahe[1] < 1:
            raise InspectorError(f"CLAHE's tile grid must be at least 1, got {clahe[1]}")
        object.__setattr__(self, "clahe", clahe)

    @classmethod
    def from_config(cls, convert: ConvertConfig, method: str | None = None,
                    window: Window | tuple[int, int] | None = None) -> "Conversion":
        """`method` (else convert.method) with `window` and the config's CLAHE settings."""
        return cls(method or convert.method, window, (convert.clahe_clip_limit, convert.clahe_tile_grid))

    @classmethod
    def from_meta(cls, meta: Mapping[str, object]) -> "Conversion":
        """The conversion a model's metadata names (the artifact's JSON object: method, window, clahe);
        a missing or invalid value is a ModelError that names it. CLAHE settings left out are 2.0 and 8."""
        method = meta.get("method")
        if not isinstance(method, str) or method not in METHODS:
            what = "names no conversion method" if method is None else f"method {method!r} is unknown"
            raise ModelError(f"model {what}; use one of {', '.join(METHODS)}")
        window = _meta_window(meta.get("window"))
        if window is None and method in WINDOWED_METHODS:
            raise ModelError(f"model method {method!r} needs a window [lo, hi] fitted on the training images")
        clahe = meta.get("clahe") or {}
        if not isinstance(clahe, Mapping):
            raise ModelError(f"model clahe {clahe!r} must be an object with clip_limit and tile_grid")
        try:
            return cls(method, window, (clahe.get("clip_limit", 2.0), clahe.get("tile_grid", 8)))
        except InspectorError as exc:
            raise ModelError(f"model clahe {dict(clahe)!r} is invalid: {exc}") from None

    def to_meta(self) -> dict[str, object]:
        """The fields from_meta reads, as a model's metadata keeps them."""
        return {"method": self.method, "window": self.window.as_tuple() if self.window else None,
                "clahe": {"clip_limit": self.clahe[0], "tile_grid": self.clahe[1]}}

    def apply(self, img16: np.ndarray) -> np.ndarray:
        """The HxWx3 uint8 image (convert_image)."""
        return convert_image(img16, self.method, self.window, self.clahe[0], self.clahe[1])


def _meta_window(value: object) -> Window | None:
    """A model's stored window [lo, hi] (or None), as a ModelError where it is not one."""
    if value is None or value in ([], ()):
        return None
    if isinstance(value, Window):
        return value
    try:
        lo, hi = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ModelError(f"model window must be two whole numbers, got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi)):
        raise ModelError(f"model window must be two whole numbers, got {value!r}")
    if hi <= lo:
        raise ModelError(f"model window {[int(lo), int(hi)]} is empty: hi must be above lo")
    if not 0 <= lo < hi < LEVELS:
        raise ModelError(f"model window {[int(lo), int(hi)]} must lie within 0-65535")
    return Window(lo, hi)


def convert_recorded(img16: np.ndarray, meta: Mapping[str, object] | None, method: str | None = None) -> np.ndarray:
    """The conversion a model's stored metadata (its JSON, as the models table keeps it) names; without
    metadata `method` (else local). Torch-free: reports, the web."""
    fields = dict(meta or {})
    fields["method"] = fields.get("method") or method or "local"
    return Conversion.from_meta(fields).apply(img16)


def local_window(img16: np.ndarray) -> Window:
    """The image's own 0.01/99.99 percentile window (method local); a constant image has none."""
    hist = WindowHistogram()
    hist.add(img16)
    try:
        return hist.window(LOW_PERCENTILE, HIGH_PERCENTILE)
    except InspectorError as exc:
        raise InspectorError(f"method 'local' cannot stretch this image: {exc}") from None


def _inverted_cdf_index(n: int, q: float) -> int:
    """Sorted-order index numpy's inverted_cdf picks; float steps mirror numpy's so ties agree."""
    virtual = np.float64(n) * (np.float64(q) / np.float64(100)) - 1
    previous = np.floor(virtual)
    index = int(previous) if virtual - previous == 0 else int(previous) + 1
    return min(max(index, 0), n - 1)


def _round_hundred(value: int) -> int:
    """Nearest hundred, halves up, kept within uint16."""
    return min((value + 50) // 100 * 100, 65500)


@lru_cache(maxsize=16)
def _window_lut(lo: int, hi: int) -> np.ndarray:
    """A 65536-entry table: integer round-half-up of (clip(x) - lo) * 255 / (hi - lo)."""
    x = np.clip(np.arange(LEVELS, dtype=np.int64), lo, hi) - lo
    span = hi - lo
    lut = ((2 * 255 * x + span) // (2 * span)).astype(np.uint8)
    lut.flags.writeable = False
    return lut


@lru_cache(maxsize=1)
def _naive_lut() -> np.ndarray:
    x = np.arange(LEVELS, dtype=np.int64)
    lut = ((2 * x + 257) // 514).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def _three_channels(img8: np.ndarray) -> np.ndarray:
    return np.repeat(img8[:, :, None], 3, axis=2)


def _as_window(window: Window | tuple[int, int]) -> Window:
    if isinstance(window, Window):
        return window
    try:
        lo, hi = window
    except (TypeError, ValueError):
        raise InspectorError(f"a window is two whole numbers LO HI, got {window!r}") from None
    return Window(lo, hi)


def _require_uint16(img16: np.ndarray) -> None:
    if not isinstance(img16, np.ndarray) or img16.dtype != np.uint16 or img16.ndim != 2:
        got = f"{img16.dtype} {img16.shape}" if isinstance(img16, np.ndarray) else type(img16).__name__
        raise InspectorError(f"conversion needs a 2-D uint16 image (as read_image returns), got {got}")
