"""Self-metrics declared as a table: one class attribute a metric, made per instance.

    class ClientMetrics(MetricSet):
        requests = counter("federate_requests", "The number of times forwarding ...")
        http_requests = counter("metricsclient_http_requests", "...", "client", "status_code")

An instance makes every declared metric in its registry (a new one unless given), so tests can
build as many sets as they like; on an instance, the attribute is the metric (a ``Counter`` here).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["Metric", "MetricSet", "counter", "gauge", "histogram"]

M = TypeVar("M", bound=MetricWrapperBase)


class Metric(Generic[M]):
    """One metric of a :class:`MetricSet`: its type, name, help, label names and options."""

    def __init__(self, kind: type[M], name: str, doc: str, *labels: str, **options: Any) -> None:
        self.make: Callable[..., M] = partial(kind, name, doc, labels, **options)

    def __get__(self, instance: object, owner: type | None = None) -> M:
        # An instance's own metric, in its __dict__, comes first: this is reached on the class.
        raise AttributeError("a MetricSet's metrics are its instances'")


def counter(name: str, doc: str, *labels: str, **options: Any) -> Metric[Counter]:
    return Metric(Counter, name, doc, *labels, **options)


def gauge(name: str, doc: str, *labels: str, **options: Any) -> Metric[Gauge]:
    return Metric(Gauge, name, doc, *labels, **options)


def histogram(name: str, doc: str, *labels: str, **options: Any) -> Metric[Histogram]:
    return Metric(Histogram, name, doc, *labels, **options)


class MetricSet:
    """A set of metrics: every :class:`Metric` attribute of the class, made in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        for attr, spec in vars(type(self)).items():
            if isinstance(spec, Metric):
                self.__dict__[attr] = spec.make(registry=self.registry)
