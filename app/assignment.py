"""Which ring member serves which slot range: a pure, deterministic, sticky rebalance.

docs/architecture.md D5 asks for an assignment of the ``RANGES`` ranges to the live members
that is balanced and moves few ranges when membership changes (invariant I3). Plain rendezvous
(HRW) hashing is not balanced enough at 256 ranges over 16 members (binomial spread, about
+-25 % at one standard deviation), and HRW with bounded loads, computed afresh from the member
set, moves up to 2-2.4x the minimum on a join (the tight capacities cascade). So the assignment
is *sticky*: the ring keeps the current assignment in Redis and :func:`rebalance` derives the
next one from it:

* every member gets a quota of ``R // N`` or ``R // N + 1`` ranges (exact balance); the larger
  quotas go to the members already holding the most, so nobody has to give up a range only to
  take another one;
* a member keeps every range it holds up to its quota; above it, it gives up the ranges it has
  the least affinity for (affinity is a stable hash of member and range, as in HRW);
* the freed ranges and those of departed members go, by highest affinity, to members below quota.

What this guarantees (for ``N * (N + 1) <= R``, i.e. up to 15 members at 256 ranges; the
property tests check it up to 16 and measure the rest): when a member joins, exactly the ranges it
receives move, ``R // (N + 1)`` of them; when a member leaves, exactly its ranges move; an
unchanged member set moves nothing. A first assignment (no history) is a pure function of the
member names: HRW greedy matching with the same quotas.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from app.keys import RANGES


def affinity(member: str, range_id: int) -> int:
    """The stable HRW score of (member, range); never Python's salted ``hash()``."""
    digest = hashlib.blake2b(f"{member}\x00{range_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _member_rank(member: str) -> bytes:
    """A stable tie-breaker between members that is not biased by how names are spelled."""
    return hashlib.blake2b(member.encode(), digest_size=8).digest()


def quotas(loads: Mapping[str, int], *, ranges: int = RANGES) -> dict[str, int]:
    """How many ranges each member should hold: ``ranges // N``, plus one for ``ranges % N``
    members, those holding the most now (ties broken by a hash of the name)."""
    if not loads:
        return {}
    base, extra = divmod(ranges, len(loads))
    order = sorted(loads, key=lambda m: (-loads[m], _member_rank(m), m))
    return {member: base + (1 if index < extra else 0) for index, member in enumerate(order)}


def rebalance(
    previous: Mapping[int, str], members: Iterable[str], *, ranges: int = RANGES
) -> dict[int, str]:
    """The next assignment (range -> member) for ``members``, moving as little as possible.

    ``previous`` is the current assignment (possibly empty, partial or naming departed
    members). The result covers every range in ``[0, ranges)`` when there is a member and is
    a deterministic function of its inputs (the order of ``members`` does not matter).
    """
    live = sorted(set(members))
    if not live:
        return {}
    held: dict[str, list[int]] = {member: [] for member in live}
    pool: list[int] = []
    for range_id in range(ranges):
        owner = previous.get(range_id)
        if owner in held:
            held[owner].append(range_id)
        else:
            pool.append(range_id)
    target = quotas({member: len(owned) for member, owned in held.items()}, ranges=ranges)
    for member, owned in held.items():
        excess = len(owned) - target[member]
        if excess > 0:
            # Give up the ranges this member likes least, so a fresh assignment looks like HRW.
            owned.sort(key=lambda r: (affinity(member, r), r))
            pool.extend(owned[:excess])
            del owned[:excess]
    hungry = [member for member in live if len(held[member]) < target[member]]
    # Greedy matching by affinity: the best (range, member) pairs first, until quotas are full.
    pairs = sorted(
        ((affinity(member, r), r, member) for r in pool for member in hungry), reverse=True
    )
    result = {r: member for member, owned in held.items() for r in owned}
    for _, range_id, member in pairs:
        if range_id not in result and len(held[member]) < target[member]:
            result[range_id] = member
            held[member].append(range_id)
    return dict(sorted(result.items()))


def assign(members: Iterable[str], *, ranges: int = RANGES) -> dict[int, str]:
    """The assignment of ``members`` with no history (what a fresh ring starts from)."""
    return rebalance({}, members, ranges=ranges)


def moved(before: Mapping[int, str], after: Mapping[int, str]) -> int:
    """How many ranges change owner (or gain or lose one) between two assignments."""
    return sum(1 for r in before.keys() | after.keys() if before.get(r) != after.get(r))
