"""Backoff delays (full jitter, capped) and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

from client.backoff import MAX_RETRY_AFTER_SECONDS, Backoff, parse_retry_after


def test_ceiling_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(base_seconds=1.0, cap_seconds=10.0, uniform=lambda low, high: high)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_delays_are_full_jitter_within_the_ceiling() -> None:
    rng = random.Random(7)
    backoff = Backoff(base_seconds=1.0, cap_seconds=64.0, uniform=rng.uniform)
    delays = []
    for _ in range(200):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        delays.append(delay)
    # Jittered: the capped delays are spread over [0, cap], not all equal.
    capped = delays[10:]
    assert min(capped) < 16.0 < 48.0 < max(capped)


def test_long_outages_do_not_overflow() -> None:
    backoff = Backoff(base_seconds=2.0, cap_seconds=270.0, failures=10_000)
    assert backoff.ceiling() == 270.0
    assert 0.0 <= backoff.next_delay() <= 270.0


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("2", now=now) == 2.0
    assert parse_retry_after(" 300 ", now=now) == 300.0
    assert parse_retry_after(None, now=now) is None
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-5", now=now) is None
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=UTC), usegmt=True)
    assert parse_retry_after(date, now=now) == 30.0
    past = format_datetime(datetime.fromtimestamp(now - 30, tz=UTC), usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after("999999999", now=now) == MAX_RETRY_AFTER_SECONDS
