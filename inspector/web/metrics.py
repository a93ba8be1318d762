"""The review station's `/metrics` for Prometheus: the plant-wide gauges that come from the database, read at
each scrape (`StoreCollector`): every station's heartbeat age and interval, the reviews pending, whether the
database answers. The daemons serve their own counts (station/metrics.py).

Who may scrape: with `web.metrics_token` set, a request carrying `Authorization: Bearer TOKEN` (compared in
constant time; anything else 401); without one, only a client on this host (loopback) that does not come through
a proxy (anything else 403): a reverse proxy on the same host would otherwise make every client look local.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Iterator

from flask import Blueprint, Response, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from inspector.base.errors import StoreError
from inspector.web import WebError, ext
from inspector.web.auth import VIA_PROXY, client_address

if TYPE_CHECKING:
    from inspector.store.store import Store

blueprint = Blueprint("metrics", __name__)
CHALLENGE = 'Bearer realm="inspector metrics"'  # the WWW-Authenticate of a 401


class StoreCollector(Collector):
    """Gauges asked of the store at scrape time; `inspector_database_up` 0 (and nothing else) while it cannot
    answer."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("inspector_database_up", "1 while the station's database answers")
        try:
            rows, now = self.store.station_rows()
            pending = self.store.reviews.count_pending()
        except StoreError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        age = GaugeMetricFamily("inspector_heartbeat_age_seconds", "Seconds since a station's daemon last wrote its "
                                "heartbeat (stations stopped cleanly left out)", labels=["station"])
        interval = GaugeMetricFamily("inspector_heartbeat_interval_seconds", "How often a station's daemon writes "
                                     "its heartbeat (station.heartbeat_seconds)", labels=["station"])
        for row in rows:
            if row["stopped_at"] is None:
                age.add_metric([row["name"]], max(0.0, (now - row["last_seen"]).total_seconds()))
                interval.add_metric([row["name"]], row["heartbeat_seconds"])
        yield age
        yield interval
        yield GaugeMetricFamily("inspector_reviews_pending", "Abnormal and rescan verdicts waiting for an operator's "
                                "decision (the review queue)", value=pending)


def metrics_registry(store: Store) -> CollectorRegistry:
    """The app's own registry (not prometheus_client's global one): two apps in one process never collide."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return registry


def refuse_other_scrapers() -> None:
    """Raise WebError 401 or 403 unless this request may scrape (the app's error page answers it, audited)."""
    token = ext()["cfg"].web.metrics_token
    if token:
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
            raise WebError(401, "/metrics needs the bearer token of web.metrics_token.", CHALLENGE)
    elif not loopback() or request.environ.get(VIA_PROXY):
        raise WebError(403, "/metrics answers only this host's own clients: set web.metrics_token and send it as a "
                            "bearer token to scrape from elsewhere.")


def loopback() -> bool:
    """The request's client is on this host (auth.client_address: an IPv4-mapped address read as IPv4)."""
    address = client_address()
    return address is not None and address.is_loopback


@blueprint.route("/metrics")
def scrape() -> Response:
    """The registry in the format the scraper asks for (Prometheus text or OpenMetrics)."""
    refuse_other_scrapers()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(ext()["metrics"]), 200, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
