"""The lease-based ring kept in Redis: which pod serves which slot ranges (docs/architecture.md D5).

All ring state lives under one hash tag (``{telemeter-ring}`` by default) and is changed only by
the Lua scripts below, which take every time from the Redis server's ``TIME``:

* ``members``  hash  member name -> member lease expiry (ms, Redis time), renewed every heartbeat;
* ``joined``   hash  member name -> when the member was first seen (ms), for hysteresis;
* ``owners``   hash  range -> the member holding its lease;  ``expiries`` range -> lease expiry;
* ``assignment`` hash ``version`` + ``owners`` (JSON): the current range -> member assignment,
  replaced by compare-and-set (:func:`app.assignment.rebalance` keeps it sticky);
* ``meta``     hash  ``replid`` (the primary's replication ID) and ``grace_until`` (ms).

Invariants (docs/architecture.md I1-I5) and how they are kept:

* I1: a range lease is acquired only when free or expired; a pod serves a range only until a
  *local monotonic* deadline computed conservatively from the Redis answer
  (request start + remaining lease - safety margin), so pod clocks never matter. A pod stops
  serving a range before it releases it. A lease write lost in a Redis failover could let two
  pods hold one range, so when the ring's primary changes (its replication ID differs) nobody
  acquires a range for one lease period: every lease granted by the old primary has run out
  locally by then, while holders keep renewing what they still hold.
* I2/I3: only members seen for at least one heartbeat take part in the assignment (a new pod
  takes ranges only after it has been seen for a heartbeat); a member that misses beats keeps
  its ranges until its member lease expires, so a flapping pod moves nothing.
* I4: :meth:`Ring.stop` releases every lease and the member entry; the others notice at their
  next heartbeat and take the ranges at once.
* I5: a crashed pod's member and range leases run out together; the next heartbeat of a
  survivor drops it from the assignment and acquires its ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from app.assignment import rebalance
from app.errors import StoreUnavailable
from app.keys import DEFAULT_RING_NAMESPACE as DEFAULT_NAMESPACE
from app.keys import RANGES, SLOTS_PER_RANGE, RingKeys
from app.store import REDIS_ERRORS
from telemeter.selfmetrics import MetricSet, counter, gauge, histogram

log = logging.getLogger(__name__)

# While some assigned range is not held yet, beat this much faster than the heartbeat, so a
# released range is picked up well within two heartbeats (I4).
FAST_RETRY_FRACTION = 0.25

ClientFactory = Callable[[], Awaitable[RedisCluster]]
# A heartbeat that fails for any of these is counted and retried; leases then run out locally.
FAILURES = (*REDIS_ERRORS, StoreUnavailable)


# ----- keys ----------------------------------------------------------------------------------


# ----- scripts -------------------------------------------------------------------------------

# KEYS: members joined owners expiries assignment meta.
# ARGV: name, lease_ms, renew (csv ranges held locally), acquire (csv), release (csv).
# Returns {now_ms, grace_until_ms, {member, expiry, joined, ...}, {range, expiry|0, ...},
#          assignment_version, assignment_owners_json|false}.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local name, lease = ARGV[1], tonumber(ARGV[2])
-- A new primary (failover, restart) may have lost lease writes: hold back acquisitions (I1).
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
local seen = redis.call('HGET', KEYS[6], 'replid')
local grace = tonumber(redis.call('HGET', KEYS[6], 'grace_until') or '0')
if seen ~= replid then
  if seen or redis.call('HLEN', KEYS[3]) > 0 then grace = now + lease end
  redis.call('HSET', KEYS[6], 'replid', replid, 'grace_until', grace)
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('HDEL', KEYS[2], all[i])
  end
end
redis.call('HSET', KEYS[1], name, now + lease)
redis.call('HSETNX', KEYS[2], name, now)
for r in string.gmatch(ARGV[5], '%d+') do
  if redis.call('HGET', KEYS[3], r) == name then
    redis.call('HDEL', KEYS[3], r)
    redis.call('HDEL', KEYS[4], r)
  end
end
local results = {}
-- Renewals are written with one HSET, not one a range: a sixth less of the heartbeat's cost to
-- Redis and its replica (docs/benchmarks.md, "Fixed costs cut in the evening of 2026-12-03").
local renewed = {}
for r in string.gmatch(ARGV[3], '%d+') do
  local granted = 0
  if redis.call('HGET', KEYS[3], r) == name then
    granted = now + lease
    table.insert(renewed, r)
    table.insert(renewed, granted)
  end
  table.insert(results, tonumber(r))
  table.insert(results, granted)
end
if #renewed > 0 then redis.call('HSET', KEYS[4], unpack(renewed)) end
for r in string.gmatch(ARGV[4], '%d+') do
  local granted = 0
  local owner = redis.call('HGET', KEYS[3], r)
  local expiry = tonumber(redis.call('HGET', KEYS[4], r) or '0')
  if now >= grace and (owner == name or not owner or expiry <= now) then
    granted = now + lease
    redis.call('HSET', KEYS[3], r, name)
    redis.call('HSET', KEYS[4], r, granted)
  end
  table.insert(results, tonumber(r))
  table.insert(results, granted)
end
local members = {}
all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  table.insert(members, all[i])
  table.insert(members, tonumber(all[i + 1]))
  table.insert(members, tonumber(redis.call('HGET', KEYS[2], all[i]) or now))
end
local version = tonumber(redis.call('HGET', KEYS[5], 'version') or '0')
return {now, grace, members, results, version, redis.call('HGET', KEYS[5], 'owners')}
"""

