"""Self-metrics declared on a class: made per instance, in the instance's registry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from telemeter.selfmetrics import MetricSet, counter, histogram


class _Set(MetricSet):
    hits = counter("test_hits", "Hits, by kind.", "kind")
    latency = histogram("test_latency_seconds", "Latency.", buckets=(0.1, 1.0))


def test_each_instance_has_its_own_metrics_in_its_registry() -> None:
    one, two = _Set(), _Set()
    assert isinstance(one.hits, Counter) and isinstance(one.latency, Histogram)
    assert one.hits is not two.hits and one.registry is not two.registry
    one.hits.labels("a").inc()
    one.latency.observe(0.5)
    text = generate_latest(one.registry).decode()
    assert 'test_hits_total{kind="a"} 1.0' in text
    assert 'test_latency_seconds_bucket{le="1.0"} 1.0' in text
    assert 'test_hits_total{kind="a"}' not in generate_latest(two.registry).decode()


def test_a_given_registry_is_used() -> None:
    registry = CollectorRegistry()
    metrics = _Set(registry)
    assert metrics.registry is registry
    assert registry.get_sample_value("test_latency_seconds_count") == 0.0


def test_the_class_holds_declarations_only() -> None:
    with pytest.raises(AttributeError):
        _Set.hits  # noqa: B018
