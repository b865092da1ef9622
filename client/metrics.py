"""The client's self-metrics, named as in the Go telemeter-client, in their own registry.

Five series families, written by hand in the text format 0.0.4: prometheus-client costs ~5 MiB
of RSS in each of the fleet's clients for them, a fifth of the client's budget
(docs/architecture.md, "The client's footprint"). Values are written as prometheus-client
writes them (``1.0``), with no ``_created`` series (Go has none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["CONTENT_TYPE", "ClientMetrics", "Family"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Family:
    """One counter or gauge, with or without labels."""

    def __init__(self, name: str, help_text: str, kind: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.kind, self.labels = name, help_text, kind, labels
        self.values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name

    def inc(self, *values: str) -> None:
        self.values[values] = self.values.get(values, 0.0) + 1

    def set(self, value: float) -> None:
        self.values[()] = float(value)

    def render(self) -> str:
        lines = [f"# HELP {self.sample_name} {self.help}", f"# TYPE {self.sample_name} {self.kind}"]
        for key, value in self.values.items():
            pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key, strict=True))
            lines.append(f"{self.sample_name}{{{pairs}}} {_number(value)}" if pairs else
                         f"{self.sample_name} {_number(value)}")  # fmt: skip
        return "\n".join(lines) + "\n"


class ClientMetrics:
    """Self-metrics of one client process (no global registry: tests build as many as they like).

    ``metricsclient_http_requests_total`` counts HTTP answers by client: ``federate_from`` (the
    scrape), ``federate_to`` (uploads), as in Go, plus ``federate_authorize`` (token exchanges).
    """

    def __init__(self) -> None:
        self.samples = Family(
            "federate_samples", "Tracks the number of samples per federation", "gauge"
        )
        self.filtered_samples = Family(
            "federate_filtered_samples",
            "Tracks the number of samples filtered per federation",
            "gauge",
        )
        self.requests = Family(
            "federate_requests",
            "The number of times forwarding federated metrics was attempted",
            "counter",
        )
        self.requests_failed = Family(
            "federate_requests_failed",
            "The number of times forwarding federated metrics has failed",
            "counter",
        )
        self.http_requests = Family(
            "metricsclient_http_requests",
            "Tracks the number of HTTP requests by client and status code",
            "counter",
            ("client", "status_code"),
        )
        self._families = (
            self.samples,
            self.filtered_samples,
            self.requests,
            self.requests_failed,
            self.http_requests,
        )

    def count_http(self, client: str, status_code: int) -> None:
        """Count one HTTP answer."""
        self.http_requests.inc(client, str(status_code))

    def render(self) -> bytes:
        """The ``/metrics`` answer."""
        return "".join(family.render() for family in self._families).encode()

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of one sample, by its name as written and its labels; None if absent."""
        for family in self._families:
            if family.sample_name == name:
                key = tuple((labels or {}).get(label, "") for label in family.labels)
                return family.values.get(key)
        return None


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
