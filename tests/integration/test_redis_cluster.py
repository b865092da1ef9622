"""The local Redis Cluster launcher: topology, AOF, client access, restarts and failover.

Read-only checks use the shared session cluster; the destructive ones (full restart, primary
SIGKILL) each get their own :class:`LocalRedisCluster` so other tests never see the damage.
The ``parse_redis_url`` tests at the end are pure and carry no marker.
"""

from __future__ import annotations

import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from dev.redis_cluster import LocalRedisCluster
from telemeter.addresses import parse_redis_url
from tests.conftest import RedisClusterHandle, require_redis_server

FAILOVER_BOUND_S = 20.0
AOF_FSYNC_PERIOD_S = 1.0  # appendfsync everysec (dev/redis_cluster.py)


def cluster_client(nodes: list[tuple[str, int]], password: str | None) -> RedisCluster:
    # redis-py leaves ClusterNode.__init__ unannotated.
    startup = [ClusterNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(
        startup_nodes=startup,
        password=password,
        decode_responses=True,
    )


def local_of(handle: RedisClusterHandle) -> LocalRedisCluster:
    if handle.local is None:
        pytest.skip("shared cluster comes from TELEMETER_TEST_REDIS_URL; launcher not under test")
    return handle.local


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A private cluster that a test may break."""
    with LocalRedisCluster(base_dir=tmp_path, redis_server=require_redis_server()) as cluster:
        yield cluster


# ----- shared cluster ----------------------------------------------------------------------


@pytest.mark.integration
def test_three_primaries_each_with_one_replica(redis_cluster: RedisClusterHandle) -> None:
    cluster = local_of(redis_cluster)
    nodes = cluster.nodes
    assert sorted(node.role for node in nodes) == ["primary"] * 3 + ["replica"] * 3
    assert all(node.pid is not None for node in nodes)
    assert len({node.dir for node in nodes}) == 6
    for node in nodes:
        if node.role == "primary":
            with cluster.client(node.port) as conn:
                assert conn.info("replication")["connected_slaves"] == 1


@pytest.mark.integration
def test_every_node_has_aof_everysec_and_no_rdb(redis_cluster: RedisClusterHandle) -> None:
    cluster = local_of(redis_cluster)
    for node in cluster.nodes:
        with cluster.client(node.port) as conn:
            assert conn.config_get("appendonly") == {"appendonly": "yes"}
            assert conn.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert conn.config_get("save") == {"save": ""}
            assert conn.config_get("dir") == {"dir": str(node.dir)}


@pytest.mark.integration
def test_url_lists_the_primaries(redis_cluster: RedisClusterHandle) -> None:
    cluster = local_of(redis_cluster)
    primaries = sorted(node.port for node in cluster.nodes if node.role == "primary")
    nodes, password, _ = parse_redis_url(cluster.url)
    assert password is None
    assert nodes == cluster.startup_nodes
    assert sorted(port for _, port in nodes) == primaries
    assert cluster.url.startswith("redis://127.0.0.1:")


@pytest.mark.integration
def test_cluster_state_ok_with_all_slots(redis_cluster: RedisClusterHandle) -> None:
    for host, port in redis_cluster.startup_nodes:
        with redis.Redis(host=host, port=port, password=redis_cluster.password) as conn:
            info = conn.execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info
        assert "cluster_slots_assigned:16384" in info


@pytest.mark.integration
def test_cluster_client_reads_and_writes_across_slots(redis_cluster: RedisClusterHandle) -> None:
    keys = {f"launcher-test:{i}": f"value-{i}" for i in range(60)}
    with cluster_client(redis_cluster.startup_nodes, redis_cluster.password) as client:
        try:
            for key, value in keys.items():
                assert client.set(key, value, ex=60)
            owners = {client.get_node_from_key(key).port for key in keys}
            assert {client.get(key) for key in keys} == set(keys.values())
        finally:
            for key in keys:
                client.delete(key)
    assert len({key_slot(key.encode()) for key in keys}) == len(keys)
    assert len(owners) == 3  # 60 random slots land on every primary


@pytest.mark.integration
def test_primary_for_slot_matches_the_client_view(redis_cluster: RedisClusterHandle) -> None:
    cluster = local_of(redis_cluster)
    with cluster_client(cluster.startup_nodes, cluster.password) as client:
        for slot in (0, 5461, 5462, 10922, 10923, 16383):
            assert cluster.primary_for_slot(slot) == client.nodes_manager.slots_cache[slot][0].port
    with pytest.raises(ValueError):
        cluster.primary_for_slot(16384)


# ----- private clusters (destructive) ------------------------------------------------------


@pytest.mark.integration
def test_keys_survive_full_restart_from_aof(own_cluster: LocalRedisCluster) -> None:
    graceful = {f"graceful:{i}": str(i) for i in range(30)}
    killed = {f"killed:{i}": str(i) for i in range(30)}
    with cluster_client(own_cluster.startup_nodes, None) as client:
        for key, value in graceful.items():
            client.set(key, value)
    pids_before = {node.pid for node in own_cluster.nodes}

    own_cluster.stop_all(graceful=True)  # SIGTERM: redis fsyncs the AOF before exiting
    assert all(node.pid is None for node in own_cluster.nodes)
    own_cluster.start_all()
    assert {node.pid for node in own_cluster.nodes}.isdisjoint(pids_before)

    with cluster_client(own_cluster.startup_nodes, None) as client:
        assert {key: client.get(key) for key in graceful} == graceful
        for key, value in killed.items():
            client.set(key, value)
    # On purpose: nothing shows when Redis has fsynced; past one period the writes are on disk.
    time.sleep(AOF_FSYNC_PERIOD_S + 0.2)
    own_cluster.stop_all(graceful=False)
    own_cluster.start_all()

    with cluster_client(own_cluster.startup_nodes, None) as client:
        assert {key: client.get(key) for key in graceful | killed} == graceful | killed


@pytest.mark.integration
def test_sigkilled_primary_is_replaced_by_its_replica(own_cluster: LocalRedisCluster) -> None:
    key = "failover-probe"
    slot = key_slot(key.encode())
    old_primary = own_cluster.primary_for_slot(slot)
    with own_cluster.client(old_primary) as conn:
        conn.set(key, "kept")
        # WAIT: the replica has the write before the primary dies.
        assert conn.execute_command("WAIT", 1, 2000) == 1
        replica_port = conn.info("replication")["slave0"]["port"]

    began = time.monotonic()
    own_cluster.kill_node(old_primary, signal.SIGKILL)
    while own_cluster.primary_for_slot(slot) == old_primary:
        assert time.monotonic() - began < FAILOVER_BOUND_S, "no failover in time"
        time.sleep(0.1)
    assert own_cluster.primary_for_slot(slot) == replica_port
    own_cluster.wait_ok(timeout=FAILOVER_BOUND_S)
    roles = {node.port: node.role for node in own_cluster.nodes}
    assert roles[replica_port] == "primary"

    with cluster_client(own_cluster.startup_nodes, None) as client:
        assert client.get(key) == "kept"

    own_cluster.start_node(old_primary)  # reloads its AOF and rejoins as a replica
    own_cluster.wait_ok(timeout=FAILOVER_BOUND_S)
    roles = {node.port: node.role for node in own_cluster.nodes}
    assert roles[old_primary] == "replica"
    with own_cluster.client(old_primary) as conn:
        assert conn.info("replication")["master_port"] == replica_port


# ----- CLI ---------------------------------------------------------------------------------


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout}s")
    return proc.stdout.readline().decode().strip()


def _wait_port_closed(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, f"redis on port {port} still answers"
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_cli_nodes_end_with_the_launcher(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM stops the nodes in order; on SIGKILL the kernel kills them (PDEATHSIG)."""
    require_redis_server()
    with (tmp_path / "stderr.log").open("wb") as stderr:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "dev.redis_cluster"),
                *("--dir", str(tmp_path / "data"), "--primaries", "1", "--replicas", "0"),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        url = _read_line(proc, timeout=30)
        [(_, port)], _, _ = parse_redis_url(url)
        with redis.Redis(port=port) as conn:
            assert conn.set("cli-probe", "1")
            redis_pid = conn.info("server")["process_id"]
        proc.send_signal(sig)
        returncode = proc.wait(timeout=15)
        assert returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        _wait_port_closed(port, timeout=10)
        assert not _is_running(redis_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _is_running(pid: int) -> bool:
    """True unless the process is gone or a zombie (no reaper in some containers)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ----- parse_redis_url (pure) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:7000", ([("127.0.0.1", 7000)], None, False)),
        ("127.0.0.1:7000", ([("127.0.0.1", 7000)], None, False)),
        (
            "redis://:s3cret@a:1,redis://:s3cret@b:2, c:3 ",
            ([("a", 1), ("b", 2), ("c", 3)], "s3cret", False),
        ),
        ("redis://:p%40ss@h:6379/0", ([("h", 6379)], "p@ss", False)),
        ("redis://[::1]:7001/,[::1]:7002", ([("::1", 7001), ("::1", 7002)], None, False)),
        ("rediss://h:1", ([("h", 1)], None, True)),
        ("rediss://:pw@a:1,b:2", ([("a", 1), ("b", 2)], "pw", True)),  # b:2 follows a's scheme
    ],
)
def test_parse_redis_url_accepts(
    url: str, expected: tuple[list[tuple[str, int]], str | None, bool]
) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty Redis URL"),
        ("a:1,,b:2", "empty entry"),
        ("localhost", "no host:port"),
        ("redis://h", "no host:port"),
        ("a:0", "bad port"),
        ("a:65536", "bad port"),
        ("redis://h:x", "bad port"),
        ("http://h:1", "unsupported scheme"),
        ("rediss://a:1,redis://b:2", "mixes redis:// and rediss://"),
        ("redis://h:1/3", "only database 0"),
        ("redis://user:pw@h:1", "use --redis-username"),
        ("redis://:one@a:1,redis://:two@b:2", "different passwords"),
    ],
)
def test_parse_redis_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_parse_redis_url_errors_hide_the_password() -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_redis_url("redis://:topsecret@h:99999")
    assert "topsecret" not in str(excinfo.value)


@pytest.mark.integration
def test_password_cluster_requires_auth_and_replicates(tmp_path: Path) -> None:
    with LocalRedisCluster(
        base_dir=tmp_path,
        primaries=1,
        replicas_per_primary=1,
        password="p@ss word",
        redis_server=require_redis_server(),
    ) as cluster:
        nodes, password, _ = parse_redis_url(cluster.url)
        assert password == "p@ss word"
        assert nodes == cluster.startup_nodes
        # wait_ok already saw the replica's link up, which needs masterauth.
        assert sorted(node.role for node in cluster.nodes) == ["primary", "replica"]
        with cluster_client(nodes, password) as client:
            assert client.set("auth-probe", "1")
        # No retries: redis-py would otherwise retry the refused AUTH with backoff.
        no_retry = Retry(NoBackoff(), retries=0)
        with (
            pytest.raises(redis.AuthenticationError),
            redis.Redis(port=nodes[0][1], retry=no_retry) as conn,
        ):
            conn.get("auth-probe")
