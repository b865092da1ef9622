"""The ring against a real Redis Cluster: invariants I1-I5 and a failover of the ring's primary.

Several :class:`Ring` objects run in this one process, each with its own cluster client and
registry, with short timings (heartbeat 0.2 s, lease 1 s) and a fresh namespace per test. A
sampler checks I1 every few milliseconds: since all rings share one event loop, the owned
ranges of all of them are read at the same instant. A "crashed" pod is simulated by cutting its
client off (every call fails from then on): Redis sees exactly what it sees when a pod dies,
and the cut-off ring also shows that it stops serving on its own once its local deadlines pass.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from app.keys import RANGES, SLOTS, RingKeys
from app.ring import Ring
from dev.redis_cluster import LocalRedisCluster
from telemeter.addresses import parse_redis_url
from tests.conftest import RedisClusterHandle, require_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

HEARTBEAT_S = 0.2
LEASE_S = 1.0
ALL = frozenset(range(RANGES))
# Scheduling slack on a shared 2-core machine, added to every timing bound below.
SLACK_S = 0.15


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def connect(nodes: list[tuple[str, int]], password: str | None) -> RedisCluster:
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        password=password,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retry=Retry(NoBackoff(), retries=1),
    )
    await client.initialize()
    return client


@dataclass
class Pod:
    """One ring with its own client; ``reachable`` False cuts it off from Redis."""

    name: str
    client: RedisCluster
    registry: CollectorRegistry
    ring: Ring
    reachable: bool = True
    stopped: bool = False

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        assert value is not None, name
        return value


@dataclass
class Harness:
    """Rings of one namespace plus an I1 sampler; ``live`` are the ones that should serve."""

    nodes: list[tuple[str, int]]
    password: str | None
    namespace: str = field(default_factory=lambda: f"ring-test-{uuid.uuid4().hex[:10]}")
    pods: list[Pod] = field(default_factory=list)
    samples: int = 0
    violations: list[str] = field(default_factory=list)

    async def add(self, name: str) -> Pod:
        client = await connect(self.nodes, self.password)
        registry = CollectorRegistry()
        pod: Pod

        async def client_of() -> RedisCluster:
            if not pod.reachable:
                raise redis.ConnectionError(f"{name} is cut off by the test")
            return client

        ring = Ring(
            client_of,
            name=name,
            registry=registry,
            heartbeat_s=HEARTBEAT_S,
            lease_s=LEASE_S,
            namespace=self.namespace,
        )
        pod = Pod(name=name, client=client, registry=registry, ring=ring)
        self.pods.append(pod)
        await ring.start()
        return pod

    async def stop(self, pod: Pod) -> None:
        await pod.ring.stop()
        pod.stopped = True

    async def cut_off(self, pod: Pod) -> None:
        """The pod "crashes": from now on, none of its calls reaches Redis."""
        pod.reachable = False
        await pod.client.aclose()

    @property
    def live(self) -> list[Pod]:
        return [pod for pod in self.pods if pod.reachable and not pod.stopped]

    def owners(self) -> dict[int, str]:
        """Range -> the pod serving it now; records an I1 violation if two serve one range."""
        seen: dict[int, str] = {}
        for pod in self.pods:
            for range_id in pod.ring.owned_ranges():
                if range_id in seen:
                    self.violations.append(f"range {range_id}: {seen[range_id]} and {pod.name}")
                seen[range_id] = pod.name
        self.samples += 1
        return seen

    def stable(self) -> bool:
        """I2: every range served by a live pod, and every live pod ready."""
        served = {r for r, name in self.owners().items() if name in {p.name for p in self.live}}
        return served == ALL and all(pod.ring.ready for pod in self.live)

    async def sample_forever(self) -> None:
        while True:
            self.owners()
            await asyncio.sleep(0.005)


@asynccontextmanager
async def harness(nodes: list[tuple[str, int]], password: str | None) -> AsyncIterator[Harness]:
    rings = Harness(nodes=nodes, password=password)
    sampler = asyncio.create_task(rings.sample_forever())
    try:
        yield rings
    finally:
        sampler.cancel()
        for pod in rings.pods:
            await pod.ring.stop()
            if pod.reachable:
                await pod.client.aclose()
    assert rings.violations == [], rings.violations[:5]  # I1 held throughout
    assert rings.samples > 0


@pytest.fixture
async def rings(redis_cluster: RedisClusterHandle) -> AsyncIterator[Harness]:
    nodes, password, _ = parse_redis_url(redis_cluster.url)
    async with harness(nodes, password) as value:
        yield value


async def wait_for(condition: Callable[[], bool], *, within: float, what: str) -> float:
    """Poll ``condition`` every 5 ms; return the seconds it took, fail after ``within`` s."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - began


