"""Reading a Prometheus scrape in the tests: its samples, and the value of one."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list, metric: str, **labels: str) -> float:
    """The one sample of `metric` whose labels include `labels`."""
    matching = [s.value for s in found if s.name == metric and labels.items() <= s.labels.items()]
    assert len(matching) == 1, (metric, labels, [s for s in found if s.name == metric])
    return matching[0]
