"""config.toml -> frozen dataclasses, one per section; read once, passed as typed sections."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from inspector.errors import ConfigError

ENV_VAR = "INSPECTOR_CONFIG"
DEFAULT_NAME = "config.toml"
METHODS = ("naive", "global", "local", "mix", "clahe")
WINDOWED_METHODS = ("global", "mix", "clahe")  # conversions that need a window fitted on the training images
STAGES = ("layer1", "layer2", "layer3", "layer4")  # the ResNet stages whose pooled output can feed the head
POOLINGS = ("mean", "max", "std")
HEADS = ("linear", "paper")
SCORES = ("head", "map", "fusion")  # what P(abnormal) is (model.py); normalmap.py's map needs no head
MAP_STAGES = ("input", "layer1", "layer2", "layer3")  # what the normal model may be fitted on (normalmap.py)
OPTIMIZERS = ("adamw", "paper")


@dataclass(frozen=True)
class ImagingConfig:
    max_height: int = 10_000
    max_width: int = 10_000


@dataclass(frozen=True)
class ConvertConfig:
    method: str = "local"
    low_percentile: float = 0.01
    high_percentile: float = 99.99
    round_window: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8


@dataclass(frozen=True)
class ModelConfig:
    path: Path = Path("models/detector.safetensors")
    weights: str = "imagenet"
    freeze: str = "paper"
    device: str = "auto"
    input_size: tuple[int, int] = (2000, 1000)
    features: tuple[str, ...] = ("layer2", "layer3")
    pooling: tuple[str, ...] = ("mean",)
    head: str = "linear"
    score: str = "fusion"  # chosen by figures: bench/LEARNING.md, "Where the maps point"
    map_stages: tuple[str, ...] = ("input",)


@dataclass(frozen=True)
class InferConfig:
    batch_size: int = 4
    threads: int = 0  # CPU threads of the daemon's forward passes; 0: every core
    workers: int = 0  # threads that hash, read, gate and convert files ahead of the model; 0: one per core (<= 8)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    optimizer: str = "adamw"
    learning_rate: float = 0.001
    weight_decay: float = 0.05
    min_steps: int = 500
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    batch_size: int = 16
    class_weights: str = "balanced"
    target_recall: float = 0.0
    seed: int = 0
    cache_dir: str = ""
    threads: int = 0


@dataclass(frozen=True)
class WatchConfig:
    capture_dir: Path = Path("capture")
    patterns: tuple[str, ...] = ("*.tif", "*.tiff", "*.png", "*.dcm")
    polling: bool = False
    settle_seconds: float = 2.0
    # A file read as cut short gets no outcome until it changes (judged again) or stays as it is
    # this long (then `truncated`): a writer may pause longer than settle_seconds.
    incomplete_retry_seconds: float = 300.0
    rescan_seconds: float = 60.0
    after: str = "keep"
    queue_size: int = 256


@dataclass(frozen=True)
class StationConfig:
    name: str = ""  # this station's name in the shared database; "" = the host name
    heartbeat_seconds: float = 10.0  # how often the daemon reports to the stations table and renews its claims
    claim_lease_seconds: float = 60.0  # a dead daemon's claimed files are taken over this long after its last renewal


@dataclass(frozen=True)
class StateConfig:
    dir: Path = Path("var")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///inspector.db"
    busy_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class QualityConfig:
    enabled: bool = True
    clipped_fraction: float = 0.5


@dataclass(frozen=True)
class ReviewConfig:
    bundle_rule: str = "subfolder"


@dataclass(frozen=True)
class RetrainConfig:
    base_dataset: str = ""
    methods: tuple[str, ...] = ("local",)


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"  # the review station's address; another only behind the plant's TLS proxy
    port: int = 8470
    users_file: str = ""  # "" = state.dir/web-users.json (`inspector user add` writes it)
    secret_key_file: str = ""  # "" = state.dir/web-secret.key (signs the session cookies; made at first start)
    remote_user_header: str = ""  # e.g. "X-Remote-User": the user a reverse proxy authenticated ...
    trusted_proxies: tuple[str, ...] = ()  # ... accepted only from these addresses (or networks, 10.0.0.0/24)
    session_hours: float = 12.0  # a login lasts this long (a shift)
    secure_cookies: bool = False  # true behind a TLS proxy: the session cookie travels only over https
    threads: int = 8  # requests served at once
    allowed_hosts: tuple[str, ...] = ()  # Host names the station answers to; () = localhost names and web.host's
    proxy_secret: str = ""  # the value of proxy_secret_header the proxy sends: without it no user header is believed
    proxy_secret_header: str = "X-Inspector-Proxy-Secret"
    connection_limit: int = 1000  # connections held open at once (waitress); more wait in the listen backlog
    channel_timeout: int = 30  # seconds a connection may stay silent before it is closed
    max_request_bytes: int = 1_048_576  # a request body past this is refused (413) before it is read


@dataclass(frozen=True)
class Config:
    imaging: ImagingConfig = field(default_factory=ImagingConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    state: StateConfig = field(default_factory=StateConfig)
    station: StationConfig = field(default_factory=StationConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    log: LogConfig = field(default_factory=LogConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    web: WebConfig = field(default_factory=WebConfig)
    source: str = "(built-in defaults)"

    @property
    def station_name(self) -> str:
        """station.name, or the host name when it is empty."""
        return self.station.name or socket.gethostname()

    @property
    def users_path(self) -> Path:
        """web.users_file, or state.dir/web-users.json."""
        return Path(self.web.users_file) if self.web.users_file else self.state.dir / "web-users.json"

    @property
    def secret_key_path(self) -> Path:
        """web.secret_key_file, or state.dir/web-secret.key."""
        return Path(self.web.secret_key_file) if self.web.secret_key_file else self.state.dir / "web-secret.key"

    def require_dir(self, key: str) -> Path:
        """The folder at dotted `key`, which must exist (e.g. watch.capture_dir)."""
        section, name = key.split(".")
        path = Path(getattr(getattr(self, section), name))
        if not path.is_dir():
            raise ConfigError(f"folder {path} does not exist; create it or change the key", key, self.source)
        return path


# Which keys are paths: relative ones are taken relative to the config file's folder.
_PATH_KEYS = {("watch", "capture_dir"), ("state", "dir"), ("model", "path")}
_OPTIONAL_PATH_KEYS = {("train", "cache_dir"), ("retrain", "base_dataset"), ("web", "users_file"),
                       ("web", "secret_key_file")}

_CHOICES = {
    ("convert", "method"): METHODS,
    ("model", "freeze"): ("paper", "none"),
    ("model", "head"): HEADS,
    ("model", "score"): SCORES,
    ("train", "optimizer"): OPTIMIZERS,
    ("model", "device"): None,  # checked below: auto, cpu, cuda, cuda:N
    ("train", "class_weights"): ("none", "balanced"),
    ("watch", "after"): ("keep", "move"),
    ("log", "level"): ("DEBUG", "INFO", "WARNING", "ERROR"),
}


def bad_station_name(name: str) -> bool:
    """Not a station name: more than 64 characters, a character that does not print, or leading/trailing spaces."""
    return len(name) > 64 or not name.isprintable() or name != name.strip()


def _check_value(section: str, name: str, value: object, file: str) -> None:
    key = f"{section}.{name}"
    choices = _CHOICES.get((section, name))
    if choices and value not in choices:
        raise ConfigError(f"{value!r} is not one of {', '.join(choices)}", key, file)
    if (section, name) == ("model", "device"):
        ok = value in ("auto", "cpu", "cuda") or (isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit())
        if not ok:
            raise ConfigError(f"{value!r} is not auto, cpu, cuda or cuda:N", key, file)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        positive = {"max_height", "max_width", "batch_size", "epochs", "lr_step_epochs", "queue_size", "clahe_tile_grid",
                    "learning_rate"}
        if name in positive and value <= 0:
            raise ConfigError(f"must be positive, got {value}", key, file)
        if value < 0:
            raise ConfigError(f"must not be negative, got {value}", key, file)
    if (section, name) == ("convert", "high_percentile") and not 0 < value <= 100:
        raise ConfigError(f"must be in (0, 100], got {value}", key, file)
    if name in ("target_recall", "clipped_fraction", "lr_gamma") and not 0 <= value <= 1:
        raise ConfigError(f"must be between 0 and 1, got {value}", key, file)
    if (section, name) == ("model", "input_size") and any(v <= 0 for v in value):
        raise ConfigError(f"sizes must be positive, got {list(value)}", key, file)
    if (section, name) == ("watch", "patterns") and not value:
        raise ConfigError("needs at least one pattern", key, file)
    if (section, name) == ("database", "url") and "://" not in value:
        raise ConfigError(f"{value!r} is not a database URL (e.g. sqlite:///inspector.db)", key, file)
    if (section, name) == ("station", "name") and value and bad_station_name(value):
        raise ConfigError(f"{value!r} is not a station name: at most 64 printable characters, no leading or "
                          "trailing spaces (empty: the host name)", key, file)
    if (section, name) in (("station", "heartbeat_seconds"), ("station", "claim_lease_seconds")) and value <= 0:
        raise ConfigError(f"must be positive, got {value}", key, file)
    if (section, name) == ("review", "bundle_rule") and not (value == "subfolder" or value.startswith("regex:")):
        raise ConfigError(f"{value!r} is neither 'subfolder' nor 'regex:PATTERN'", key, file)
    if section == "web":
        _check_web(name, value, key, file)
    allowed = {("model", "features"): STAGES, ("model", "pooling"): POOLINGS,
               ("model", "map_stages"): MAP_STAGES}.get((section, name))
    if allowed and (not value or any(v not in allowed for v in value) or len(set(value)) != len(value)):
        raise ConfigError(f"must be a list of distinct values among {', '.join(allowed)}, got {list(value)}", key, file)
    if (section, name) == ("retrain", "methods"):
        bad = [m for m in value if m not in METHODS]
        if bad or not value:
            raise ConfigError(f"methods must be among {', '.join(METHODS)}, got {list(value)}", key, file)


def _check_web(name: str, value: object, key: str, file: str) -> None:
    import ipaddress
    import re

    if name == "port" and not 1 <= value <= 65535:
        raise ConfigError(f"must be a TCP port, 1 to 65535, got {value}", key, file)
    if name == "host" and not str(value).strip():
        raise ConfigError("must name an address to listen on, e.g. 127.0.0.1", key, file)
    if name in ("session_hours", "threads", "connection_limit", "channel_timeout", "max_request_bytes") and value <= 0:
        raise ConfigError(f"must be positive, got {value}", key, file)
    if name == "connection_limit" and value < 10:
        raise ConfigError(f"must be at least 10 (browsers open several connections each), got {value}", key, file)
    if name == "max_request_bytes" and value < 65536:
        raise ConfigError(f"must be at least 65536 (the decision forms), got {value}", key, file)
    if name == "allowed_hosts":
        for host in value:  # type: ignore[union-attr]
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+", str(host)):
                raise ConfigError(f"{host!r} is not a host name or address (e.g. inspector.plant.example, "
                                  "10.0.0.5, *.plant.example; no port)", key, file)
    if name == "proxy_secret" and value and (len(str(value)) < 16 or not str(value).isprintable()):
        raise ConfigError("must be at least 16 printable characters (e.g. `openssl rand -hex 32`)", key, file)
    if name in ("remote_user_header", "proxy_secret_header") and value and not re.fullmatch(r"[A-Za-z0-9-]+", str(value)):
        raise ConfigError(f"{value!r} is not an HTTP header name (letters, digits and -, e.g. X-Remote-User)",
                          key, file)
    if name == "trusted_proxies":
        for address in value:  # type: ignore[union-attr]
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ConfigError(f"{address!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/24)",
                                  key, file) from None


def _coerce(section: str, name: str, hint: object, value: object, file: str) -> object:
    """Check a TOML value against the dataclass field's type; ints are accepted where floats are."""
    key = f"{section}.{name}"
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", key, file)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"must be a whole number, got {value!r}", key, file)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {value!r}", key, file)
        return float(value)
    if hint is str or hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", key, file)
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"must be a list, got {value!r}", key, file)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(section, name, args[0], v, file) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"must be a list of {len(args)} values, got {value!r}", key, file)
        return tuple(_coerce(section, name, a, v, file) for a, v in zip(args, value))
    raise AssertionError(f"unsupported config type {hint}")  # pragma: no cover