async def stable(rings: Harness) -> None:
    # I2: stable membership for one lease plus two heartbeats suffices.
    await wait_for(rings.stable, within=LEASE_S + 2 * HEARTBEAT_S + 1.0, what="stable ring")


# ----- tests ---------------------------------------------------------------------------------


async def test_single_member_serves_everything_then_leaves_cleanly(rings: Harness) -> None:
    pod = await rings.add("solo")
    # Hysteresis: a new member takes nothing before it has been seen for a heartbeat.
    assert pod.ring.owned_ranges() == frozenset() and not pod.ring.ready
    await stable(rings)
    assert pod.ring.owned_ranges() == ALL
    assert pod.ring.owned_slots() == SLOTS
    assert pod.metric("telemeter_ring_owned_slots") == SLOTS
    assert pod.metric("telemeter_ring_members") == 1
    assert pod.metric("telemeter_ring_handovers_total", {"direction": "acquired"}) == RANGES
    assert pod.metric("telemeter_ring_renew_duration_seconds_count") >= 2
    assert pod.metric("telemeter_ring_renew_failures_total") == 0
    view = await pod.ring.debug_view()
    assert view["ready"] is True
    assert view["ranges"] == list(range(RANGES)) and view["slots"] == SLOTS
    assert view["assignment"] == {"solo": list(range(RANGES))}
    (member,) = view["members"]
    assert member["name"] == "solo" and 0 < member["lease_expires_in_s"] <= LEASE_S

    await rings.stop(pod)
    await pod.ring.stop()  # idempotent
    assert pod.ring.owned_ranges() == frozenset() and not pod.ring.ready
    keys = RingKeys(rings.namespace)
    assert await pod.client.hlen(keys.members) == 0
    assert await pod.client.hlen(keys.owners) == 0


async def test_i1_i2_ranges_stay_exclusive_and_covered_through_churn(rings: Harness) -> None:
    pods = [await rings.add(f"churn-{i}") for i in range(3)]
    await stable(rings)
    joiner = await rings.add("churn-3")
    await asyncio.sleep(HEARTBEAT_S / 2)
    await rings.stop(pods[0])
    await asyncio.sleep(HEARTBEAT_S)
    await rings.cut_off(pods[1])
    late = await rings.add("churn-4")
    await asyncio.sleep(HEARTBEAT_S * 1.5)
    await rings.stop(joiner)
    await stable(rings)  # survivors: churn-2 and churn-4
    assert {pod.name for pod in rings.live} == {"churn-2", "churn-4"}
    assert len(late.ring.owned_ranges()) == RANGES // 2
    assert rings.samples > 100


async def test_i3_fourth_member_moves_a_quarter_of_the_ranges(rings: Harness) -> None:
    for i in range(3):
        await rings.add(f"grow-{i}")
    await stable(rings)
    before = rings.owners()
    newcomer = await rings.add("grow-3")
    await stable(rings)
    after = rings.owners()
    moved = {r for r in ALL if before[r] != after[r]}
    assert len(moved) <= 1.3 * RANGES / 4
    assert moved == newcomer.ring.owned_ranges()  # only ranges the newcomer took moved
    assert len(moved) == RANGES // 4


