"""The CPU stages that feed the one thread running the model: a pool of worker threads, results in order.

Hashing (hashlib), decoding (zlib, the DICOM decoders), the lookup tables (numpy) and resizing (OpenCV)
release the GIL, so threads run them on every core without copying images between processes; none of
them touches torch, so the model's thread keeps the only OpenMP team (bench/torch_threads.py shows
what a second one costs). torch.utils.data.DataLoader's workers are processes: each would import
torch, and forking a process whose OpenMP runtime has started is not safe with GNU libgomp.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_DEFAULT_WORKERS = 8  # beyond this the model, the disk or the database is the limit


def worker_count(configured: int = 0) -> int:
    """infer.workers: the configured number, or one per core (at most MAX_DEFAULT_WORKERS) when 0."""
    if configured > 0:
        return configured
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      MAX_DEFAULT_WORKERS))


class Turns:
    """The model's forward pass and the workers taking turns for the CPU cores (enabled when the model runs
    on the CPU): a forward pass waits for the files being prepared to finish, and runs on every core
    while no worker starts another; between passes the workers have every core.

    An OpenMP team that shares its cores with busy worker threads waits at every barrier for a thread the
    OS has put aside, and a forward pass then takes several times as long (bench/pipeline_ceiling.py and
    bench/daemon_latency.py measure the pipeline with it). A reader-writer lock, the model preferred.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._cond = threading.Condition()
        self._working = 0
        self._model = False

    @classmethod
    def for_device(cls, device: object) -> "Turns":
        """Turns on where the model runs on the CPU (a torch.device, or anything with its `type`)."""
        return cls(getattr(device, "type", "cpu") == "cpu")

    @contextlib.contextmanager
    def model(self) -> Iterator[None]:
        """Around a forward pass: waits for the workers' files in hand, keeps new ones from starting."""
        if not self.enabled:
            yield
            return
        with self._cond:
            self._model = True
            while self._working:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._model = False
                self._cond.notify_all()

    @contextlib.contextmanager
    def worker(self) -> Iterator[None]:
        """Around a worker's CPU work on one file: waits while a forward pass runs or is waiting to."""
        if not self.enabled:
            yield
            return
        with self._cond:
            while self._model:
                self._cond.wait()
            self._working += 1
        try:
            yield
        finally:
            with self._cond:
                self._working -= 1
                self._cond.notify_all()


def worker_pool(workers: int, name: str = "inspector-prep") -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


def _in_turn(fn: Callable[[T], R], turns: Turns) -> Callable[[T], R]:
    def work(item: T) -> R:
        with turns.worker():
            return fn(item)

    return work


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int | None = None,
                turns: Turns | None = None) -> Iterator[R]:
    """fn(item) for every item on `workers` threads, yielded in the items' order.

    At most `ahead` results (default 2 x workers) are in flight or waiting, so memory stays flat however
    many items there are. An exception of fn is raised where its result would have been yielded;
    closing the iterator early cancels what has not started. turns: each fn call takes a worker's turn.
    """
    work = _in_turn(fn, turns) if turns is not None and turns.enabled else fn

    limit = max(1, ahead if ahead is not None else 2 * workers)
    source = iter(items)
    pool = worker_pool(workers)
    pending: deque[Future] = deque()
    try:
        for item in source:
            pending.append(pool.submit(work, item))
            if len(pending) >= limit:
                break
        while pending:
            future = pending.popleft()
            for item in source:  # one in, one out
                pending.append(pool.submit(work, item))
                break
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
