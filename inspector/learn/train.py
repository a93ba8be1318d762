"""Training as plain functions, on cached features or full forward passes.

Both paths draw the same flips and batch order from one seeded generator per fit, so the
cached path (the head trained on stored pooled features) and the reference path (the whole
network every epoch) give the same model within float tolerance. Before the first step the
standardizer is fitted on the unflipped training features (mean and std per feature).

train.optimizer "adamw" (default): AdamW with a cosine schedule counted in optimizer steps, at
least train.min_steps of them however small the training set. "paper": the published schedule;
the paper names no optimizer, and its lr 0.001 with a step decay follows the PyTorch transfer-
learning tutorial, whose optimizer is SGD with momentum 0.9.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from inspector.base.config import Config
from inspector.data.dataset import Dataset
from inspector.base.errors import DatasetError, InspectorError
from inspector.learn.features import (FLIPS, EmbedItem, EmbedStats, FeatureStore, backbone_fingerprint,
                                embed_dataset, embed_tensor, feature_key, flip_batch, show_progress)
from inspector.learn.model import preprocess_batch
from inspector.base.pipeline import ordered_map
from inspector.data.views import ImageSource, View

MOMENTUM = 0.9
NO_BETTER_THAN_PRIOR = 0.95  # a final loss above this share of the prior's loss learned (almost) nothing


def set_threads(threads: int) -> int:
    """torch on train.threads CPU threads, or on every core when 0."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


@dataclass(frozen=True)
class Plan:
    """Per epoch: the order of training samples and each sample's flip index into FLIPS."""

    orders: np.ndarray  # (epochs, n) permutations
    flips: np.ndarray  # (epochs, n) in 0..3, = h + 2 * v


def draw_plan(seed: int, epochs: int, n: int) -> Plan:
    """Random order and h/v flips at p = 0.5 each, from one seeded generator."""
    rng = np.random.default_rng(seed)
    orders, flips = [], []
    for _ in range(epochs):
        orders.append(rng.permutation(n))
        h = rng.random(n) < 0.5
        v = rng.random(n) < 0.5
        flips.append(h.astype(np.int64) + 2 * v.astype(np.int64))
    return Plan(np.array(orders).reshape(epochs, n), np.array(flips).reshape(epochs, n))


def class_weight_tensor(y: np.ndarray, mode: str) -> torch.Tensor | None:
    """'balanced': weight n / (2 n_c), inverse to class frequency; 'none': plain cross-entropy."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=2).astype(np.float64)
    return torch.tensor(len(y) / (2 * counts), dtype=torch.float32)


def check_two_classes(y: np.ndarray, what: str) -> None:
    """A classifier cannot learn a class it never sees."""
    counts = np.bincount(y, minlength=2)
    for label, n in zip(("normal", "abnormal"), counts):
        if n == 0:
            raise DatasetError(f"{what} holds no {label} electrode; training needs both classes "
                               "(add labeled images of that class)")


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def set_train_mode(net: nn.Module, freeze: str) -> None:
    """Frozen backbone stays in eval mode (fixed BatchNorm statistics), so its features are cacheable."""
    if freeze == "paper":
        net.eval()
        net.fc.train()
        net.head.train()
        net.standardize.eval()
    else:
        net.train()


def train_one_epoch(net: nn.Module, forward: Callable[[np.ndarray, np.ndarray], torch.Tensor], y: torch.Tensor,
                    order: np.ndarray, flips: np.ndarray, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    batch_size: int, scheduler=None) -> float:
    """One pass over the training set in `order`; forward(indices, flip indices) -> logits."""
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        logits = forward(idx, flips[idx])
        loss = loss_fn(logits, y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@dataclass
class FitResult:
    """A trained net's history: loss per epoch, optimizer steps, and the loss of the class prior."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    prior_loss: float = float("nan")
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    @property
    def learned(self) -> bool:
        """False when training diverged or ended no better than always predicting the class prior."""
        return math.isfinite(self.final_loss) and self.final_loss < NO_BETTER_THAN_PRIOR * self.prior_loss

    def summary(self) -> str:
        if not math.isfinite(self.final_loss):
            return f"{self.steps} steps; the loss diverged to {self.final_loss} (try a lower learning rate)"
        return (f"{self.steps} steps, final training loss {self.final_loss:.4f} against {self.prior_loss:.4f} "
                f"for the class prior alone")


