"""The daemon's Prometheus metrics (station/metrics.py): a real `inspector watch` subprocess serving `[metrics] port`,
real files scored and quarantined, /metrics fetched over HTTP and parsed as Prometheus parses it; the rules
(deploy/prometheus/inspector-rules.yml) name only metrics that the daemon or the review station serve."""

from __future__ import annotations

import hashlib
import re
import socket
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from daemon_helpers import db_rows, write_config, write_image
from harness import DaemonProcess, wait_for
from image_files import make_bad_file
from inspector.base.config import MetricsConfig
from inspector.base.errors import ConfigError
from inspector.station.metrics import StationMetrics, serve_metrics
from scrape import samples, value

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "inspector-rules.yml"
WEB_METRICS = {"inspector_heartbeat_age_seconds", "inspector_heartbeat_interval_seconds", "inspector_reviews_pending",
               "inspector_database_up"}  # the review station's (tests/test_web_metrics.py)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> list:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return samples(response.read().decode())


def rule_metric_names() -> set[str]:
    exprs = re.findall(r"expr: (?:\|\n)?((?:.*\n)*?)\s+for:", RULES.read_text())
    return {name for expr in exprs for name in re.findall(r"\b(inspector_\w+)", expr)}


def test_a_real_scrape_counts_what_the_daemon_scored(tmp_path, model_file):
    port = free_port()
    config = write_config(tmp_path, model=model_file)
    config.write_text(config.read_text() + f'[station]\nname = "line1"\n[metrics]\nport = {port}\n')
    capture = tmp_path / "capture"
    daemon = DaemonProcess(tmp_path, config)
    try:
        daemon.wait_ready()
        for i in range(4):
            write_image(capture / f"scan-{i}.tif", seed=i)
        (capture / "scan-copy.tif").write_bytes((capture / "scan-0.tif").read_bytes())  # a duplicate content
        make_bad_file(capture / "notes.tif", "text")
        make_bad_file(capture / "photo.tif", "jpeg_as_tif")
        wait_for(lambda: value(scrape(port), "inspector_rejections_total", reason="not_an_image") == 2
                 and value(scrape(port), "inspector_scoring_seconds_count") == 5, 120, "7 outcomes in /metrics")
        found = scrape(port)
        log = daemon.log()
    finally:
        daemon.close()
    recorded = Counter(v for (v,) in db_rows(tmp_path / "inspector.db", "SELECT v.verdict FROM images i "
                                                                          "JOIN verdicts v ON v.id = i.verdict_id"))
    assert sum(recorded.values()) == 5
    for verdict in ("normal", "abnormal", "rescan"):
        assert value(found, "inspector_verdicts_total", station="line1", verdict=verdict) == recorded[verdict]
    assert value(found, "inspector_rejections_total", station="line1", reason="not_an_image") == 2
    assert value(found, "inspector_rejections_total", station="line1", reason="corrupt") == 0  # every reason from 0
    assert value(found, "inspector_scoring_seconds_sum") > 0
    assert value(found, "inspector_scoring_seconds_bucket", le="+Inf") == 5
    assert value(found, "inspector_files_waiting", station="line1") == 0
    assert value(found, "inspector_paused", station="line1", reason="") == 0
    model_sha = hashlib.sha256((tmp_path / "models" / "detector.safetensors").read_bytes()).hexdigest()
    assert value(found, "inspector_model_info", station="line1", sha256=model_sha, name="detector.safetensors") == 1
    free, size = (value(found, f"inspector_state_dir_{k}_bytes", station="line1") for k in ("free", "size"))
    assert 0 < free <= size
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log  # metrics.bind's default: this host only
    assert {"inspector_verdicts_total", "inspector_files_waiting", "inspector_heartbeat_age_seconds"} \
        <= rule_metric_names() <= {s.name for s in found} | WEB_METRICS


def test_paused_files_waiting_and_the_model_are_read_at_each_scrape(tmp_path):
    daemon = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(path=Path("/models/new.safetensors")),
                                                 state=SimpleNamespace(dir=tmp_path / "var-not-made-yet")),
                             detector=SimpleNamespace(sha256="12" * 32), paused_reason=None, queued=lambda: 7)
    metrics = StationMetrics("line2")
    metrics.watch(daemon)
    found = samples(generate_latest(metrics.registry).decode())
    assert value(found, "inspector_files_waiting", station="line2") == 7
    assert value(found, "inspector_paused", station="line2", reason="") == 0
    assert value(found, "inspector_model_info", sha256="12" * 32, name="new.safetensors") == 1
    assert value(found, "inspector_state_dir_size_bytes") > 0  # the file system it will be made on
    daemon.paused_reason = "database is locked"
    daemon.queued = lambda: 9
    found = samples(generate_latest(metrics.registry).decode())
    assert value(found, "inspector_paused", station="line2") == 1
    assert value(found, "inspector_paused", reason="database is locked") == 1
    assert value(found, "inspector_files_waiting") == 9
    metrics.verdict("abnormal", 0.3)
    metrics.rejection("truncated")
    found = samples(generate_latest(metrics.registry).decode())
    assert value(found, "inspector_verdicts_total", verdict="abnormal") == 1
    assert value(found, "inspector_verdicts_total", verdict="normal") == 0
    assert value(found, "inspector_rejections_total", reason="truncated") == 1
    assert value(found, "inspector_scoring_seconds_bucket", le="0.5") == 1
    assert value(found, "inspector_scoring_seconds_bucket", le="0.25") == 0


def test_a_port_taken_is_a_config_error_naming_the_key(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            with serve_metrics(MetricsConfig(port=port), StationMetrics("line1").registry):
                pass
    assert caught.value.key == "metrics.port"
    assert f"cannot serve metrics on 127.0.0.1:{port}" in str(caught.value)
    with serve_metrics(MetricsConfig(port=0), StationMetrics("line1").registry):  # 0: not served, nothing bound
        pass


@pytest.mark.parametrize("text, key", [
    ("[metrics]\nport = 70000\n", "metrics.port"),
    ('[metrics]\nbind = ""\n', "metrics.bind"),
    ('[web]\nmetrics_token = "short"\n', "web.metrics_token"),
    ('[web]\nmetrics_token = "a token with spaces in it"\n', "web.metrics_token"),
])
def test_metrics_settings_are_checked(tmp_path, text, key):
    from inspector.base.configfile import load_config

    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.toml")
    assert caught.value.key == key
