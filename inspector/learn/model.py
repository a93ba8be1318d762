"""The ResNet-34 detector of the paper and its artifact: safetensors weights plus the settings they need
(modelmeta.py: ModelMeta, the feature layout and the header reader, all torch-free)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import nn

from inspector import __version__
from inspector.base.artifact import MAX_HEADER_BYTES, META_KEY, head_length
from inspector.base.config import HEADS, POOLINGS, STAGES
from inspector.imaging.convert import Window
from inspector.base.durable import atomic_target
from inspector.base.errors import ModelError
from inspector.imaging.modelmeta import (FREEZE_MODES, PAPER_FEATURES, Embedding, ModelMeta, damaged_file, missing_file,
                                 parse_header)
from inspector.learn.normalmap import NormalModel, backbone_stages
from inspector.imaging.prepare import resize_to

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGENET_FILE = "resnet34-b627a593.pth"


def pool_map(acts: torch.Tensor, pooling: Sequence[str]) -> torch.Tensor:
    """(N, C, h, w) activations -> (N, C * len(pooling)) in float32, one block per pooling."""
    acts = acts.float()
    out = []
    for pool in pooling:
        if pool == "mean":
            out.append(acts.mean(dim=(2, 3)))
        elif pool == "max":
            out.append(acts.amax(dim=(2, 3)))
        else:  # std: how uneven the response is, which a local flaw raises and a level shift does not
            out.append(acts.std(dim=(2, 3), correction=0))
    return torch.cat(out, dim=1)


class Standardize(nn.Module):
    """Per-feature (x - mean) / std with statistics fitted on training features; buffers, so they are saved.

    A random backbone in eval mode has BatchNorm at its initial statistics (an identity), and its pooled
    features are nearly one vector with large offsets: the head only sees the differences once they are
    centred and scaled. A feature constant over the training set gets scale 0: it carries nothing.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        f = features.detach().double()
        std = f.std(dim=0, correction=0)
        tiny = 1e-6 * (f.abs().mean(dim=0) + 1e-12)
        self.mean.copy_(f.mean(dim=0).to(self.mean))
        self.scale.copy_(torch.where(std > tiny, 1.0 / std.clamp_min(1e-30), torch.zeros_like(std)).to(self.scale))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) * self.scale


class ElectrodeNet(nn.Module):
    """A ResNet-34 backbone, pooled stage features, standardization and a head.

    head "linear" (default): the pooled features of `embedding.stages`, standardized, then one linear
    layer to (normal, abnormal). head "paper": the published network, layer4 pooled, the ResNet's own fc
    (512 -> 1000) then 1000 -> 512 -> 256 -> 2, unstandardized.
    """

    def __init__(self, resnet: nn.Module | None = None, freeze: str = "paper",
                 embedding: Embedding | None = None, head: str = "linear"):
        super().__init__()
        if freeze not in FREEZE_MODES:
            raise ModelError(f"model.freeze = {freeze!r} is unknown; use 'paper' (backbone frozen) or 'none'")
        if head not in HEADS:
            raise ModelError(f"model.head = {head!r} is unknown; use one of {', '.join(HEADS)}")
        embedding = embedding or (Embedding(PAPER_FEATURES, ("mean",)) if head == "paper" else Embedding())
        if head == "paper" and embedding != Embedding(PAPER_FEATURES, ("mean",)):
            raise ModelError("model.head = 'paper' is the published network on layer4's mean-pooled 512 features; "
                             "set model.features = [\"layer4\"] and model.pooling = [\"mean\"], or use head 'linear'")
        resnet = resnet if resnet is not None else torchvision.models.resnet34(weights=None)
        fc = resnet.fc
        resnet.fc = nn.Identity()
        self.backbone = resnet
        self.embedding = embedding
        self.head_kind = head
        self.standardize = Standardize(embedding.dim)
        if head == "paper":
            self.fc = fc  # the ImageNet classifier 512 -> 1000, trained on as the paper does
            self.head = nn.Sequential(nn.Linear(1000, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                                      nn.Linear(256, 2))
        else:
            self.fc = nn.Identity()
            self.head = nn.Linear(embedding.dim, 2)
        self.freeze = freeze
        self.normal: NormalModel | None = None  # the model of a normal electrode (normalmap.py), once fitted
        self.apply_freeze(freeze)

    def apply_freeze(self, freeze: str) -> None:
        """Under 'paper' only fc and the head learn; the backbone's BN statistics stay fixed too."""
        self.freeze = freeze
        for p in self.backbone.parameters():
            p.requires_grad = freeze == "none"
        for p in list(self.fc.parameters()) + list(self.head.parameters()):
            p.requires_grad = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "ElectrodeNet":
        """A frozen backbone stays in eval mode so embed() is a pure function of the input."""
        super().train(mode)
        if self.freeze == "paper":
            self.backbone.train(False)
        return self

    def stage_maps(self, x: torch.Tensor, stages: Sequence[str]) -> dict[str, torch.Tensor]:
        """Activations of the named stages; the backbone runs only as deep as the last one needs."""
        b = self.backbone
        h = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        last = max(STAGES.index(s) for s in stages)
        out = {}
        for stage in STAGES[:last + 1]:
            h = getattr(b, stage)(h)
            if stage in stages:
                out[stage] = h
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, embedding.dim) raw pooled features: the cacheable frozen part."""
        maps = self.stage_maps(x, self.embedding.stages)
        return torch.cat([pool_map(maps[s], self.embedding.pooling) for s in self.embedding.stages], dim=1)

    def embed_all(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, FULL_DIM): every stage under every pooling, the layout the cache keeps."""
        maps = self.stage_maps(x, STAGES)
        return torch.cat([pool_map(maps[s], POOLINGS) for s in STAGES], dim=1)

    def select(self, full: torch.Tensor) -> torch.Tensor:
        """This net's columns of full-layout features."""
        return full[:, self.embedding.columns()]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(N, embedding.dim) raw features -> (N, 2) logits (normal, abnormal)."""
        return self.head(self.fc(self.standardize(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))

    def scored(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, with a normal model, the anomaly map (N, h, w) from the same pass: the backbone runs
        once, as deep as the head or the map needs, and no gradient is taken."""
        if self.normal is None:
            return self(x), None
        wanted = tuple(dict.fromkeys(self.embedding.stages + backbone_stages(self.normal.stages)))
        maps = self.stage_maps(x, wanted)
        features = torch.cat([pool_map(maps[s], self.embedding.pooling) for s in self.embedding.stages], dim=1)
        return self.classify(features), self.normal(x, maps)


