"""The pool of randomized, pre-encoded upload bodies (see the package docstring)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from client.benchmark.config import POOL_REFRESH_S
from telemeter import metrics_pb2, snappy
from telemeter.delimited import write_families

log = logging.getLogger(__name__)


def _randomize(
    base: Sequence[metrics_pb2.MetricFamily],
    labels: Sequence[tuple[str, str]],
    *,
    now_ms: int,
    spread_ms: int,
    rng: random.Random,
) -> list[metrics_pb2.MetricFamily]:
    """A copy of ``base`` as the Go benchmark generates it for one cycle.

    Untyped and gauge values become ``round(rand * value)``, counters go up by one half of the
    time, every timestamp is ``now - rand(spread)`` (sorted within a family, since the server
    refuses decreasing timestamps) and ``labels`` are set on every metric.
    """
    out = []
    for original in base:
        family = metrics_pb2.MetricFamily()
        family.CopyFrom(original)
        # Go sorts the metrics by their random timestamps; handing out sorted random timestamps
        # in order gives the same (non-decreasing) timestamps without reordering messages.
        stamps = sorted(
            now_ms - (rng.randrange(spread_ms) if spread_ms > 0 else 0) for _ in family.metric
        )
        for metric, stamp in zip(family.metric, stamps, strict=True):
            if metric.HasField("untyped"):
                metric.untyped.value = round(rng.random() * metric.untyped.value)
            elif metric.HasField("gauge"):
                metric.gauge.value = round(rng.random() * metric.gauge.value)
            elif metric.HasField("counter") and rng.random() < 0.5:
                metric.counter.value += 1
            metric.timestamp_ms = stamp
            for name, value in labels:
                pair = next((p for p in metric.label if p.name == name), None)
                if pair is None:
                    pair = metric.label.add()
                    pair.name = name
                pair.value = value
        out.append(family)
    return out


@dataclass
class _Shape:
    """The variants of one label shape (names and value lengths) and their placeholders."""

    placeholders: list[tuple[str, bytes]]
    variants: list[bytes]
    refreshed_at: float
    patchable: bool


class PayloadPool:
    """Pre-encoded, randomized upload bodies, patched per worker with its labels.

    A shape is the label names plus the byte length of each value; its variants are encoded with
    same-length placeholder values, so patching a worker's values in keeps every protobuf length
    valid. If a placeholder's byte string shows up anywhere but in the label values (counted
    once per refresh) the shape falls back to encoding each body from scratch.
    """

    def __init__(
        self,
        families: Sequence[metrics_pb2.MetricFamily],
        *,
        variants: int,
        spread_s: float,
        rng: random.Random,
    ) -> None:
        self.families = list(families)
        self.series = sum(len(f.metric) for f in self.families)
        self.variants = variants
        self.spread_ms = int(spread_s * 1000)
        self.rng = rng
        self._shapes: dict[tuple[tuple[str, int], ...], _Shape] = {}

    def body(self, labels: Mapping[str, str]) -> bytes:
        """A snappy-framed, delimited upload body carrying ``labels`` on every metric."""
        encoded = [(name, value.encode()) for name, value in sorted(labels.items())]
        key = tuple((name, len(value)) for name, value in encoded)
        shape = self._shapes.get(key)
        if shape is None or time.monotonic() - shape.refreshed_at > POOL_REFRESH_S:
            shape = self._build(key)
            self._shapes[key] = shape
        if not shape.patchable:
            fresh = _randomize(
                self.families,
                sorted(labels.items()),
                now_ms=int(time.time() * 1000),
                spread_ms=self.spread_ms,
                rng=self.rng,
            )
            return snappy.encode_framed(write_families(fresh))
        data = self.rng.choice(shape.variants)
        for (_, placeholder), (_, value) in zip(shape.placeholders, encoded, strict=True):
            data = data.replace(placeholder, value)
        return snappy.encode_framed(data)

    def _build(self, key: tuple[tuple[str, int], ...]) -> _Shape:
        # One distinct filler byte per label; ASCII control characters never occur in the text
        # format's label values, and a counted check below catches any other collision.
        placeholders = [
            (name, bytes([1 + i % 30]) * length) for i, (name, length) in enumerate(key)
        ]
        labels = [(name, ph.decode()) for name, ph in placeholders]
        now_ms = int(time.time() * 1000)
        variants = [
            write_families(
                _randomize(
                    self.families, labels, now_ms=now_ms, spread_ms=self.spread_ms, rng=self.rng
                )
            )
            for _ in range(self.variants)
        ]
        distinct = len({ph for _, ph in placeholders}) == len(placeholders)
        patchable = (
            distinct
            and all(length > 0 for _, length in key)
            and all(v.count(ph) == self.series for v in variants for _, ph in placeholders)
        )
        if not patchable:
            log.info("labels cannot be patched into pre-encoded bodies; encoding each upload")
        return _Shape(placeholders, variants, time.monotonic(), patchable)
