"""Retry delays of the push loop: exponential backoff with full jitter, and ``Retry-After``.

After the n-th consecutive failure the loop sleeps a uniformly random time in
``[0, min(cap, base * 2**n)]`` ("full jitter"), so a fleet of clients that failed together does
not come back together. The cap is the push interval: a failing client never waits longer than
a healthy one. A server that says when to come back (``Retry-After`` on 429/503) is obeyed
instead, up to :data:`MAX_RETRY_AFTER_SECONDS` so that a broken server cannot park us forever.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MAX_RETRY_AFTER_SECONDS", "Backoff", "parse_retry_after"]

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS = 3600.0


@dataclass(slots=True)
class Backoff:
    """Delays for consecutive failures; :meth:`reset` after a success.

    ``uniform(low, high)`` draws the jittered delay (``random.uniform`` unless a test injects a
    deterministic one).
    """

    base_seconds: float
    cap_seconds: float
    uniform: Callable[[float, float], float] = field(default=random.uniform)
    failures: int = 0

    def ceiling(self) -> float:
        """The largest delay the next failure can get."""
        # min() before the power would overflow for long outages; 2**60 is plenty.
        return min(self.cap_seconds, self.base_seconds * float(2 ** min(self.failures, 60)))

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        delay = self.uniform(0.0, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Forget past failures (after a success, or a failure that retrying cannot fix)."""
        self.failures = 0


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None.

    ``now`` is the current Unix time, for the HTTP-date form. Negative or past values give 0;
    values over :data:`MAX_RETRY_AFTER_SECONDS` are capped; unparsable values give None.
    """
    if value is None:
        return None
    text = value.strip()
    seconds: float
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            import email.utils  # only for an HTTP-date: the email package is ~1.4 MiB

            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