def _load_imagenet_state() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights from the hub cache, else downloaded into it."""
    weights = torchvision.models.ResNet34_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        if cached.is_file():
            return torch.load(cached, weights_only=True, map_location="cpu")
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, map_location="cpu", check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"model.weights = 'imagenet' needs a download of torchvision's ResNet-34 weights, which failed ({exc}); "
            f"on an offline machine download {IMAGENET_FILE} elsewhere and set model.weights to its local path"
        ) from exc


def _load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A plain torchvision resnet34 state_dict saved with torch.save (never unpickled beyond tensors)."""
    if not Path(path).is_file():
        raise ModelError(f"model.weights file {path} does not exist; give a resnet34 .pth file, 'imagenet' or 'none'")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... on a non-checkpoint
        raise ModelError(f"model.weights file {path} is not a torch state_dict ({type(exc).__name__}: {exc}); "
                         f"expected a torchvision resnet34 state_dict saved with torch.save") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.weights file {path} does not hold a plain state_dict of tensors; "
                         f"expected a torchvision resnet34 state_dict (keys like conv1.weight, fc.weight)")
    return state


def build_detector(weights: str = "none", freeze: str = "paper", embedding: Embedding | None = None,
                   head: str = "linear") -> ElectrodeNet:
    """Backbone weights 'imagenet', 'none' (random, seeded by the caller) or a local resnet34 .pth."""
    resnet = torchvision.models.resnet34(weights=None)
    if weights != "none":
        state = _load_imagenet_state() if weights == "imagenet" else _load_weights_file(weights)
        try:
            resnet.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ModelError(f"model.weights {weights} does not fit a torchvision resnet34 ({first}); "
                             f"expected keys like conv1.weight, layer1.0.conv1.weight, fc.weight") from exc
    return ElectrodeNet(resnet, freeze=freeze, embedding=embedding, head=head)


@dataclass
class LoadedModel:
    net: ElectrodeNet
    meta: ModelMeta
    sha256: str


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Digest of names, dtypes, shapes and bytes, independent of file layout and metadata."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def artifact_sha256(tensors: dict[str, torch.Tensor], meta: ModelMeta) -> str:
    """Digest of the tensors and every other metadata field, so an edited threshold or window is caught too."""
    unsigned = dataclasses.replace(meta, tensors_sha256="").to_json()
    return hashlib.sha256((tensors_sha256(tensors) + unsigned).encode()).hexdigest()


