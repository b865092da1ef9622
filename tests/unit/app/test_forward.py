"""Unit tests of the forwarder's pure parts: lanes, batches, request bodies, Retry-After."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.forward import _delay, _seconds, batches, lanes, request_body
from app.store import QueuedEntry
from telemeter import snappy


def entry(n: int, tenant: str, payload: bytes = b"x") -> QueuedEntry:
    return QueuedEntry(
        range_id=0,
        entry_id=b"%d-0" % n,
        body=snappy.encode_block(payload),
        size=len(payload),
        tenant=tenant,
        series=1,
        stamp_ms=n,
    )


@given(st.lists(st.sampled_from("abcdefgh"), max_size=60), st.integers(1, 6))
def test_a_cluster_keeps_one_lane_and_its_order(tenants: list[str], count: int) -> None:
    entries = [entry(i, t) for i, t in enumerate(tenants)]
    out = lanes(entries, count)
    assert len(out) <= count and sorted(e.stamp_ms for lane in out for e in lane) == list(
        range(len(entries))
    )
    for lane in out:
        assert [e.stamp_ms for e in lane] == sorted(e.stamp_ms for e in lane)
    lane_of = {e.tenant: i for i, lane in enumerate(out) for e in lane}
    assert all(lane_of[e.tenant] == i for i, lane in enumerate(out) for e in lane)


def test_batches_split_by_tenant_entries_and_bytes() -> None:
    es = [entry(0, "a"), entry(1, "a"), entry(2, "b"), entry(3, "b"), entry(4, "b")]
    by_tenant = batches(es, max_entries=2, max_bytes=100, by_tenant=True)
    assert [[e.stamp_ms for e in b] for b in by_tenant] == [[0, 1], [2, 3], [4]]
    one = batches(es, max_entries=10, max_bytes=3, by_tenant=False)
    assert [[e.stamp_ms for e in b] for b in one] == [[0, 1, 2], [3, 4]]


def test_a_batch_body_inflates_to_its_entries_joined() -> None:
    es = [entry(0, "a", b"first" * 50), entry(1, "a", b"second" * 70)]
    assert request_body(es[:1]) == es[0].body  # one entry: its stored bytes, as they are
    body = request_body(es)
    assert snappy.decode_block(body, max_size=1000) == b"first" * 50 + b"second" * 70


def test_retry_after_and_backoff() -> None:
    assert _seconds("3") == 3.0 and _seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert _delay(5, 3.0, 1.0) == 3.0  # Retry-After wins over the cap
    assert _delay(9, 10_000.0, 1.0) == 300.0  # but at most 5 min
    assert all(0 <= _delay(a, None, 2.0) <= 2.0 for a in range(1, 20))