def prior_loss(y: np.ndarray, weight: torch.Tensor | None) -> float:
    """Cross-entropy of the best constant prediction: what a head that learned nothing reaches."""
    counts = np.bincount(y, minlength=2).astype(np.float64)
    mass = counts * (weight.cpu().numpy().astype(np.float64) if weight is not None else 1.0)
    q = mass / mass.sum()
    q = q[q > 0]
    return float(-(q * np.log(q)).sum())


def schedule_epochs(cfg: Config, steps_per_epoch: int) -> int:
    """Epochs to run: train.epochs, and for adamw at least train.min_steps optimizer steps."""
    tc = cfg.train
    if tc.optimizer == "paper":
        return tc.epochs
    return max(tc.epochs, -(-tc.min_steps // steps_per_epoch))


def make_optimizer(net: nn.Module, cfg: Config, total_steps: int, steps_per_epoch: int):
    """The optimizer and a scheduler stepped after every optimizer step."""
    tc = cfg.train
    params = trainable_parameters(net)
    if tc.optimizer == "paper":
        optimizer = torch.optim.SGD(params, lr=tc.learning_rate, momentum=MOMENTUM)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=tc.lr_step_epochs * steps_per_epoch,
                                                    gamma=tc.lr_gamma)
        return optimizer, scheduler
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return optimizer, scheduler


def optimizer_label(cfg: Config) -> str:
    tc = cfg.train
    if tc.optimizer == "paper":
        return f"SGD momentum {MOMENTUM}, lr {tc.learning_rate:g} x{tc.lr_gamma:g} every {tc.lr_step_epochs} epochs"
    return (f"AdamW lr {tc.learning_rate:g} weight decay {tc.weight_decay:g}, cosine over >= {tc.min_steps} steps")


def fit(net: nn.Module, source: ImageSource, train_idx: np.ndarray, view: View, cfg: Config, device: torch.device,
        store: FeatureStore | None, use_cache: bool, stats: EmbedStats, desc: str = "train") -> FitResult:
    """Fit the standardizer, then train the head (or all layers with freeze none) with train.optimizer."""
    tc, mc = cfg.train, cfg.model
    train_idx = np.asarray(train_idx, dtype=np.int64)
    y_np = source.y[train_idx]
    check_two_classes(y_np, f"the training set ({len(train_idx)} images)")
    y = torch.as_tensor(y_np, device=device)
    steps_per_epoch = -(-len(train_idx) // tc.batch_size)
    epochs = schedule_epochs(cfg, steps_per_epoch)
    plan = draw_plan(tc.seed, epochs, len(train_idx))
    weight = class_weight_tensor(y_np, tc.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=weight.to(device) if weight is not None else None)
    optimizer, scheduler = make_optimizer(net, cfg, epochs * steps_per_epoch, steps_per_epoch)
    started = time.perf_counter()

    if use_cache:
        forward, plain = _cached_forward(net, source, train_idx, view, plan, cfg, device, store, stats)
    else:
        forward, plain = _full_forward(net, source, train_idx, view, cfg, device, stats)
    if net.head_kind != "paper":  # the published network is unstandardized
        net.standardize.fit(plain)
    result = FitResult(prior_loss=prior_loss(y_np, weight))
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not show_progress(), leave=False)
    for epoch in bar:
        set_train_mode(net, mc.freeze)
        loss = train_one_epoch(net, forward, y, plan.orders[epoch], plan.flips[epoch], optimizer, loss_fn,
                               tc.batch_size, scheduler)
        result.losses.append(loss)
        result.steps += steps_per_epoch
        bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    net.eval()
    result.seconds = time.perf_counter() - started
    return result


def _cached_forward(net, source, train_idx, view, plan, cfg, device, store, stats):
    """Embed every (image, flip) the plan draws once (store first), then classify from memory.

    Returns forward(indices, flips) and the unflipped training features the standardizer is fitted on.
    """
    drawn = {(int(j), int(f)) for f_row in plan.flips for j, f in enumerate(f_row)}
    needed = sorted(drawn | {(j, 0) for j in range(len(train_idx))})
    source.hash_all(train_idx)
    items = [_item(source, int(train_idx[j]), view, FLIPS[f], cfg, net) for j, f in needed]
    full = embed_dataset(net, items, network_input(source, view, cfg), cfg.model.input_size, device,
                         store, stats, batch_size=cfg.train.batch_size, desc="embedding", workers=source.workers)
    feats = net.select(torch.from_numpy(full))
    table = torch.zeros((len(FLIPS), len(train_idx), feats.shape[1]), dtype=torch.float32)
    for (j, f), feature in zip(needed, feats):
        table[f, j] = feature
    table = table.to(device)

    def forward(idx: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        f = table[torch.as_tensor(flips, device=device), torch.as_tensor(idx, device=device)]
        return net.classify(f)

    return forward, table[0]


def _full_forward(net, source, train_idx, view, cfg, device, stats):
    """The paper-faithful loop: every batch goes through the whole network, flipped as drawn."""
    imgs8 = list(ordered_map(network_input(source, view, cfg), [int(i) for i in train_idx], source.workers))
    frozen = cfg.model.freeze == "paper"
    with torch.no_grad():  # the standardizer's statistics: the unflipped images, before any step
        was_training = net.training
        net.eval()
        plain = torch.cat([embed_tensor(net, preprocess_batch(imgs8[k:k + cfg.train.batch_size],
                                                              cfg.model.input_size), device)
                           for k in range(0, len(imgs8), cfg.train.batch_size)])
        net.train(was_training)
        stats.passes += len(imgs8)

    def forward(idx: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        x = preprocess_batch([imgs8[j] for j in idx], cfg.model.input_size)
        x = flip_batch(x, [FLIPS[f] for f in flips])
        stats.passes += len(idx)
        t0 = time.perf_counter()
        if frozen:
            with torch.no_grad():
                f = embed_tensor(net, x, device)
        else:
            f = embed_tensor(net, x, device)
        stats.backbone_seconds += time.perf_counter() - t0
        return net.classify(f)

    return forward, plain


def network_input(source: ImageSource, view: View, cfg: Config) -> Callable[[int], np.ndarray]:
    """Image i as the network takes it: read, converted and resized (run by the pipeline's workers)."""
    return lambda i: view.network_input(source.read16(i), cfg.model.input_size)


def _item(source: ImageSource, i: int, view: View, flip: str, cfg: Config, net: nn.Module) -> EmbedItem:
    key = feature_key(source.sha256(i), view.method, view.window, flip, cfg.model.input_size,
                      backbone_fingerprint(net), view.clahe)
    return EmbedItem(key, i, flip)


def predict_proba(net: nn.Module, source: ImageSource, idx: Sequence[int], view: View, cfg: Config,
                  device: torch.device, store: FeatureStore | None, stats: EmbedStats) -> np.ndarray:
    """P(abnormal) per image, unflipped; through the cache when a store is given."""
    idx = [int(i) for i in idx]
    if not idx:
        return np.zeros(0)
    source.hash_all(idx)
    items = [_item(source, i, view, "none", cfg, net) for i in idx]
    full = embed_dataset(net, items, network_input(source, view, cfg), cfg.model.input_size, device,
                         store, stats, batch_size=cfg.train.batch_size, desc="scoring", workers=source.workers)
    net.eval()
    with torch.inference_mode():
        logits = net.classify(net.select(torch.from_numpy(full)).to(device))
        return torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy().astype(np.float64)


def resolve_cache(cfg: Config, dataset: Dataset, use_cache: bool, warn: Callable[[str], None] | None = None
                  ) -> tuple[FeatureStore | None, bool]:
    """The store to use, and whether to; freeze none cannot use it: say so and run the full loop."""
    from inspector.learn.features import CacheError, default_cache_dir, require_frozen

    if not use_cache:
        return None, False
    try:
        require_frozen(cfg.model.freeze)
    except CacheError as exc:
        (warn or (lambda m: print(m, file=sys.stderr)))(f"note: {exc}; running the full forward loop instead")
        return None, False
    return FeatureStore(default_cache_dir(cfg.train.cache_dir, dataset.root)), True


def build_net(cfg: Config) -> nn.Module:
    """A fresh detector, seeded so every fold and every run starts from the same weights."""
    from inspector.learn.model import build_detector

    from inspector.learn.model import Embedding

    mc = cfg.model
    torch.manual_seed(cfg.train.seed)
    embedding = Embedding(mc.features, mc.pooling) if mc.head != "paper" else None
    return build_detector(weights=mc.weights, freeze=mc.freeze, embedding=embedding, head=mc.head)


def build_net_on(cfg: Config, device: torch.device) -> nn.Module:
    """build_net on the device, channels_last on CUDA."""
    from inspector.learn.features import prepare_for_device

    return prepare_for_device(build_net(cfg), device)


def require_method(method: str) -> None:
    from inspector.base.config import METHODS

    if method not in METHODS:
        raise InspectorError(f"unknown conversion method {method!r}; use one of {', '.join(METHODS)}")
