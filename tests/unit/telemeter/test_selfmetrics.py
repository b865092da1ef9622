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


def test_fronts_are_added_to_their_metrics_when_the_registry_is_collected() -> None:
    metrics = _Set()
    hits = metrics.counter_front(metrics.hits.labels("a"))
    latency = metrics.histogram_front(metrics.latency)
    hits.inc()
    hits.inc(2)
    latency.observe(0.05)
    latency.observe(0.5)
    # Nothing reaches the metrics before a collection ...
    assert metrics.hits.labels("a")._value.get() == 0.0
    # ... which adds every pending update first, whoever collects.
    registry = metrics.registry
    assert registry.get_sample_value("test_hits_total", {"kind": "a"}) == 3.0
    assert registry.get_sample_value("test_latency_seconds_bucket", {"le": "0.1"}) == 1.0
    assert registry.get_sample_value("test_latency_seconds_count") == 2.0
    text = generate_latest(registry).decode()  # collected again: nothing added twice
    assert 'test_hits_total{kind="a"} 3.0' in text
    assert "test_latency_seconds_count 2.0" in text


def test_a_histogram_front_stays_bounded_when_nobody_scrapes() -> None:
    metrics = _Set()
    latency = metrics.histogram_front(metrics.latency)
    for _ in range(latency.FLUSH_AT + 10):
        latency.observe(0.5)
    assert len(latency.pending) == 10
    assert metrics.latency._sum.get() == pytest.approx(0.5 * latency.FLUSH_AT)


class _Other(MetricSet):
    misses = counter("test_misses", "Misses.")


def test_fronts_of_sets_sharing_a_registry_are_added_too() -> None:
    first = _Set()
    second = _Other(first.registry)
    hits, misses = first.counter_front(first.hits.labels("b")), second.counter_front(second.misses)
    hits.inc(5)
    misses.inc(7)
    assert first.registry.get_sample_value("test_hits_total", {"kind": "b"}) == 5.0
    assert first.registry.get_sample_value("test_misses_total") == 7.0
