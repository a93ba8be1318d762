"""The settings as frozen dataclasses, one per config.toml section, and the value rules the CLI shares with the file.

Read once (configfile.load_config), passed as typed sections."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from inspector.base.errors import ConfigError

METHODS = ("naive", "global", "local", "mix", "clahe")
WINDOWED_METHODS = ("global", "mix", "clahe")  # conversions that need a window fitted on the training images
STAGES = ("layer1", "layer2", "layer3", "layer4")  # the ResNet stages whose pooled output can feed the head
POOLINGS = ("mean", "max", "std")
HEADS = ("linear", "paper")
SCORES = ("head", "map", "fusion")  # what P(abnormal) is (model.py); normalmap.py's map needs no head
MAP_STAGES = ("input", "layer1", "layer2", "layer3")  # what the normal model may be fitted on (normalmap.py)
OPTIMIZERS = ("adamw", "paper")
DEFAULTS = "(built-in defaults)"  # Config.source when no file was read
SECRET = {"secret": True}  # a field's metadata: its value is shown as *** (`inspector config show`)


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
    # a regular expression with groups `serial` (and `lot`) searched in each file's name relative to the capture
    # folder (serial.py); "" = no serials
    serial_pattern: str = ""


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
    # the value of proxy_secret_header the proxy sends: without it no user header is believed
    proxy_secret: str = field(default="", metadata=SECRET)
    proxy_secret_header: str = "X-Inspector-Proxy-Secret"
    connection_limit: int = 1000  # connections held open at once (waitress); more wait in the listen backlog
    channel_timeout: int = 30  # seconds a connection may stay silent before it is closed
    max_request_bytes: int = 1_048_576  # a request body past this is refused (413) before it is read
    # the bearer token Prometheus sends for /metrics; "" = loopback clients only
    metrics_token: str = field(default="", metadata=SECRET)


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0  # the daemon's Prometheus metrics port; 0 = not served
    bind: str = "127.0.0.1"  # the address it listens on; another only on a network the plant's Prometheus alone reaches


@dataclass(frozen=True)
class AlertsConfig:
    """`inspector status --check`'s thresholds: the same conditions as deploy/prometheus/inspector-rules.yml. The
    abnormal-rate numbers (baseline_days, abnormal_rate_factor, abnormal_min_verdicts) are also those of the status
    page's alarm (loop/trends.abnormal_check: today against the days before it)."""

    baseline_days: float = 7.0  # the trailing window the last hour is compared with
    abnormal_rate_factor: float = 2.0  # warning: the last hour's abnormal rate above this x the baseline's ...
    abnormal_rate_floor: float = 0.05  # ... a baseline below this counting as this (a few abnormal scans are no drift)
    abnormal_min_verdicts: int = 20  # ... with at least this many verdicts in the last hour
    rejection_factor: float = 3.0  # warning: the last hour's rejections above this x the baseline's hourly mean ...
    rejection_min: int = 10  # ... and at least this many
    waiting_files: int = 100  # warning: more files than this wait (the capture folder, or a station's queue)
    disk_warning_percent: float = 10.0  # state.dir's file system with less free space than this: warning
    disk_critical_percent: float = 5.0  # ... than this: critical


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
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    source: str = DEFAULTS

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


def bad_station_name(name: str) -> bool:
    """Not a station name: more than 64 characters, a character that does not print, or leading/trailing spaces."""
    return len(name) > 64 or not name.isprintable() or name != name.strip()


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
