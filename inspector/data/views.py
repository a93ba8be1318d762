"""A dataset's images as the trainer sees them: decoded on demand (ImageSource) and converted the way a
model will convert them (View), with the window fitted on the training images only (fit_view). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from inspector.base.config import WINDOWED_METHODS, Config
from inspector.imaging.convert import Conversion, WindowHistogram
from inspector.data.dataset import Dataset


class ImageSource:
    """A dataset's images: decoded on demand, content sha256 computed once per image."""

    def __init__(self, dataset: Dataset, max_height: int = 10_000, max_width: int = 10_000, workers: int = 1):
        self.dataset = dataset
        self.workers = workers  # threads that decode ahead (pipeline.ordered_map)
        self.max_height, self.max_width = max_height, max_width
        self._sha: dict[int, str] = {}
        self._bundle_hist: dict[str, WindowHistogram] = {}

    @classmethod
    def of(cls, dataset: Dataset, cfg: Config) -> "ImageSource":
        """The source with the configured image limits, decoding on infer.workers threads."""
        from inspector.base.pipeline import worker_count

        return cls(dataset, cfg.imaging.max_height, cfg.imaging.max_width, worker_count(cfg.infer.workers))

    def __len__(self) -> int:
        return len(self.dataset.samples)

    @property
    def y(self) -> np.ndarray:
        return self.dataset.y

    def read16(self, i: int) -> np.ndarray:
        from inspector.imaging.read import read_image

        return read_image(self.dataset.samples[i].path, max_height=self.max_height, max_width=self.max_width)

    def bundle_members(self) -> dict[str, set[int]]:
        members: dict[str, set[int]] = {}
        for i, s in enumerate(self.dataset.samples):
            members.setdefault(s.bundle, set()).add(i)
        return members

    def bundle_histogram(self, bundle: str) -> WindowHistogram:
        """Pixel histogram of one bundle (65536 bins), decoded once and summed per fold."""
        if bundle not in self._bundle_hist:
            from inspector.base.pipeline import ordered_map

            hist = WindowHistogram()
            for img16 in ordered_map(self.read16, sorted(self.bundle_members()[bundle]), self.workers):
                hist.add(img16)
            self._bundle_hist[bundle] = hist
        return self._bundle_hist[bundle]

    def hash_all(self, indices: Sequence[int]) -> None:
        """sha256 of many images on the source's worker threads (hashing releases the GIL)."""
        from inspector.base.pipeline import ordered_map

        todo = [int(i) for i in indices if int(i) not in self._sha]
        for _ in ordered_map(self.sha256, todo, self.workers):
            pass

    def sha256(self, i: int) -> str:
        if i not in self._sha:
            from inspector.imaging.read import file_sha256

            self._sha[i] = file_sha256(self.dataset.samples[i].path)
        return self._sha[i]


@dataclass(frozen=True)
class View:
    """How a training set's images become network input: the conversion fitted on them (fit_view).

    `method`, `window` (a tuple, None where unused) and `clahe` are the conversion's, in the hashable form the
    feature cache's keys and the folds' records take."""

    conversion: Conversion

    @property
    def method(self) -> str:
        return self.conversion.method

    @property
    def window(self) -> tuple[int, int] | None:
        return self.conversion.window.as_tuple() if self.conversion.window else None

    @property
    def clahe(self) -> tuple[float, int]:
        return self.conversion.clahe

    def convert(self, img16: np.ndarray) -> np.ndarray:
        return self.conversion.apply(img16)

    def network_input(self, img16: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
        """convert() resized to the input size, the fast way (prepare.convert_resized: the same pixels)."""
        from inspector.imaging.prepare import InputSpec, convert_resized

        return convert_resized(img16, InputSpec(self.conversion, tuple(input_size)))


def fit_view(source: ImageSource, idx: Sequence[int], method: str, cfg: Config) -> View:
    """The conversion for a training set: the global window from these images only (no leakage)."""
    if method not in WINDOWED_METHODS:
        return View(Conversion.from_config(cfg.convert, method))
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
    window = hist.window(cfg.convert.low_percentile, cfg.convert.high_percentile, cfg.convert.round_window)
    return View(Conversion.from_config(cfg.convert, method, window))
