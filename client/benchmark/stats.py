"""Statistics of a run: counts, latency percentiles, the final summary, the live progress line."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TextIO


@dataclass
class Summary:
    """The outcome of a run. ``statuses`` counts upload attempts by answer.

    Keys are the HTTP status of ``/upload`` (``"200"``, ``"429"``...), ``"authorize <status>"``
    when the token exchange failed, ``"error <Exception>"`` when no answer came back.
    Latencies (ms) are those of ``/upload`` requests that got an answer.
    """

    elapsed_s: float
    workers: int
    attempts: int
    accepted: int
    uploads_per_s: float
    series_per_upload: int
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    authorizations: dict[str, int]

    def to_json(self) -> str:
        """The summary as one JSON object."""
        return json.dumps(asdict(self), sort_keys=True)


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted data (0 for no data)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies_s)
    return {
        f"p{q:g}": round(_percentile(ordered, q) * 1000, 3) for q in (50, 90, 99, 99.9, 100)
    } | {"mean": round(sum(ordered) / len(ordered) * 1000, 3) if ordered else 0.0}


@dataclass
class Stats:
    started: float
    attempts: int = 0
    accepted: int = 0
    finished_at: float | None = None
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    authorizations: Counter[str] = field(default_factory=Counter)

    def record(self, status: str, latency_s: float | None) -> None:
        self.attempts += 1
        self.statuses[status] += 1
        if status == "200":
            self.accepted += 1
        if latency_s is not None:
            self.latencies.append(latency_s)
        self.finished_at = time.monotonic()

    def summary(self, *, workers: int, series: int) -> Summary:
        end = self.finished_at or time.monotonic()
        elapsed = max(end - self.started, 1e-9)
        return Summary(
            elapsed_s=round(elapsed, 3),
            workers=workers,
            attempts=self.attempts,
            accepted=self.accepted,
            uploads_per_s=round(self.accepted / elapsed, 2),
            series_per_upload=series,
            latency_ms=_latency_summary(self.latencies),
            statuses=dict(sorted(self.statuses.items())),
            authorizations=dict(sorted(self.authorizations.items())),
        )


def render_summary(summary: Summary) -> str:
    """The summary as a few lines of text."""
    lat = summary.latency_ms
    lines = [
        f"workers:      {summary.workers}",
        f"elapsed:      {summary.elapsed_s:.2f} s",
        f"attempts:     {summary.attempts}",
        f"accepted:     {summary.accepted} ({summary.series_per_upload} series each)",
        f"uploads/s:    {summary.uploads_per_s:.1f} accepted",
        "latency (ms): "
        + "  ".join(f"{k} {lat[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9", "p100", "mean")),
        "responses:    " + ", ".join(f"{k}: {v}" for k, v in summary.statuses.items()),
        "authorize:    " + ", ".join(f"{k}: {v}" for k, v in summary.authorizations.items()),
    ]
    return "\n".join(lines)


class Progress:
    """A one-line live display, redrawn every second on a terminal."""

    def __init__(self, stats: Stats, stream: TextIO) -> None:
        self.stats = stats
        self.stream = stream
        self._seen = 0
        self._accepted = 0
        self._at = stats.started

    def draw(self) -> None:
        s = self.stats
        now = time.monotonic()
        window = s.latencies[self._seen :]
        rate = (s.accepted - self._accepted) / max(now - self._at, 1e-9)
        self._seen, self._accepted, self._at = len(s.latencies), s.accepted, now
        ordered = sorted(window)
        failed = s.attempts - s.accepted
        line = (
            f"{now - s.started:7.1f}s  accepted {s.accepted}  failed {failed}  "
            f"now {rate:7.1f}/s  p50 {_percentile(ordered, 50) * 1000:6.1f} ms  "
            f"p99 {_percentile(ordered, 99) * 1000:6.1f} ms"
        )
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()

    def finish(self) -> None:
        self.draw()
        self.stream.write("\n")
        self.stream.flush()
