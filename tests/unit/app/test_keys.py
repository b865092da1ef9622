"""Key names: every key of a cluster in its slot; the index in its range."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from app import keys

ids = st.from_regex(keys.CLUSTER_ID, fullmatch=True)


@given(ids)
def test_all_keys_of_a_cluster_share_its_slot(cluster_id: str) -> None:
    slot = key_slot(f"{{{cluster_id}}}".encode())
    for key in (
        keys.snapshot_key(cluster_id),
        keys.ratelimit_key(cluster_id),
        keys.auth_key(cluster_id, "token"),
        keys.auth_failures_key(cluster_id),
    ):
        assert f"{{{cluster_id}}}" in key and key_slot(key.encode()) == slot
    assert keys.cluster_range(cluster_id) == slot // keys.SLOTS_PER_RANGE


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "a b", "-start", "x" * 129, "ünï", "a/b"])
def test_unsafe_cluster_ids_are_refused(bad: str) -> None:
    assert not keys.valid_cluster_id(bad)


def test_tokens_are_not_stored_in_key_names() -> None:
    assert "secret-token" not in keys.auth_key("c", "secret-token")


def test_index_keys_are_distinct_and_inside_their_range() -> None:
    assert len({keys.index_key(r) for r in range(keys.RANGES)}) == keys.RANGES
    assert keys.RANGES * keys.SLOTS_PER_RANGE == keys.SLOTS
    for r in range(keys.RANGES):
        assert keys.range_of_slot(key_slot(keys.index_key(r).encode())) == r
