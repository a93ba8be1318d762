"""Read config.toml into a Config: find the file, refuse an unknown section or key, check every value and the rules
between keys, resolve paths. Every problem of a file is found, not only the first (`inspector config check`)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path

from inspector.base.config import (DEFAULTS, HEADS, MAP_STAGES, METHODS, OPTIMIZERS, POOLINGS, SCORES, STAGES,
                                   Config, bad_station_name, network_order)
from inspector.base.errors import ConfigError
from inspector.base.serial import serial_pattern_problem

ENV_VAR = "INSPECTOR_CONFIG"
DEFAULT_NAME = "config.toml"
SYSTEM_CONFIG = Path("/etc/inspector/config.toml")  # where a station installs it (README), last before the defaults

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
    if (section, name) == ("convert", "low_percentile") and not 0 <= value < 100:
        raise ConfigError(f"must be in [0, 100), got {value}", key, file)
    if name in ("target_recall", "clipped_fraction", "lr_gamma") and not 0 <= value <= 1:
        raise ConfigError(f"must be between 0 and 1, got {value}", key, file)
    if (section, name) == ("model", "input_size") and any(v <= 0 for v in value):
        raise ConfigError(f"sizes must be positive, got {list(value)}", key, file)
    if (section, name) == ("watch", "patterns") and not value:
        raise ConfigError("needs at least one pattern", key, file)
    if (section, name) == ("database", "url"):
        if "://" not in value:
            raise ConfigError(f"{value!r} is not a database URL (e.g. sqlite:///inspector.db)", key, file)
        backend = value.split("://", 1)[0].split("+", 1)[0]
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(f"inspector keeps its verdicts in SQLite (sqlite:///PATH) or PostgreSQL "
                              f"(postgresql+psycopg://...), not in {backend!r}", key, file)
    if (section, name) == ("station", "name") and value and bad_station_name(value):
        raise ConfigError(f"{value!r} is not a station name: at most 64 printable characters, no leading or "
                          "trailing spaces (empty: the host name)", key, file)
    if (section, name) in (("station", "heartbeat_seconds"), ("station", "claim_lease_seconds")) and value <= 0:
        raise ConfigError(f"must be positive, got {value}", key, file)
    if (section, name) == ("station", "serial_pattern") and value:
        problem = serial_pattern_problem(str(value))
        if problem is not None:
            raise ConfigError(problem, key, file)
    if (section, name) == ("review", "bundle_rule") and not (value == "subfolder" or value.startswith("regex:")):
        raise ConfigError(f"{value!r} is neither 'subfolder' nor 'regex:PATTERN'", key, file)
    if section == "web":
        _check_web(name, value, key, file)
    if section in ("metrics", "alerts"):
        _check_monitoring(section, name, value, key, file)
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
    if name == "host":
        _check_listen_address(value, key, file)
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
    if name in ("metrics_token", "proxy_secret") and value:
        _check_secret(str(value), key, file, spaces=name == "proxy_secret")  # a bearer token has none
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


def _check_monitoring(section: str, name: str, value: object, key: str, file: str) -> None:
    """[metrics] and [alerts] (negative numbers are refused for every key above)."""
    if (section, name) == ("metrics", "port") and value > 65535:  # type: ignore[operator]
        raise ConfigError(f"must be a TCP port, 1 to 65535, or 0 (not served), got {value}", key, file)
    if (section, name) == ("metrics", "bind"):
        _check_listen_address(value, key, file)
    if name in ("abnormal_rate_factor", "rejection_factor") and value <= 1:  # type: ignore[operator]
        raise ConfigError(f"must be more than 1 (a rate above its baseline), got {value}", key, file)
    if name == "baseline_days" and value <= 0:  # type: ignore[operator]
        raise ConfigError(f"must be positive, got {value}", key, file)
    if name == "abnormal_rate_floor" and not 0 <= value <= 1:  # type: ignore[operator]
        raise ConfigError(f"must be between 0 and 1, got {value}", key, file)
    if name in ("disk_warning_percent", "disk_critical_percent") and not 0 <= value <= 100:  # type: ignore[operator]
        raise ConfigError(f"must be between 0 and 100, got {value}", key, file)


def _check_listen_address(value: object, key: str, file: str) -> None:
    """web.host, metrics.bind: not blank."""
    if not str(value).strip():
        raise ConfigError("must name an address to listen on, e.g. 127.0.0.1", key, file)


def _check_secret(value: str, key: str, file: str, *, spaces: bool) -> None:
    """web.proxy_secret, web.metrics_token (when set): at least 16 printable characters, spaces only if `spaces`."""
    if len(value) < 16 or not value.isprintable() or (" " in value and not spaces):
        rule = "" if spaces else " without spaces"
        raise ConfigError(f"must be at least 16 printable characters{rule} (e.g. `openssl rand -hex 32`)", key, file)


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


@dataclasses.dataclass(frozen=True)
class ConfigSource:
    """The file the lookup found (None: the built-in defaults) and what found it."""

    path: Path | None
    found_by: str  # --config, $INSPECTOR_CONFIG, ./config.toml, /etc/inspector/config.toml or built-in defaults


class ConfigProblems(ConfigError):
    """Several problems of one config file, each on its own line (one problem is raised as itself)."""

    def __init__(self, problems: list[ConfigError], file: str):
        lines = "\n".join(f"  {p.key or '(file)'}: {p.message}" for p in problems)
        Exception.__init__(self, f"{len(problems)} problems in {file}:\n{lines}")
        self.problems, self.message, self.key, self.file = problems, str(self), None, file


def find_config(explicit: str | os.PathLike | None = None) -> ConfigSource:
    """--config PATH, else $INSPECTOR_CONFIG, else ./config.toml, else /etc/inspector/config.toml, else defaults."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (given with --config)")
        return ConfigSource(path, "--config")
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (set in ${ENV_VAR})")
        return ConfigSource(path, f"${ENV_VAR}")
    for path, found_by in ((Path(DEFAULT_NAME), f"./{DEFAULT_NAME}"), (SYSTEM_CONFIG, str(SYSTEM_CONFIG))):
        if path.is_file():
            return ConfigSource(path, found_by)
    return ConfigSource(None, "built-in defaults")