# KEYS: assignment. ARGV: expected version, owners JSON. Returns the new version, or 0 when
# another member replaced the assignment first (the caller re-reads it at its next beat).
SET_ASSIGNMENT = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', version + 1, 'owners', ARGV[2])
return version + 1
"""

# KEYS: members joined owners expiries. ARGV: name. Releases every lease of the member.
LEAVE = """
local owners = redis.call('HGETALL', KEYS[3])
local released = 0
for i = 1, #owners, 2 do
  if owners[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[3], owners[i])
    redis.call('HDEL', KEYS[4], owners[i])
    released = released + 1
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return released
"""


# ----- helpers -------------------------------------------------------------------------------


def default_member_name() -> str:
    """The host name plus a random suffix, so a restarted pod is a new member."""
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


def _csv(ranges: Iterable[int]) -> str:
    return ",".join(str(r) for r in sorted(ranges))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class MemberState:
    """One member as of the last heartbeat answer (times in Redis milliseconds)."""

    name: str
    expiry_ms: int
    joined_ms: int


@dataclass(frozen=True)
class _Beat:
    """One decoded heartbeat answer."""

    now_ms: int
    grace_until_ms: int
    members: tuple[MemberState, ...]
    granted: dict[int, int]
    version: int
    assignment: dict[int, str]


def encode_assignment(assignment: Mapping[int, str]) -> str:
    """The stored form: the sorted member names and, per range, an index into them (or -1)."""
    names = sorted(set(assignment.values()))
    index = {name: i for i, name in enumerate(names)}
    owners = [index.get(assignment.get(r, ""), -1) for r in range(RANGES)]
    return json.dumps({"members": names, "owners": owners}, separators=(",", ":"))


def decode_assignment(blob: bytes | str | None) -> dict[int, str]:
    """The inverse of :func:`encode_assignment`; anything unreadable is an empty assignment."""
    if not blob:
        return {}
    try:
        data = json.loads(blob)
        names: list[str] = data["members"]
        owners: list[int] = data["owners"]
        if len(owners) != RANGES:
            return {}
        return {r: names[i] for r, i in enumerate(owners) if i >= 0}
    except (ValueError, KeyError, IndexError, TypeError):
        log.warning("unreadable ring assignment ignored")
        return {}


def _decode_beat(reply: list[Any]) -> _Beat:
    now_ms, grace, flat_members, flat_results, version, blob = reply
    members = tuple(
        MemberState(name=_text(name), expiry_ms=int(expiry), joined_ms=int(joined))
        for name, expiry, joined in zip(
            flat_members[0::3], flat_members[1::3], flat_members[2::3], strict=True
        )
    )
    granted = {
        int(flat_results[i]): int(flat_results[i + 1]) for i in range(0, len(flat_results), 2)
    }
    return _Beat(
        now_ms=int(now_ms),
        grace_until_ms=int(grace),
        members=members,
        granted=granted,
        version=int(version),
        assignment=decode_assignment(blob),
    )


class _Metrics(MetricSet):
    """The ring's self-metrics, in the registry the server passes in."""

    owned_slots = gauge(
        "telemeter_ring_owned_slots",
        "Hash slots this pod serves now (ranges with a live local lease deadline).",
    )
    handovers = counter(
        "telemeter_ring_handovers", "Range leases this pod acquired or gave up.", "direction"
    )
    renew_duration = histogram(
        "telemeter_ring_renew_duration_seconds",
        "Duration of one ring heartbeat call to Redis.",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    renew_failures = counter(
        "telemeter_ring_renew_failures", "Ring heartbeats that failed (Redis error or timeout)."
    )
    members = gauge("telemeter_ring_members", "Live ring members as of the last heartbeat.")

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        for direction in ("acquired", "released", "lost"):
            self.handovers.labels(direction)


# ----- the ring ------------------------------------------------------------------------------


class Ring:
    """This pod's membership in the ring and the ranges it may serve now."""

    def __init__(
        self,
        client: ClientFactory,
        *,
        name: str,
        registry: CollectorRegistry,
        heartbeat_s: float = 2.0,
        lease_s: float = 10.0,
        namespace: str = DEFAULT_NAMESPACE,
        safety_margin_s: float | None = None,
    ) -> None:
        if not name:
            raise ValueError("ring member name must not be empty")
        if heartbeat_s <= 0 or lease_s < 2 * heartbeat_s:
            raise ValueError(
                f"need 0 < heartbeat ({heartbeat_s}s) and lease ({lease_s}s) >= 2 heartbeats"
            )
        self.name = name
        self.keys = RingKeys(namespace)
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        # 10 % of the lease covers scheduling delay between checking and serving a range.
        self.safety_margin_s = lease_s * 0.1 if safety_margin_s is None else safety_margin_s
        self._client = client
        self._metrics = _Metrics(registry)
        self._metrics.owned_slots.set_function(lambda: float(self.owned_slots()))
        self._deadlines: dict[int, float] = {}  # range -> local monotonic deadline
        self._assigned: frozenset[int] = frozenset()
        self._releasing: set[int] = set()
        self._in_assignment = False
        self._last: _Beat | None = None
        self._last_at = 0.0  # monotonic time of the last answer
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._stopping = asyncio.Event()
        self._stop_lock = asyncio.Lock()

    # ----- public API ------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the ring (one heartbeat, errors are logged) and run the heartbeat task."""
        if self._task is not None or self._stopped:
            return
        await self._beat()
        self._task = asyncio.create_task(self._run(), name=f"ring-heartbeat-{self.name}")

    async def stop(self) -> None:
        """Stop serving at once, then release every lease and the member entry. Idempotent."""
        async with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            held = set(self._deadlines)
            self._deadlines.clear()  # stop serving before anything is released (I1)
            self._assigned = frozenset()
            self._stopping.set()
            if self._task is not None:
                # Let an in-flight heartbeat finish: cancelled mid-call, it could still reach
                # Redis after LEAVE and take leases for a pod that is gone.
                try:
                    async with asyncio.timeout(self.lease_s / 2):
                        await self._task
                except TimeoutError:
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
                self._task = None
            try:
                async with asyncio.timeout(self.lease_s / 2):
                    client = await self._client()
                    released = await client.eval(
                        LEAVE, 4, *self.keys.heartbeat_keys()[:4], self.name
                    )
            except (*FAILURES, TimeoutError) as exc:
                log.warning("ring leave failed member=%s error=%r", self.name, exc)
                return
            self._metrics.handovers.labels("released").inc(len(held))
            log.info("ring left member=%s released=%s", self.name, released)

    def owned_ranges(self) -> frozenset[int]:
        """The ranges whose lease this pod holds with a local deadline still ahead."""
        now = time.monotonic()
        return frozenset(r for r, deadline in self._deadlines.items() if deadline > now)

    def owned_slots(self) -> int:
        """How many hash slots this pod serves now."""
        return len(self.owned_ranges()) * SLOTS_PER_RANGE

    @property
    def assigned_ranges(self) -> frozenset[int]:
        """The ranges the current assignment gives this pod (held or not yet)."""
        return self._assigned

    @property
    def ready(self) -> bool:
        """Joined (part of the assignment) and holding every range the assignment gives it."""
        return not self._stopped and self._in_assignment and self._assigned <= self.owned_ranges()

    async def debug_view(self) -> dict[str, Any]:
        """The ring as this pod saw it at its last heartbeat (JSON-able, for ``/debug/ring``)."""
        owned = sorted(self.owned_ranges())
        view: dict[str, Any] = {
            "name": self.name,
            "namespace": self.keys.namespace,
            "ready": self.ready,
            "heartbeat_s": self.heartbeat_s,
            "lease_s": self.lease_s,
            "ranges": owned,
            "slots": len(owned) * SLOTS_PER_RANGE,
            "assigned_ranges": sorted(self._assigned),
            "members": [],
            "assignment": {},
        }
        beat = self._last
        if beat is None:
            return view
        age_s = time.monotonic() - self._last_at
        counts: dict[str, list[int]] = {}
        for range_id, member in beat.assignment.items():
            counts.setdefault(member, []).append(range_id)
        view["last_heartbeat_age_s"] = round(age_s, 3)
        view["grace_s"] = round(max(0.0, (beat.grace_until_ms - beat.now_ms) / 1000 - age_s), 3)
        view["assignment_version"] = beat.version
        view["assignment"] = {member: ranges for member, ranges in sorted(counts.items())}
        view["members"] = [
            {
                "name": m.name,
                "lease_expires_in_s": round((m.expiry_ms - beat.now_ms) / 1000 - age_s, 3),
                "seen_for_s": round((beat.now_ms - m.joined_ms) / 1000 + age_s, 3),
                "assigned_ranges": len(counts.get(m.name, ())),
            }
            for m in sorted(beat.members, key=lambda m: m.name)
        ]
        return view

    # ----- heartbeat -------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            unsettled = bool(self._assigned - self.owned_ranges()) or bool(self._releasing)
            delay = self.heartbeat_s * (FAST_RETRY_FRACTION if unsettled else 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if not self._stopping.is_set():
                await self._beat()

    async def _beat(self) -> None:
        """Renew, acquire and release leases, then follow the assignment; never raises."""
        beat = await self._exchange()
        if beat is None:
            return
        if await self._follow(beat) and (self._assigned - self.owned_ranges() or self._releasing):
            # The assignment just changed: release and acquire now rather than a beat later.
            await self._exchange()

    async def _exchange(self) -> _Beat | None:
        """One heartbeat script call; updates the local deadlines from Redis's answer."""
        held = self.owned_ranges()
        # A range we hold only renews; one we don't hold must be acquired (free or expired).
        renew = held & self._assigned
        acquire = self._assigned - held
        release = self._releasing - self._assigned
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.lease_s / 2):
                client = await self._client()
                reply = await client.eval(
                    HEARTBEAT,
                    6,
                    *self.keys.heartbeat_keys(),
                    self.name,
                    round(self.lease_s * 1000),
                    _csv(renew),
                    _csv(acquire),
                    _csv(release),
                )
            beat = _decode_beat(reply)
        except (*FAILURES, TimeoutError, ValueError) as exc:
            # Leases simply run out locally if this keeps failing: that is the safety property.
            self._metrics.renew_failures.inc()
            log.warning("ring heartbeat failed member=%s error=%r", self.name, exc)
            return None
        finally:
            self._metrics.renew_duration.observe(time.monotonic() - started)
        if self._stopped:
            return None
        self._releasing -= release
        for range_id, expiry_ms in beat.granted.items():
            if expiry_ms > 0:
                # Conservative: the lease was granted no earlier than `started`.
                remaining_s = (expiry_ms - beat.now_ms) / 1000
                self._deadlines[range_id] = started + remaining_s - self.safety_margin_s
                if range_id in acquire:
                    self._metrics.handovers.labels("acquired").inc()
            elif self._deadlines.pop(range_id, None) is not None:
                self._metrics.handovers.labels("lost").inc()
                log.warning("ring lease lost member=%s range=%d", self.name, range_id)
        self._last, self._last_at = beat, time.monotonic()
        self._metrics.members.set(sum(1 for m in beat.members if m.expiry_ms > beat.now_ms))
        return beat

    async def _follow(self, beat: _Beat) -> bool:
        """Bring the stored assignment up to date and adopt it; True when ours changed."""
        hysteresis_ms = round(self.heartbeat_s * 1000)
        eligible = {
            m.name
            for m in beat.members
            if m.expiry_ms > beat.now_ms and m.joined_ms <= beat.now_ms - hysteresis_ms
        }
        assignment = beat.assignment
        if set(assignment.values()) != eligible:
            proposal = rebalance(assignment, eligible)
            if await self._store_assignment(beat.version, proposal):
                assignment = proposal
        mine = frozenset(r for r, member in assignment.items() if member == self.name)
        # Joined: eligible, and the assignment we follow is the one for the current members.
        self._in_assignment = self.name in eligible and set(assignment.values()) == eligible
        if mine == self._assigned:
            return False
        gone = set(self._deadlines) - mine
        for range_id in gone:
            del self._deadlines[range_id]  # stop serving before releasing (I1)
        # A range assigned back to us before its release went out is kept, not released.
        self._releasing = (self._releasing | gone) - mine
        self._metrics.handovers.labels("released").inc(len(gone))
        log.info(
            "ring assignment changed member=%s ranges=%d released=%d",
            self.name,
            len(mine),
            len(gone),
        )
        self._assigned = mine
        return True

    async def _store_assignment(self, version: int, assignment: Mapping[int, str]) -> bool:
        try:
            client = await self._client()
            stored = await client.eval(
                SET_ASSIGNMENT, 1, self.keys.assignment, version, encode_assignment(assignment)
            )
        except FAILURES as exc:
            self._metrics.renew_failures.inc()
            log.warning("ring assignment update failed member=%s error=%r", self.name, exc)
            return False
        return bool(stored)
