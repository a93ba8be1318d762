"""Frozen-backbone embedding cache: every stage's pooled features, computed once per key.

The backbone is frozen, so its pooled features depend only on (image content, conversion method
and window, CLAHE settings, flip, input size, backbone weights). The key hashes exactly those;
one .npy per key holds the raw (unstandardized) features of all four stages under every pooling
(modelmeta.FULL_DIM values), so changing model.features or model.pooling picks other columns and
never recomputes the backbone. Written atomically, so an interrupted run resumes and a changed
window or weights file never reuses a stale feature.
"""

from __future__ import annotations

import hashlib
import json
import sys
import io
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from inspector.base.config import WINDOWED_METHODS
from inspector.base.durable import write_atomic
from inspector.base.errors import InspectorError
from inspector.imaging.modelmeta import FULL_DIM
from inspector.learn.model import preprocess_batch
from inspector.base.pipeline import Turns, ordered_map

FLIPS = ("none", "h", "v", "hv")
LAYOUT = "stages1-4 x mean,max,std v2"  # part of every key: a new layout never reads an old entry
CACHE_FOLDER = ".inspector-cache"

_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


class CacheError(InspectorError):
    """The embedding cache cannot be used as asked."""


def require_frozen(freeze: str) -> None:
    """The cache holds backbone outputs, valid only while the backbone never changes."""
    if freeze != "paper":
        raise CacheError(
            f"model.freeze = {freeze!r} trains every backbone layer, so its features change at each "
            "step and cannot be cached; use --no-cache (the full forward pass every epoch) or set "
            "model.freeze = 'paper'")


def default_cache_dir(cache_dir: str, dataset_root: Path) -> Path:
    """train.cache_dir when set, else .inspector-cache inside the dataset folder."""
    return Path(cache_dir) if cache_dir else Path(dataset_root) / CACHE_FOLDER