def read_toml(path: Path) -> dict:
    """The file's TOML as a dict; ConfigError when it cannot be read or parsed."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"is not valid TOML: {exc}", None, str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", None, str(path)) from exc


def load_config(path: str | os.PathLike | None = None, *, discover: bool = True) -> Config:
    """Read and check a config file; with no file found, the built-in defaults relative to the cwd.

    A file with one problem raises it (a ConfigError naming the key); with several, ConfigProblems listing each."""
    return read_config(find_config(path).path if discover else (Path(path) if path else None))[0]


def read_config(path: Path | None) -> tuple[Config, dict]:
    """load_config of the file at `path` (None: the built-in defaults), with the file's TOML as read (`config show`
    tells the keys the file set)."""
    if path is None:
        return _build({}, Path.cwd(), DEFAULTS), {}
    data = read_toml(path)
    return _build(data, path.resolve().parent, str(path)), data


def _build(data: dict, base: Path, file: str) -> Config:
    problems: list[ConfigError] = []
    cfg = _collect(data, base, file, problems)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigProblems(problems, file)
    return cfg


def _default(f: dataclasses.Field) -> object:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _collect(data: dict, base: Path, file: str, problems: list[ConfigError]) -> Config:
    """The Config of `data`, with the default in place of each value that has a problem; the problems appended."""
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
    for sname, raw in data.items():
        if sname not in sections:
            problems.append(ConfigError(f"unknown section [{sname}] (known: {', '.join(sections)})", sname, file))
        elif not isinstance(raw, dict):
            problems.append(ConfigError("must be a [section] table", sname, file))
    bad: set[str] = set()
    built: dict[str, object] = {}
    for sname, sfield in sections.items():
        cls = sfield.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        raw = data.get(sname, {})
        raw = raw if isinstance(raw, dict) else {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in names:
                problems.append(ConfigError(f"unknown key (known in [{sname}]: {', '.join(sorted(names))})",
                                            f"{sname}.{key}", file))
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            try:
                value = _coerce(sname, f.name, hints[f.name], raw[f.name], file) if f.name in raw else _default(f)
                _check_value(sname, f.name, value, file)
            except ConfigError as exc:
                problems.append(exc)
                bad.add(f"{sname}.{f.name}")
                value = _default(f)
            values[f.name] = _resolve(sname, f.name, value, base)
        built[sname] = cls(**values)
    cfg = Config(**built, source=file)  # type: ignore[arg-type]
    problems.extend(exc for keys, exc in _rules_between(cfg, file) if not keys & bad)
    return cfg


def _resolve(section: str, name: str, value: object, base: Path) -> object:
    """A checked value as the Config holds it: paths relative to the file's folder, stages in network order."""
    if (section, name) in (("model", "features"), ("model", "pooling")):
        return network_order(name, value)  # type: ignore[arg-type]
    if (section, name) in _PATH_KEYS:
        path = Path(str(value))
        return path if path.is_absolute() else base / path
    if ((section, name) in _OPTIONAL_PATH_KEYS and value) or \
            ((section, name) == ("model", "weights") and value not in ("imagenet", "none")):
        path = Path(str(value))
        return str(path if path.is_absolute() else base / path)
    if (section, name) == ("database", "url"):
        return _resolve_sqlite(str(value), base)
    return value