def save_model(path: str | os.PathLike, net: ElectrodeNet, meta: ModelMeta) -> str:
    """Write atomically (temp file, fsync, rename) so a reader never sees half a model; returns the file sha256."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    meta = dataclasses.replace(meta, features=net.embedding.stages, pooling=net.embedding.pooling,
                               head=net.head_kind)  # the file describes the net it holds, whatever the caller said
    meta = dataclasses.replace(meta, version=__version__,
                               created_at=meta.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta = dataclasses.replace(meta, tensors_sha256=artifact_sha256(tensors, meta))
    try:
        with atomic_target(path) as tmp:
            save_file(tensors, str(tmp), metadata={META_KEY: meta.to_json()})
            with open(tmp, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256")
    except OSError as exc:
        raise ModelError(f"cannot write model file {path}: {exc.strerror or exc}; check the folder and free space") from exc
    return digest.hexdigest()



def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Read once, check the tensors against the stored digest, build the net; never unpickles."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise missing_file(path) from None
    except IsADirectoryError:
        raise ModelError(f"model path {path} is a folder; give the .safetensors file") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    meta = parse_header(path, data[:8 + min(head_length(data), MAX_HEADER_BYTES + 1)], len(data))
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # SafetensorError on truncation or a bad layout
        raise damaged_file(path, f"cannot decode the tensors: {exc}") from exc
    if artifact_sha256(tensors, meta) != meta.tensors_sha256:
        raise damaged_file(path, "checksum mismatch")
    net = ElectrodeNet(torchvision.models.resnet34(weights=None), freeze=meta.freeze, embedding=meta.embedding,
                       head=meta.head)
    net.normal = NormalModel.from_state(tensors)  # None in a file written before the normal model
    if (net.normal is None) != (not meta.normal):
        raise damaged_file(path, "the normal model's tensors and its metadata disagree")
    if meta.head == "paper" and "standardize.mean" not in tensors:  # written before standardization existed
        tensors = {**tensors, **{f"standardize.{k}": v for k, v in net.standardize.state_dict().items()}}
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"model file {path} does not hold ElectrodeNet weights ({str(exc).splitlines()[0]}); "
                         f"it was written by another program or an incompatible inspector version") from exc
    net.to(resolve_device(device) if isinstance(device, str) else device).eval()
    return LoadedModel(net=net, meta=meta, sha256=hashlib.sha256(data).hexdigest())


def preprocess_batch(imgs8: Sequence[np.ndarray], input_size: Sequence[int]) -> torch.Tensor:
    """Resize to the network input (area when shrinking), scale to [0, 1], ImageNet mean/std."""
    h, w = (int(v) for v in input_size)
    out = np.empty((len(imgs8), h, w, 3), dtype=np.uint8)
    for i, img8 in enumerate(imgs8):
        if img8.dtype != np.uint8 or img8.ndim != 3 or img8.shape[2] != 3:
            raise ModelError(f"the detector takes HxWx3 uint8 images, got {img8.dtype} of shape {img8.shape}")
        out[i] = resize_to(img8, (h, w))
    return normalize(torch.from_numpy(out))


def normalize(batch8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 on any device -> (N, 3, H, W) float32 scaled to [0, 1], ImageNet mean/std."""
    return normalize_levels(batch8.permute(0, 3, 1, 2).float())


def normalize_levels(levels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float32 grey levels 0-255 (devprep.py's) -> normalize()'s result; overwrites `levels`."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=levels.device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=levels.device).view(1, 3, 1, 1)
    return levels.div_(255.0).sub_(mean).div_(std).contiguous()


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(f"model.device = {name!r} but this machine has no usable CUDA device; "
                             f"set model.device = \"cpu\" or \"auto\"")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ModelError(f"model.device = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"model.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    raise ModelError(f"model.device = {name!r} is not a device; use auto, cpu, cuda or cuda:N")


def init_model(out: str | os.PathLike, method: str, window: Window | tuple[int, int] | None,
               input_size: Sequence[int], weights: str = "none", freeze: str = "paper", seed: int = 0,
               embedding: Embedding | None = None, head: str = "linear") -> str:
    """An UNTRAINED artifact, so the station and the daemon can be set up before the first training."""
    torch.manual_seed(seed)
    net = build_detector(weights, freeze, embedding, head)
    meta = ModelMeta(method=method, window=window, input_size=tuple(input_size), weights=weights,
                     freeze=freeze, features=net.embedding.stages, pooling=net.embedding.pooling, head=head,
                     trained=False, threshold=0.5, threshold_source="default 0.5")
    return save_model(out, net, meta)