async def test_i4_graceful_stop_hands_over_within_two_heartbeats(rings: Harness) -> None:
    pods = [await rings.add(f"calm-{i}") for i in range(3)]
    await stable(rings)
    leaver = pods[0]
    ranges = leaver.ring.owned_ranges()
    assert len(ranges) in (RANGES // 3, RANGES // 3 + 1)
    await rings.stop(leaver)
    took = await wait_for(
        lambda: ranges <= set(rings.owners()), within=2 * HEARTBEAT_S + SLACK_S, what="hand-over"
    )
    assert took <= 2 * HEARTBEAT_S + SLACK_S
    await stable(rings)
    assert all(len(pod.ring.owned_ranges()) == RANGES // 2 for pod in pods[1:])
    assert sum(p.metric("telemeter_ring_members") for p in pods[1:]) == 4  # both see 2 members


async def test_i5_crashed_member_is_replaced_within_a_lease_and_two_heartbeats(
    rings: Harness,
) -> None:
    pods = [await rings.add(f"crash-{i}") for i in range(3)]
    await stable(rings)
    victim = pods[1]
    ranges = victim.ring.owned_ranges()
    await rings.cut_off(victim)
    crashed_at = time.monotonic()
    # The cut-off ring stops serving by itself once its local deadlines pass (before anyone
    # else may take over: the sampler would have caught an overlap).
    await wait_for(
        lambda: not victim.ring.owned_ranges(), within=LEASE_S, what="victim stops serving"
    )
    await wait_for(
        lambda: ranges <= set(rings.owners()),
        within=LEASE_S + 2 * HEARTBEAT_S + SLACK_S,
        what="crash hand-over",
    )
    assert time.monotonic() - crashed_at <= LEASE_S + 2 * HEARTBEAT_S + SLACK_S
    await stable(rings)
    assert victim.metric("telemeter_ring_renew_failures_total") > 0


async def test_a_member_missing_beats_keeps_its_ranges(rings: Harness) -> None:
    pods = [await rings.add(f"flap-{i}") for i in range(2)]
    await stable(rings)
    before = rings.owners()
    version = (await pods[0].ring.debug_view())["assignment_version"]
    # Two missed heartbeats: well within the member lease, so nothing is reassigned.
    pods[1].reachable = False
    await asyncio.sleep(2 * HEARTBEAT_S)
    pods[1].reachable = True
    await asyncio.sleep(2 * HEARTBEAT_S)
    assert rings.owners() == before
    assert (await pods[0].ring.debug_view())["assignment_version"] == version
    assert pods[1].metric("telemeter_ring_renew_failures_total") >= 1


# ----- failover of the ring's primary --------------------------------------------------------


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A private cluster whose ring primary this test kills; fast failure detection."""
    cluster = LocalRedisCluster(
        base_dir=tmp_path, redis_server=require_redis_server(), node_timeout_ms=1000
    )
    with cluster:
        yield cluster


def replica_of(cluster: LocalRedisCluster, primary: int) -> int:
    for node in cluster.nodes:
        if node.role == "replica":
            with cluster.client(node.port) as conn:
                if int(conn.info("replication")["master_port"]) == primary:
                    return node.port
    raise AssertionError(f"primary {primary} has no replica")


def grace_until_ms(cluster: LocalRedisCluster, keys: RingKeys, port: int) -> int:
    with cluster.client(port) as conn:
        return int(conn.hget(keys.meta, "grace_until") or 0)


async def test_failover_of_the_ring_primary_keeps_i1_and_recovers(
    own_cluster: LocalRedisCluster,
) -> None:
    async with harness(own_cluster.startup_nodes, own_cluster.password) as rings:
        for i in range(3):
            await rings.add(f"fail-{i}")
        await stable(rings)
        keys = RingKeys(rings.namespace)
        slot = key_slot(keys.members.encode())
        primary = own_cluster.primary_for_slot(slot)
        assert grace_until_ms(own_cluster, keys, primary) == 0  # a fresh ring has no grace

        # A manual failover loses nothing but changes the primary: the new one holds back
        # acquisitions for a lease, while holders keep renewing what they serve.
        replica = replica_of(own_cluster, primary)
        with own_cluster.client(replica) as conn:
            conn.execute_command("CLUSTER", "FAILOVER")
        await wait_for(
            lambda: own_cluster.primary_for_slot(slot) == replica, within=10.0, what="takeover"
        )
        await wait_for(
            lambda: grace_until_ms(own_cluster, keys, replica) > 0, within=1.0, what="grace"
        )
        await stable(rings)

        # A crash of the primary: every lease runs out locally during the failover.
        own_cluster.kill_node(replica)
        killed_at = time.monotonic()

        def promoted() -> bool:
            try:
                return own_cluster.primary_for_slot(slot) != replica
            except Exception:  # no node answers for a moment
                return False

        await wait_for(promoted, within=20.0, what="replica promoted")
        failover_s = time.monotonic() - killed_at
        await wait_for(
            rings.stable, within=LEASE_S + 4 * HEARTBEAT_S + 2.0, what="served after failover"
        )
        recovered_s = time.monotonic() - killed_at
        assert recovered_s <= failover_s + LEASE_S + 4 * HEARTBEAT_S + 2.0
        assert rings.samples > 100