def _backbone_tensors(net: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers of everything that feeds embed(): all but standardize, fc and head."""
    trainable = {id(t) for m in (net.standardize, net.fc, net.head) for t in (*m.parameters(), *m.buffers())}
    named = list(net.named_parameters()) + list(net.named_buffers())
    return sorted(((n, t) for n, t in named if id(t) not in trainable), key=lambda item: item[0])


def backbone_fingerprint(net: torch.nn.Module) -> str:
    """sha256 over the frozen backbone's tensors (names, shapes, bytes); computed once per net."""
    cached = _FINGERPRINTS.get(net)
    if cached:
        return cached
    digest = hashlib.sha256()
    for name, tensor in _backbone_tensors(net):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    value = digest.hexdigest()
    _FINGERPRINTS[net] = value
    return value


def feature_key(content_sha256: str, method: str, window: tuple[int, int] | None, flip: str,
                input_size: tuple[int, int], backbone_sha256: str,
                clahe: tuple[float, int] | None = None) -> str:
    """sha256 of everything that changes the pooled features; nothing else."""
    if flip not in FLIPS:
        raise CacheError(f"unknown flip {flip!r}; one of {', '.join(FLIPS)}")
    fields = {
        "image": content_sha256,
        "method": method,
        "window": list(window) if method in WINDOWED_METHODS and window is not None else None,
        "clahe": list(clahe) if method == "clahe" and clahe is not None else None,
        "flip": flip,
        "input_size": list(input_size),
        "backbone": backbone_sha256,
        "layout": LAYOUT,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class FeatureStore:
    """One float32 .npy per key under root/ab/<key>.npy; writes are temp file + os.replace."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The stored feature, or None when absent or unreadable (it is then recomputed)."""
        path = self.path(key)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return arr if arr.shape == (FULL_DIM,) and arr.dtype == np.float32 else None

    def save(self, key: str, feature: np.ndarray) -> None:
        path = self.path(key)
        try:
            buf = io.BytesIO()
            np.save(buf, np.asarray(feature, dtype=np.float32).reshape(FULL_DIM))
            write_atomic(path, buf.getvalue(), durable=False)  # a lost entry is recomputed
        except OSError as exc:
            raise CacheError(f"cannot write the embedding cache at {self.root}: {exc.strerror}; "
                             "free disk space or set train.cache_dir to a writable folder") from exc


@dataclass
class EmbedStats:
    """Backbone passes (images through the frozen part) and cache hits, for the benchmark."""

    passes: int = 0
    hits: int = 0
    backbone_seconds: float = 0.0  # wall time inside backbone passes (the rest is overhead)


@dataclass(frozen=True)
class EmbedItem:
    """One feature wanted: image `index` (for the loader) under `flip`, stored at `key`."""

    key: str
    index: int
    flip: str


def apply_flip(x: torch.Tensor, flip: str) -> torch.Tensor:
    """Flip an (N, C, H, W) batch: h mirrors the width, v the height."""
    dims = {"none": [], "h": [3], "v": [2], "hv": [2, 3]}[flip]
    return torch.flip(x, dims) if dims else x


def flip_batch(x: torch.Tensor, flips: Sequence[str]) -> torch.Tensor:
    """Per-sample flips of a batch (identical to flipping each sample alone)."""
    if all(f == "none" for f in flips):
        return x
    return torch.cat([apply_flip(x[i:i + 1], f) for i, f in enumerate(flips)])


def prepare_for_device(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move the net; channels_last on CUDA, where it speeds up convolutions."""
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


def embed_tensor(net: torch.nn.Module, x: torch.Tensor, device: torch.device, full: bool = False) -> torch.Tensor:
    """Backbone pass on a preprocessed batch, float32 out; autocast + channels_last on CUDA.

    full: every stage under every pooling (the cache's layout) instead of the net's own embedding.
    """
    embed = net.embed_all if full else net.embed
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16):
            return embed(x).float()
    return embed(x).float()


def show_progress() -> bool:
    """Progress bars only for a person watching a terminal."""
    return sys.stderr.isatty()


def embed_dataset(net: torch.nn.Module, items: Sequence[EmbedItem], load_img8: Callable[[int], np.ndarray],
                input_size: tuple[int, int], device: torch.device, store: FeatureStore | None,
                stats: EmbedStats, batch_size: int = 16, desc: str = "embedding", workers: int = 1) -> np.ndarray:
    """Full-layout features for `items` (len x FULL_DIM): from the store when there, else backbone passes.

    load_img8(index): the image as the network takes it (at input_size, or resized here); run on
    `workers` threads ahead of the backbone (pipeline.ordered_map), so decoding and converting the next
    images overlaps the pass on these.
    """
    out = np.zeros((len(items), FULL_DIM), dtype=np.float32)
    missing: dict[str, list[int]] = {}
    for row, item in enumerate(items):
        feature = store.load(item.key) if store is not None else None
        if feature is None:
            missing.setdefault(item.key, []).append(row)
        else:
            out[row] = feature
            stats.hits += 1
    if not missing:
        return out
    # one pass per distinct key, grouped by image so each image is loaded once
    todo = sorted({items[rows[0]] for rows in missing.values()}, key=lambda it: (it.index, FLIPS.index(it.flip)))
    was_training = net.training
    net.eval()
    imgs: dict[int, np.ndarray] = {}
    indices = list(dict.fromkeys(it.index for it in todo))
    turns = Turns.for_device(device)  # the backbone pass has every core while it runs
    images = ordered_map(load_img8, indices, workers, ahead=batch_size + 2 * workers, turns=turns)
    loaded = zip(indices, images)
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not show_progress(), leave=False)
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                imgs = {i: img for i, img in imgs.items() if i == chunk[0].index}  # keep a split image
                for it in chunk:
                    while it.index not in imgs:
                        index, img8 = next(loaded)
                        imgs[index] = img8
                x = preprocess_batch([imgs[it.index] for it in chunk], input_size)
                x = flip_batch(x, [it.flip for it in chunk])
                t0 = time.perf_counter()
                with turns.model():
                    features = embed_tensor(net, x, device, full=True).cpu().numpy()
                stats.backbone_seconds += time.perf_counter() - t0
                stats.passes += len(chunk)
                for it, feature in zip(chunk, features):
                    if store is not None:
                        store.save(it.key, feature)
                    out[missing[it.key]] = feature
                bar.update(len(chunk))
    finally:
        bar.close()
        images.close()  # stops the workers when a pass fails
        net.train(was_training)
    return out
