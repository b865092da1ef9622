"""The client's self-metrics, named as in the Go telemeter-client, in their own registry."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from telemeter.selfmetrics import MetricSet, counter, gauge

__all__ = ["ClientMetrics"]

logger = logging.getLogger(__name__)


class ClientMetrics(MetricSet):
    """Self-metrics of one client process (no global registry: tests build as many as they like).

    ``metricsclient_http_requests_total`` counts HTTP answers by client: ``federate_from`` (the
    scrape), ``federate_to`` (uploads), as in Go, plus ``federate_authorize`` (token exchanges).
    """

    samples = gauge("federate_samples", "Tracks the number of samples per federation")
    filtered_samples = gauge(
        "federate_filtered_samples", "Tracks the number of samples filtered per federation"
    )
    requests = counter(
        "federate_requests", "The number of times forwarding federated metrics was attempted"
    )
    requests_failed = counter(
        "federate_requests_failed", "The number of times forwarding federated metrics has failed"
    )
    http_requests = counter(
        "metricsclient_http_requests",
        "Tracks the number of HTTP requests by client and status code",
        "client",
        "status_code",
    )

    def __init__(self) -> None:
        super().__init__(CollectorRegistry(auto_describe=True))

    def count_http(self, client: str, status_code: int) -> None:
        """Count one HTTP answer."""
        self.http_requests.labels(client=client, status_code=str(status_code)).inc()
