"""A dataset's images as the trainer sees them: decoded on demand (ImageSource) and converted the way a
model will convert them (View), with the window fitted on the training images only (fit_view). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from inspector.config import WINDOWED_METHODS, Config
from inspector.dataset import Dataset


class ImageSource:
    """A dataset's images: decoded on demand, content sha256 computed once per image."""

    def __init__(self, dataset: Dataset, max_height: int = 10_000, max_width: int = 10_000, workers: int = 1):
        self.dataset = dataset
        self.workers = workers  # threads that decode ahead (pipeline.ordered_map)
        self.max_height, self.max_width = max_height, max_width
        self._sha: dict[int, str] = {}
        self._bundle_hist: dict[str, object] = {}

    @classmethod
    def of(cls, dataset: Dataset, cfg: Config) -> "ImageSource":
        """The source with the configured image limits, decoding on infer.workers threads."""
        from inspector.pipeline import worker_count

        return cls(dataset, cfg.imaging.max_height, cfg.imaging.max_width, worker_count(cfg.infer.workers))

    def __len__(self) -> int:
        return len(self.dataset.samples)

    @property
    def y(self) -> np.ndarray:
        return self.dataset.y

    def read16(self, i: int) -> np.ndarray:
        from inspector.imaging import read_image

        return read_image(self.dataset.samples[i].path, max_height=self.max_height, max_width=self.max_width)

    def bundle_members(self) -> dict[str, set[int]]:
        members: dict[str, set[int]] = {}
        for i, s in enumerate(self.dataset.samples):
            members.setdefault(s.bundle, set()).add(i)
        return members

    def bundle_histogram(self, bundle: str):
        """Pixel histogram of one bundle (65536 bins), decoded once and summed per fold."""
        if bundle not in self._bundle_hist:
            from inspector.convert import WindowHistogram

            from inspector.pipeline import ordered_map

            hist = WindowHistogram()
            for img16 in ordered_map(self.read16, sorted(self.bundle_members()[bundle]), self.workers):
                hist.add(img16)
            self._bundle_hist[bundle] = hist
        return self._bundle_hist[bundle]

    def hash_all(self, indices: Sequence[int]) -> None:
        """sha256 of many images on the source's worker threads (hashing releases the GIL)."""
        from inspector.pipeline import ordered_map

        todo = [int(i) for i in indices if int(i) not in self._sha]
        for _ in ordered_map(self.sha256, todo, self.workers):
            pass

    def sha256(self, i: int) -> str:
        if i not in self._sha:
            from inspector.imaging import file_sha256

            self._sha[i] = file_sha256(self.dataset.samples[i].path)
        return self._sha[i]


@dataclass(frozen=True)
class View:
    """How images become network input: method, window (None where unused), CLAHE settings."""

    method: str
    window: tuple[int, int] | None
    clahe: tuple[float, int] = (2.0, 8)

    def convert(self, img16: np.ndarray) -> np.ndarray:
        from inspector.convert import Window, convert_image

        window = Window(*self.window) if self.window is not None else None
        return convert_image(img16, self.method, window=window, clahe_clip_limit=self.clahe[0],
                             clahe_tile_grid=self.clahe[1])

    def network_input(self, img16: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
        """convert() resized to the input size, the fast way (prepare.convert_resized: the same pixels)."""
        from inspector.convert import Window
        from inspector.prepare import InputSpec, convert_resized

        window = Window(*self.window) if self.window is not None else None
        return convert_resized(img16, InputSpec(self.method, window, tuple(input_size), self.clahe))


def fit_view(source: ImageSource, idx: Sequence[int], method: str, cfg: Config) -> View:
    """The conversion for a training set: the global window from these images only (no leakage)."""
    from inspector.convert import WindowHistogram

    clahe = (cfg.convert.clahe_clip_limit, cfg.convert.clahe_tile_grid)
    if method not in WINDOWED_METHODS:
        return View(method, None, clahe)
    hist = WindowHistogram()
    wanted = {int(i) for i in idx}
    for bundle, members in source.bundle_members().items():
        if members <= wanted:  # a whole bundle: its histogram is counted once for all folds
            part = source.bundle_histogram(bundle)
            hist.counts += part.counts
            hist.images += part.images
            wanted -= members
    for i in sorted(wanted):
        hist.add(source.read16(i))
    w = hist.window(cfg.convert.low_percentile, cfg.convert.high_percentile, cfg.convert.round_window)
    return View(method, (int(w.lo), int(w.hi)), clahe)
