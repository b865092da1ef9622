"""Property tests of the ring's assignment function (balance and movement, invariant I3)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.assignment import affinity, assign, moved, quotas, rebalance
from app.keys import RANGES

# Pod names as Kubernetes makes them, plus arbitrary text: the function must not care.
NAME = st.one_of(
    st.from_regex(r"telemeter-server-[a-z0-9]{5,10}-[a-f0-9]{6}", fullmatch=True),
    st.text(min_size=1, max_size=20),
)


def members(min_size: int = 1, max_size: int = 16) -> st.SearchStrategy[list[str]]:
    return st.lists(NAME, min_size=min_size, max_size=max_size, unique=True)


def loads(assignment: dict[int, str]) -> Counter[str]:
    return Counter(assignment.values())


def assert_balanced(assignment: dict[int, str], names: list[str]) -> None:
    assert sorted(assignment) == list(range(RANGES))  # every range has an owner (I2)
    counts = loads(assignment)
    assert set(counts) == set(names)
    even = RANGES / len(names)
    assert 0.75 * even <= min(counts.values()) <= max(counts.values()) <= 1.25 * even
    assert max(counts.values()) - min(counts.values()) <= 1  # what we actually guarantee


@settings(max_examples=150, deadline=None)
@given(names=members())
def test_fresh_assignment_is_balanced_for_1_to_16_members(names: list[str]) -> None:
    assert_balanced(assign(names), names)


@settings(max_examples=100, deadline=None)
@given(names=members(), data=st.data())
def test_assignment_ignores_member_order(names: list[str], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(names))
    assert assign(shuffled) == assign(names)


@settings(max_examples=150, deadline=None)
@given(names=members(max_size=15), newcomer=NAME)
def test_join_moves_only_the_newcomers_share(names: list[str], newcomer: str) -> None:
    if newcomer in names:
        return
    before = assign(names)
    after = rebalance(before, [*names, newcomer])
    assert_balanced(after, [*names, newcomer])
    n_after = len(names) + 1
    # I3: about 1/(N+1) of the ranges move, never more than 1.3/(N+1); in fact exactly the
    # newcomer's quota moves, and only to the newcomer.
    assert moved(before, after) <= 1.3 * RANGES / n_after
    assert moved(before, after) == loads(after)[newcomer] == RANGES // n_after
    assert all(after[r] in (before[r], newcomer) for r in range(RANGES))


@settings(max_examples=150, deadline=None)
@given(names=members(min_size=2, max_size=16), data=st.data())
def test_leave_moves_only_the_leavers_ranges(names: list[str], data: st.DataObject) -> None:
    leaver = data.draw(st.sampled_from(names))
    survivors = [name for name in names if name != leaver]
    before = assign(names)
    after = rebalance(before, survivors)
    assert_balanced(after, survivors)
    assert moved(before, after) == loads(before)[leaver]
    assert all(after[r] == before[r] for r in range(RANGES) if before[r] != leaver)


# A history: each step adds a fresh member or removes one, as a ring sees it over time.
HISTORY = st.lists(st.tuples(st.booleans(), NAME, st.integers(0, 15)), min_size=1, max_size=30)


@settings(max_examples=75, deadline=None)
@given(first=members(max_size=8), history=HISTORY)
def test_every_step_of_a_history_is_balanced_and_minimal(
    first: list[str], history: list[tuple[bool, str, int]]
) -> None:
    current = list(first)
    assignment = assign(current)
    for join, name, pick in history:
        if join and name not in current and len(current) < 16:
            previous, current = current, [*current, name]
        elif not join and len(current) > 1:
            previous = current
            current = [m for i, m in enumerate(current) if i != pick % len(current)]
        else:
            continue
        step = rebalance(assignment, current)
        assert_balanced(step, current)
        if len(current) > len(previous):
            assert moved(assignment, step) <= 1.3 * RANGES / len(current)
            assert moved(assignment, step) == loads(step)[name]
        else:
            (leaver,) = set(previous) - set(current)
            assert moved(assignment, step) == loads(assignment)[leaver]
        assignment = step


@settings(max_examples=100, deadline=None)
@given(names=members())
def test_unchanged_membership_moves_nothing(names: list[str]) -> None:
    # A member that misses a beat but keeps its lease leaves the set unchanged: no flapping.
    first = assign(names)
    assert rebalance(first, names) == first
    assert rebalance(first, list(reversed(names))) == first


def test_garbage_history_is_repaired() -> None:
    names = ["a", "b", "c"]
    previous = {0: "gone", 1: "a", 5: "b", RANGES + 7: "a"}
    after = rebalance(previous, names)
    assert_balanced(after, names)
    assert after[1] == "a" and after[5] == "b"


def test_no_members_no_assignment() -> None:
    assert assign([]) == {}
    assert rebalance({0: "a"}, []) == {}


def test_more_members_than_ranges_gives_some_nothing() -> None:
    names = [f"pod-{i}" for i in range(10)]
    result = assign(names, ranges=4)
    assert sorted(result) == [0, 1, 2, 3]
    assert len(set(result.values())) == 4


def test_quotas_give_the_extra_ranges_to_the_fullest_members() -> None:
    assert quotas({"a": 10, "b": 200, "c": 46}, ranges=256) == {"a": 85, "b": 86, "c": 85}
    assert sum(quotas({f"m{i}": 0 for i in range(7)}).values()) == RANGES


def test_affinity_is_stable_across_processes() -> None:
    # A fixed value: a salted hash() would change between runs and pods would disagree.
    assert affinity("pod-a", 3) == 0x1640A68F6F453D62
    assert affinity("pod-a", 3) != affinity("pod-a", 4) != affinity("pod-b", 4)


@pytest.mark.parametrize("n", [15, 16, 20, 24])
def test_join_beyond_16_members_is_measured(n: int) -> None:
    # Beyond N*(N+1) <= RANGES the quotas no longer nest; still minimal for these sizes.
    names = [f"telemeter-server-{i}" for i in range(n)]
    before = assign(names)
    after = rebalance(before, [*names, "newcomer"])
    assert moved(before, after) == RANGES // (n + 1)
