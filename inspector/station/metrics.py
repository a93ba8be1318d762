"""The daemon's Prometheus metrics, in a registry of its own, served on `[metrics] port` (off by default).

Counted where the outcomes are counted (scoring.py, after each batch's commit): verdicts by verdict, rejections by
reason, the latency from a settled file to its committed outcome. Read at scrape time from the daemon
(`DaemonCollector`): files waiting, paused and why, the model served, state.dir's free space. The plant-wide
gauges that come from the database (heartbeat age per station, reviews pending) are the review station's
(web/metrics.py): one answer for the plant, not one per daemon. The alert rules over both:
deploy/prometheus/inspector-rules.yml.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from inspector.base.config import MetricsConfig
from inspector.base.durable import disk_space
from inspector.base.errors import IMAGE_REASONS, ConfigError

if TYPE_CHECKING:
    from inspector.station.heartbeat import Station

log = logging.getLogger("inspector.daemon")

VERDICT_LABELS = ("normal", "abnormal", "rescan")
# from a settled file to its outcome committed: one file alone takes a fraction of a second, a burst seconds
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class StationMetrics:
    """One daemon's counters and histogram; `registry` is what its port serves."""

    def __init__(self, station: str):
        self.station = station
        self.registry = CollectorRegistry()
        self.verdicts = Counter("inspector_verdicts", "Files given a verdict, by verdict (duplicates of a content "
                                "included)", ["station", "verdict"], registry=self.registry)
        self.rejections = Counter("inspector_rejections", "Files quarantined without a verdict, by reason",
                                  ["station", "reason"], registry=self.registry)
        self.latency = Histogram("inspector_scoring_seconds", "Seconds from a settled file to its outcome committed",
                                 ["station"], buckets=LATENCY_BUCKETS, registry=self.registry)
        for verdict in VERDICT_LABELS:  # every series from 0, so a rate over a fresh start is a rate
            self.verdicts.labels(station, verdict)
        for reason in IMAGE_REASONS:
            self.rejections.labels(station, reason)
        self.latency.labels(station)

    def verdict(self, verdict: str, seconds: float) -> None:
        self.verdicts.labels(self.station, verdict).inc()
        self.latency.labels(self.station).observe(seconds)

    def rejection(self, reason: str) -> None:
        self.rejections.labels(self.station, reason).inc()

    def watch(self, daemon: Station) -> None:
        """Serve the daemon's own state, read at each scrape."""
        self.registry.register(DaemonCollector(daemon, self.station))


class DaemonCollector(Collector):
    """Gauges read from the running daemon when Prometheus scrapes (no thread keeps them up to date)."""

    def __init__(self, daemon: Station, station: str):
        self.daemon = daemon
        self.station = station

    def collect(self) -> Iterator[Metric]:
        d, station = self.daemon, self.station
        yield _gauge("inspector_files_waiting", "Files seen in the capture folder without an outcome yet", station,
                     d.queued())
        paused = GaugeMetricFamily("inspector_paused", "1 while the daemon waits for its database (full disk, lock, "
                                   "unreachable server); reason: the store's message", labels=["station", "reason"])
        paused.add_metric([station, d.paused_reason or ""], 1 if d.paused_reason else 0)
        yield paused
        model = InfoMetricFamily("inspector_model", "The model the daemon serves", labels=["station"])
        model.add_metric([station], {"sha256": d.detector.sha256, "name": Path(d.cfg.model.path).name})
        yield model
        space = disk_space(Path(d.cfg.state.dir))
        if space is not None:
            yield _gauge("inspector_state_dir_free_bytes", "Free bytes (for the daemon's user) on state.dir's file "
                         "system", station, space[0])
            yield _gauge("inspector_state_dir_size_bytes", "Size in bytes of state.dir's file system", station, space[1])


def _gauge(name: str, documentation: str, station: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["station"])
    gauge.add_metric([station], value)
    return gauge


@contextlib.contextmanager
def serve_metrics(cfg: MetricsConfig, registry: CollectorRegistry) -> Iterator[None]:
    """The registry on http://bind:port/metrics while the daemon runs (nothing when port is 0)."""
    if not cfg.port:
        yield
        return
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(cfg.port, addr=cfg.bind, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {cfg.bind}:{cfg.port} ({exc.strerror or exc}): another program "
                          "has the port, the address is not this host's, or the service unit's "
                          "RestrictAddressFamilies= lacks AF_INET/AF_INET6", "metrics.port") from exc
    log.info("metrics on http://%s:%d/metrics", cfg.bind if ":" not in cfg.bind else f"[{cfg.bind}]", cfg.port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
