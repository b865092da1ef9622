"""Configuration of a run: the flags' values and the constants of the Go tool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_INTERVAL_S = 270.0
DEFAULT_WORKERS = 1000
DEFAULT_LISTEN = "localhost:8080"
ERROR_WAIT_S = 60.0  # Go waits a minute after a failed push
POOL_REFRESH_S = 30.0
PROGRESS_PERIOD_S = 1.0
UPLOAD_CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
# Status keys of attempts that got no HTTP answer from /upload.
NO_ANSWER = "error"
AUTHORIZE_FAILED = "authorize"


# ----- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark run; durations in seconds, ``None`` limits mean "until interrupted"."""

    to_upload: str
    to_auth: str | None
    token: str | None
    metrics_text: bytes
    workers: int = DEFAULT_WORKERS
    interval_s: float = DEFAULT_INTERVAL_S
    ramp_up_s: float | None = None  # None: the interval, as the Go tool
    duration_s: float | None = None
    uploads: int | None = None
    variants: int = 16
    error_wait_s: float = ERROR_WAIT_S
    timeout_s: float = 30.0
    ca_file: Path | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if min(self.interval_s, self.error_wait_s, self.ramp_up_s or 0.0) < 0:
            raise ValueError("--interval, --ramp-up and --error-wait must not be negative")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("--duration must be positive")
        if self.uploads is not None and self.uploads < 1:
            raise ValueError("--uploads must be at least 1")
        if self.variants < 1:
            raise ValueError("--variants must be at least 1")
        if (self.token is not None) != (self.to_auth is not None):
            raise ValueError(
                "an authorization URL and an authorization token must both be given or neither"
            )