def _rules_between(cfg: Config, file: str) -> list[tuple[set[str], ConfigError]]:
    """The rules between keys, each with the keys it reads (skipped when one of them has a problem of its own)."""
    found: list[tuple[set[str], ConfigError]] = []
    station, web, convert = cfg.station, cfg.web, cfg.convert
    if station.claim_lease_seconds < 3 * station.heartbeat_seconds:
        found.append(({"station.claim_lease_seconds", "station.heartbeat_seconds"}, ConfigError(
            f"must be at least 3 x station.heartbeat_seconds ({station.heartbeat_seconds:g} s): a live daemon renews "
            "its claims every heartbeat, and a lease it cannot renew in time lets another daemon take its files over",
            "station.claim_lease_seconds", file)))
    if convert.low_percentile >= convert.high_percentile:  # else every training run fails when it fits its window
        found.append(({"convert.low_percentile", "convert.high_percentile"}, ConfigError(
            f"{convert.low_percentile:g} must be below convert.high_percentile ({convert.high_percentile:g}): the "
            "window runs from the low to the high percentile of the training images' pixels",
            "convert.low_percentile", file)))
    alerts = cfg.alerts
    if alerts.disk_critical_percent > alerts.disk_warning_percent:
        found.append(({"alerts.disk_critical_percent", "alerts.disk_warning_percent"}, ConfigError(
            f"{alerts.disk_critical_percent:g} must not be above alerts.disk_warning_percent "
            f"({alerts.disk_warning_percent:g}): critical is the lower free space", "alerts.disk_critical_percent",
            file)))
    header_keys = {"web.remote_user_header", "web.trusted_proxies", "web.proxy_secret"}
    if web.remote_user_header and not web.trusted_proxies:
        found.append((header_keys, ConfigError(
            "is set, but web.trusted_proxies is empty: name the reverse proxy's address, the only sender whose user "
            "header is believed", "web.remote_user_header", file)))
    if web.remote_user_header and not web.proxy_secret:
        found.append((header_keys, ConfigError(
            "is set, but web.proxy_secret is empty: any program on a trusted proxy's host (and any web page through "
            "DNS rebinding) could name a user; set a secret the proxy sends in "
            f"{web.proxy_secret_header} on every request (e.g. `openssl rand -hex 32`)", "web.remote_user_header",
            file)))
    return found