def _resolve_sqlite(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        rel = url[len(prefix):]
        return prefix + str((base / rel).resolve()) if rel else url
    return url


def find_config_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """--config PATH, else $INSPECTOR_CONFIG, else ./config.toml when present, else None (defaults)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (given with --config)")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (set in ${ENV_VAR})")
        return path
    local = Path(DEFAULT_NAME)
    return local if local.is_file() else None


def load_config(path: str | os.PathLike | None = None, *, discover: bool = True) -> Config:
    """Read and check a config file; with no file found, the built-in defaults relative to the cwd."""
    found = find_config_path(path) if discover else (Path(path) if path else None)
    if found is None:
        return _build({}, Path.cwd(), "(built-in defaults)")
    file = str(found)
    try:
        with open(found, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"is not valid TOML: {exc}", None, file) from exc
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", None, file) from exc
    return _build(data, found.resolve().parent, file)


def _build(data: dict, base: Path, file: str) -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
    built: dict[str, object] = {}
    for sname, raw in data.items():
        if sname not in sections:
            raise ConfigError(f"unknown section [{sname}] (known: {', '.join(sections)})", sname, file)
        if not isinstance(raw, dict):
            raise ConfigError("must be a [section] table", sname, file)
    for sname, sfield in sections.items():
        cls = sfield.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        raw = data.get(sname, {})
        names = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in names:
                raise ConfigError(f"unknown key (known in [{sname}]: {', '.join(sorted(names))})", f"{sname}.{key}", file)
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name in raw:
                value = _coerce(sname, f.name, hints[f.name], raw[f.name], file)
            else:
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            _check_value(sname, f.name, value, file)
            if (sname, f.name) in (("model", "features"), ("model", "pooling")):
                value = network_order(f.name, value)
            if (sname, f.name) in _PATH_KEYS:
                value = Path(value)
                value = value if value.is_absolute() else (base / value)
            elif (sname, f.name) in _OPTIONAL_PATH_KEYS and value:
                p = Path(str(value))
                value = str(p if p.is_absolute() else base / p)
            elif (sname, f.name) == ("model", "weights") and value not in ("imagenet", "none"):
                p = Path(str(value))
                value = str(p if p.is_absolute() else base / p)
            elif (sname, f.name) == ("database", "url"):
                value = _resolve_sqlite(str(value), base)
            values[f.name] = value
        built[sname] = cls(**values)
    station = built["station"]
    if station.claim_lease_seconds < 3 * station.heartbeat_seconds:  # type: ignore[attr-defined]
        raise ConfigError(f"must be at least 3 x station.heartbeat_seconds ({station.heartbeat_seconds:g} s): "  # type: ignore[attr-defined]
                          "a live daemon renews its claims every heartbeat, and a lease it cannot renew in time "
                          "lets another daemon take its files over", "station.claim_lease_seconds", file)
    web = built["web"]
    if web.remote_user_header and not web.trusted_proxies:  # type: ignore[attr-defined]
        raise ConfigError("is set, but web.trusted_proxies is empty: name the reverse proxy's address, the only "
                          "sender whose user header is believed", "web.remote_user_header", file)
    if web.remote_user_header and not web.proxy_secret:  # type: ignore[attr-defined]
        raise ConfigError("is set, but web.proxy_secret is empty: any program on a trusted proxy's host (and any web "
                          "page through DNS rebinding) could name a user; set a secret the proxy sends in "
                          f"{web.proxy_secret_header} on every request (e.g. `openssl rand -hex 32`)",  # type: ignore[attr-defined]
                          "web.remote_user_header", file)
    return Config(**built, source=file)  # type: ignore[arg-type]


def network_order(key: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """model.features or model.pooling in the order the network computes them, as the model records them."""
    return tuple(v for v in (STAGES if key == "features" else POOLINGS) if v in values)


def parse_input_size(text: str) -> tuple[int, int]:
    """'2000x1000' -> (2000, 1000), height x width."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"input size {text!r} is not HEIGHTxWIDTH, e.g. 2000x1000") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"input size {text!r} must be positive")
    return h, w
