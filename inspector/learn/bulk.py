"""Many files through one detector at the pipeline's rate: `inspector score`, `evaluate` and `rescore`.

Pool workers read each file and prepare it (quality gate, conversion, resize: Detector.prepare); the
calling thread, the only one running torch, scores them in batches, in the files' order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

import numpy as np

from inspector.base.errors import ImageError
from inspector.base.pipeline import Turns, ordered_map

T = TypeVar("T")


@dataclass
class Scored(Generic[T]):
    """One item's result: its prediction, or the ImageError that kept it from the network."""

    item: T
    prediction: Any = None  # infer.Prediction
    error: ImageError | None = None


@dataclass
class _Loaded(Generic[T]):
    item: T
    prepared: Any = None
    error: ImageError | None = None
    seconds: float = 0.0


def score_items(detector: Any, items: Iterable[T], read: Callable[[T], np.ndarray], name: Callable[[T], str],
                workers: int) -> Iterator[Scored[T]]:
    """Predictions for every item in order; `read(item)` gives its 16-bit image (or raises ImageError)."""

    def load(item: T) -> _Loaded[T]:
        t0 = time.perf_counter()
        try:
            prepared = detector.prepare(read(item))
        except ImageError as exc:
            return _Loaded(item, error=exc, seconds=time.perf_counter() - t0)
        return _Loaded(item, prepared, seconds=time.perf_counter() - t0)

    batch: list[_Loaded[T]] = []
    turns = Turns.for_device(detector.device)

    def flush() -> Iterator[Scored[T]]:
        good = [b for b in batch if b.error is None]
        with turns.model():
            predictions = iter(detector.score_prepared([b.prepared for b in good], [name(b.item) for b in good],
                                                       [b.seconds for b in good]) if good else [])
        for b in batch:
            yield Scored(b.item, error=b.error) if b.error is not None else Scored(b.item, next(predictions))
        batch.clear()

    for loaded in ordered_map(load, items, workers, ahead=2 * detector.batch_size + workers, turns=turns):
        batch.append(loaded)
        if len(batch) >= detector.batch_size:
            yield from flush()
    yield from flush()
