"""Self-metrics declared as a table: one class attribute a metric, made per instance.

    class ClientMetrics(MetricSet):
        requests = counter("federate_requests", "The number of times forwarding ...")
        http_requests = counter("metricsclient_http_requests", "...", "client", "status_code")

An instance makes every declared metric in its registry (a new one unless given), so tests can
build as many sets as they like; on an instance, the attribute is the metric (a ``Counter`` here).

A metric updated on every request can have a front (`MetricSet.counter_front`,
`MetricSet.histogram_front`): updates are plain arithmetic, added to the metric when its registry
is collected.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["CounterFront", "HistogramFront", "Metric", "MetricSet", "counter", "gauge", "histogram"]

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
        self._deferred = _Deferred()
        self.registry.register(self._deferred)  # before the metrics: collected first
        for attr, spec in vars(type(self)).items():
            if isinstance(spec, Metric):
                self.__dict__[attr] = spec.make(registry=self.registry)

    def counter_front(self, metric: Counter) -> CounterFront:
        """A cheap front of one of this set's counters (or of a child of one)."""
        front = CounterFront(metric)
        self._deferred.fronts.append(front)
        return front

    def histogram_front(self, metric: Histogram) -> HistogramFront:
        """A cheap front of one of this set's histograms (or of a child of one)."""
        front = HistogramFront(metric)
        self._deferred.fronts.append(front)
        return front


class _Deferred:
    """A collector of no metrics of its own, registered before a set's metrics: collecting the
    registry (a scrape) first adds the pending updates of the set's fronts to their metrics."""

    def __init__(self) -> None:
        self.fronts: list[CounterFront | HistogramFront] = []

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        for front in self.fronts:
            front.flush()
        return []


class CounterFront:
    """A counter's updates as a plain number, added to it when the registry is collected.

    For the counts of every upload: ``prometheus_client`` takes a lock and makes several calls
    per update (docs/benchmarks.md, "Where the server's CPU per upload goes").
    """

    __slots__ = ("metric", "pending")

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self.pending: float = 0

    def inc(self, amount: float = 1) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0
            self.metric.inc(amount)


class HistogramFront:
    """A histogram's observations kept in a list, observed when the registry is collected (or
    when :data:`HistogramFront.FLUSH_AT` are pending, so memory stays bounded unscraped)."""

    __slots__ = ("metric", "pending")
    FLUSH_AT = 4096

    def __init__(self, metric: Histogram) -> None:
        self.metric = metric
        self.pending: list[float] = []

    def observe(self, value: float) -> None:
        pending = self.pending
        pending.append(value)
        if len(pending) >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        values, self.pending = self.pending, []
        observe = self.metric.observe
        for value in values:
            observe(value)
