"""A model's metadata, read and written without torch: the settings its weights need (ModelMeta), the
feature layout its head classifies (Embedding), and the header reader (read_meta) that `model info`, the
web and the daemon's checks use before or instead of loading the weights (model.py)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from inspector import __version__
from inspector.base.artifact import HeaderError, inspector_metadata, read_head
from inspector.base.config import HEADS, POOLINGS, SCORES, STAGES
from inspector.imaging.convert import Conversion, Window
from inspector.base.errors import ModelError

CLASS_NAMES = ("normal", "abnormal")
FREEZE_MODES = ("paper", "none")
STAGE_CHANNELS = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
DEFAULT_FEATURES = ("layer2", "layer3")
DEFAULT_POOLING = ("mean",)
PAPER_FEATURES = ("layer4",)


@dataclass(frozen=True)
class Embedding:
    """Which backbone stages are pooled, and how, into the feature vector the head classifies.

    The cache stores every stage under every pooling in one fixed layout (FULL_DIM columns), so a
    change of `features` or `pooling` picks other columns instead of recomputing the backbone.
    """

    stages: tuple[str, ...] = DEFAULT_FEATURES
    pooling: tuple[str, ...] = DEFAULT_POOLING

    def __post_init__(self) -> None:
        stages, pooling = tuple(self.stages), tuple(self.pooling)
        if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
            raise ModelError(f"model.features = {list(stages)} must name distinct stages among {', '.join(STAGES)}")
        if not pooling or any(p not in POOLINGS for p in pooling) or len(set(pooling)) != len(pooling):
            raise ModelError(f"model.pooling = {list(pooling)} must name distinct poolings among {', '.join(POOLINGS)}")
        object.__setattr__(self, "stages", tuple(s for s in STAGES if s in stages))  # network order
        object.__setattr__(self, "pooling", tuple(p for p in POOLINGS if p in pooling))

    @property
    def dim(self) -> int:
        return sum(STAGE_CHANNELS[s] for s in self.stages) * len(self.pooling)

    @property
    def last_stage(self) -> str:
        return self.stages[-1]

    def columns(self) -> list[int]:
        """This embedding's columns in the full layout (stage-major, then pooling, then channel)."""
        cols, offset = [], 0
        for stage in STAGES:
            for pool in POOLINGS:
                n = STAGE_CHANNELS[stage]
                if stage in self.stages and pool in self.pooling:
                    cols.extend(range(offset, offset + n))
                offset += n
        return cols


FULL_EMBEDDING = Embedding(STAGES, POOLINGS)
FULL_DIM = FULL_EMBEDDING.dim


def _as_pair(value: object, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, Window):
        value = value.as_tuple()
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"model {name} must be two whole numbers, got {value!r}") from None
    return a, b


def _jsonable(value: object) -> object:
    """numpy scalars and arrays (and paths) that training puts into metrics."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to score with the weights: the conversion, input size, threshold and provenance."""

    method: str
    window: tuple[int, int] | None
    input_size: tuple[int, int]
    class_names: tuple[str, ...] = CLASS_NAMES
    threshold: float = 0.5
    threshold_source: str = "default 0.5"
    freeze: str = "paper"
    weights: str = "none"
    # what the head classifies; a file without these fields holds the published network
    features: tuple[str, ...] = PAPER_FEATURES
    pooling: tuple[str, ...] = ("mean",)
    head: str = "paper"
    trained: bool = False
    train_fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)  # {"blur_min": float|None, "clipped_fraction": float|None}
    clahe: dict = field(default_factory=lambda: {"clip_limit": 2.0, "tile_grid": 8})
    # the normal model (normalmap.py): {"stages": [...], "calibration": {...}}; {} in a file written before it
    normal: dict = field(default_factory=dict)
    # what P(abnormal) is: "head" (the classifier), "map" (the normal model's score), "fusion" (their mean)
    score: str = "head"
    version: str = __version__
    created_at: str = ""
    tensors_sha256: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "window", _as_pair(self.window, "window"))
        set_(self, "input_size", _as_pair(self.input_size, "input_size"))
        set_(self, "class_names", tuple(self.class_names))
        set_(self, "features", tuple(self.features))
        set_(self, "pooling", tuple(self.pooling))
        if self.head not in HEADS:
            raise ModelError(f"model head {self.head!r} is unknown; use one of {', '.join(HEADS)}")
        Embedding(self.features, self.pooling)  # raises on an unknown stage or pooling
        _ = self.conversion  # raises on an unknown method, a missing or empty window, bad CLAHE settings
        if min(self.input_size) <= 0:
            raise ModelError(f"model input_size {list(self.input_size)} must be positive")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ModelError(f"model threshold {self.threshold} must be between 0 and 1")
        if self.freeze not in FREEZE_MODES:
            raise ModelError(f"model freeze {self.freeze!r} is unknown; use 'paper' or 'none'")
        if self.score not in SCORES:
            raise ModelError(f"model score {self.score!r} is unknown; use one of {', '.join(SCORES)}")
        if self.score != "head" and not self.normal:
            raise ModelError(f"model score {self.score!r} needs a normal model, and this file has none; retrain it")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["window"] = list(self.window) if self.window else None
        data["input_size"] = list(self.input_size)
        data["class_names"] = list(self.class_names)
        data["features"] = list(self.features)
        data["pooling"] = list(self.pooling)
        return json.dumps(data, sort_keys=True, default=_jsonable)

    @classmethod
    def from_json(cls, text: str, source: str = "model file") -> "ModelMeta":
        """Unknown (newer) fields are ignored; missing required ones are an error."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source} has unreadable metadata ({exc}); retrain or restore it") from exc
        if not isinstance(data, dict):
            raise ModelError(f"{source} has metadata that is not a JSON object; retrain or restore it")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        missing = [n for n in required if n not in data]
        if missing:
            raise ModelError(f"{source} metadata lacks {', '.join(missing)}; it was not written by inspector")
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def embedding(self) -> Embedding:
        return Embedding(self.features, self.pooling)

    @property
    def conversion(self) -> Conversion:
        """How this model's images are converted (convert.Conversion.from_meta of its fields)."""
        return Conversion.from_meta({"method": self.method, "window": self.window, "clahe": self.clahe})


def damaged_file(path: Path | str, detail: str) -> ModelError:
    """The error for a model file that fails a check of its header or tensors."""
    return ModelError(f"model file {path} is damaged or was modified after it was written ({detail}); "
                      f"retrain or restore it")


def parse_header(path: Path, head: bytes, size: int) -> ModelMeta:
    """The ModelMeta of a header artifact.read_head read (load_model hands in its own first bytes)."""
    try:
        text = inspector_metadata(head, size)
    except HeaderError as exc:
        raise damaged_file(path, str(exc)) from None
    if text is None:
        raise ModelError(f"model file {path} is a safetensors file without inspector metadata; "
                         f"write models with `inspector train` or `inspector model init`")
    return ModelMeta.from_json(text, source=f"model file {path}")


def missing_file(path: Path) -> ModelError:
    return ModelError(f"model file {path} does not exist; train one with `inspector train` "
                      f"or write an untrained one with `inspector model init`")


def read_meta(path: str | os.PathLike) -> ModelMeta:
    """Only the header: the settings of a model without loading its 90 MB of weights."""
    path = Path(path)
    try:
        head, size = read_head(path)
    except FileNotFoundError:
        raise missing_file(path) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    return parse_header(path, head, size)

