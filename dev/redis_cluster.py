"""A local Redis Cluster made of ``redis-server`` processes on loopback, for tests and dev.

:class:`LocalRedisCluster` writes one ``redis.conf`` per node (AOF on, the same durability
settings as production: ``appendfsync everysec`` plus one replica per primary), starts the
processes, forms the cluster with ``CLUSTER ADDSLOTSRANGE`` / ``MEET`` / ``REPLICATE`` and waits
until the cluster is healthy. It also offers fault injection (kill, restart, full stop and
restart from AOF) for the durability and failover tests.

The nodes never outlive the Python process that started them: on Linux each child asks the
kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), and an ``atexit`` hook stops
them on a normal exit. PDEATHSIG follows the *thread* that forked, so start the cluster from a
long-lived thread (the main thread in pytest and in the CLI).

:func:`parse_redis_url` parses the comma-separated URL list that the server's ``--redis-url``
flag and :attr:`LocalRedisCluster.url` use. The console script ``telemeter-redis-cluster`` is
:func:`main`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import quote

import redis

from dev.ports import free_redis_ports
from dev.processes import parent_death_hook
from dev.redis_security import RedisSecurity

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
SLOT_COUNT = 16384
APPENDFSYNC_POLICIES = ("always", "everysec", "no")

_START_ATTEMPTS = 3  # fresh ports per attempt: a probed port can be taken before redis binds it
_PING_TIMEOUT_S = 10.0
_FORM_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.05
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# CLUSTER NODES flags that mean "this peer is not (yet) a healthy member".
_UNHEALTHY_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


class LocalRedisClusterError(RuntimeError):
    """The local cluster could not be started, formed or made healthy in time."""


@dataclass(frozen=True)
class NodeRecord:
    """One node as seen now: ``role`` is "primary", "replica" or "unknown" (no node answered)."""

    port: int
    pid: int | None  # None while the node is not running
    role: str
    dir: Path


@dataclass(frozen=True)
class _PeerEntry:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    slot_ranges: tuple[tuple[int, int], ...]

    @property
    def role(self) -> str:
        if "master" in self.flags:
            return "primary"
        if "slave" in self.flags:
            return "replica"
        return "unknown"


def _parse_cluster_nodes(text: str) -> list[_PeerEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        # Address is "ip:port@cport[,hostname]"; the ip is empty before the first MEET.
        port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1] or 0)
        ranges = []
        for token in fields[8:]:
            if token.startswith("["):  # slot migration markers, not ownership
                continue
            first, _, last = token.partition("-")
            ranges.append((int(first), int(last or first)))
        entries.append(
            _PeerEntry(
                node_id=fields[0],
                port=port,
                flags=frozenset(fields[2].split(",")),
                slot_ranges=tuple(ranges),
            )
        )
    return entries


def _parse_info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value for key, value in pairs}


def _conf_string(value: str) -> str:
    """Quote a value for redis.conf (double quotes with backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wait_until(check: Callable[[], str | None], *, timeout: float, what: str) -> None:
    """Poll ``check`` (None means done, a string says what is still missing) until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        missing = check()
        if missing is None:
            return
        if time.monotonic() >= deadline:
            raise LocalRedisClusterError(
                f"timed out after {timeout}s waiting for {what}: {missing}"
            )
        time.sleep(_POLL_INTERVAL_S)


@dataclass
class _Node:
    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "redis.conf"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        for name in ("redis.log", "stdout.log"):
            path = self.dir / name
            if path.exists():
                text = path.read_text(errors="replace").strip()
                if text:
                    return "\n".join(text.splitlines()[-lines:])
        return "(no log output)"


class LocalRedisCluster:
    """A Redis Cluster of ``redis-server`` processes on 127.0.0.1, one data dir per node.

    Node ``i < primaries`` starts as a primary owning an even share of the 16384 slots; the
    remaining nodes are replicas, assigned round-robin to the primaries. With ``security``
    (`dev.redis_security.RedisSecurity`) every port is TLS only and the nodes have its ACL users;
    ``require_full_coverage`` sets Redis's ``cluster-require-full-coverage`` (default here: no).
    """

    def __init__(
        self,
        *,
        base_dir: Path,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        redis_server: str = "redis-server",
        node_timeout_ms: int = 2000,
        appendfsync: str = "everysec",
        password: str | None = None,
        security: RedisSecurity | None = None,
        require_full_coverage: bool = False,
    ) -> None:
        if primaries < 1:
            raise ValueError(f"primaries must be >= 1, got {primaries}")
        if replicas_per_primary < 0:
            raise ValueError(f"replicas_per_primary must be >= 0, got {replicas_per_primary}")
        if appendfsync not in APPENDFSYNC_POLICIES:
            raise ValueError(
                f"appendfsync must be one of {APPENDFSYNC_POLICIES}, got {appendfsync!r}"
            )
        if node_timeout_ms < 100:
            raise ValueError(f"node_timeout_ms must be >= 100, got {node_timeout_ms}")
        self.base_dir = Path(base_dir)
        self.primaries = primaries
        self.replicas_per_primary = replicas_per_primary
        self.redis_server = redis_server
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.password = password
        self.security = security  # TLS only, and ACL users (dev/redis_security.py)
        self.require_full_coverage = require_full_coverage
        self._nodes: list[_Node] = []
        self._atexit_registered = False

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start a fresh cluster and return once it is healthy (see :meth:`wait_ok`)."""
        if self._nodes:
            raise LocalRedisClusterError("cluster already started; use start_all() to restart it")
        executable = shutil.which(self.redis_server)
        if executable is None:
            raise LocalRedisClusterError(f"{self.redis_server!r} not found on PATH")
        self.redis_server = executable
        self.base_dir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        try:
            self._start_processes()
            self._form_cluster()
            self.wait_ok(timeout=_FORM_TIMEOUT_S)
        except BaseException:
            self.stop()
            self._nodes = []
            raise
        logger.info(
            "redis cluster started url=%s nodes=%d seconds=%.2f base_dir=%s",
            self.url,
            len(self._nodes),
            time.monotonic() - began,
            self.base_dir,
        )

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a timeout). Safe to call repeatedly."""
        self.stop_all(graceful=True)
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----- addresses -------------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of the initial primaries; a cluster client discovers the rest."""
        if not self._nodes:
            raise LocalRedisClusterError("cluster not started")
        return [(HOST, node.port) for node in self._nodes[: self.primaries]]

    @property
    def url(self) -> str:
        """Comma-separated ``redis://[:password@]127.0.0.1:port`` of the initial primaries
        (``rediss://127.0.0.1:port`` with ``security``: the server's user is given by flags)."""
        if self.security is not None:
            return ",".join(f"rediss://{host}:{port}" for host, port in self.startup_nodes)
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return ",".join(f"redis://{auth}{host}:{port}" for host, port in self.startup_nodes)

    @property
    def ports(self) -> list[int]:
        """Client ports of all nodes, primaries first (as started)."""
        return [node.port for node in self._nodes]

    # ----- inspection ------------------------------------------------------------------------

    def client(self, port: int, *, timeout: float = 2.0) -> redis.Redis:
        """A plain (non-cluster) client for one node (the administrator's, with ``security``);
        the caller closes it."""
        auth = self.security.client_kwargs() if self.security else {"password": self.password}
        return redis.Redis(
            host=HOST,
            port=port,
            **auth,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )

    def _command(self, port: int, *args: str | int) -> Any:
        with self.client(port) as conn:
            return conn.execute_command(*args)

    def _view(self, port: int) -> list[_PeerEntry]:
        return _parse_cluster_nodes(self._command(port, "CLUSTER", "NODES"))

    def _any_view(self) -> list[_PeerEntry]:
        """CLUSTER NODES from the first running node that answers."""
        for node in self._nodes:
            if node.alive:
                with contextlib.suppress(redis.RedisError):
                    return self._view(node.port)
        raise LocalRedisClusterError("no running node answers CLUSTER NODES")

    @property
    def nodes(self) -> list[NodeRecord]:
        """Every node with its pid and its current role (its own view, else a peer's)."""
        peer_roles: dict[int, str] = {}
        with contextlib.suppress(LocalRedisClusterError):
            peer_roles = {entry.port: entry.role for entry in self._any_view()}
        records = []
        for node in self._nodes:
            role = "unknown"
            if node.alive:
                with contextlib.suppress(redis.RedisError):
                    own = [e for e in self._view(node.port) if "myself" in e.flags]
                    role = own[0].role if own else role
            if role == "unknown":
                role = peer_roles.get(node.port, "unknown")
            pid = node.process.pid if node.alive and node.process else None
            records.append(NodeRecord(port=node.port, pid=pid, role=role, dir=node.dir))
        return records

    def primary_for_slot(self, slot: int) -> int:
        """Port of the node that owns ``slot`` in the slot table of the first running node."""
        if not 0 <= slot < SLOT_COUNT:
            raise ValueError(f"slot must be in [0, {SLOT_COUNT}), got {slot}")
        for entry in self._any_view():
            if "master" in entry.flags and any(a <= slot <= b for a, b in entry.slot_ranges):
                return entry.port
        raise LocalRedisClusterError(f"slot {slot} is not assigned")

    # ----- fault injection -------------------------------------------------------------------

    def kill_node(self, port: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to one node; for terminating signals, wait until it has exited.

        SIGSTOP works too (a hung node); :meth:`stop` resumes stopped nodes before ending them.
        """
        node = self._node(port)
        if node.process is None or not node.alive:
            raise LocalRedisClusterError(f"node {port} is not running")
        node.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            node.process.send_signal(signal.SIGCONT)
            node.process.wait(timeout=_STOP_TIMEOUT_S)
        logger.info("redis node signalled port=%d signal=%s", port, sig.name)

    def start_node(self, port: int) -> None:
        """Restart one node with its config and data dir (AOF reload); wait until it answers.

        It rejoins the cluster by itself; call :meth:`wait_ok` to wait for that.
        """
        node = self._node(port)
        if node.alive:
            raise LocalRedisClusterError(f"node {port} is already running")
        self._spawn(node)
        self._wait_ping([node])

    def stop_all(self, graceful: bool = True) -> None:
        """Stop every running node; graceful (SIGTERM) shutdown fsyncs the AOF first."""
        running = [node for node in self._nodes if node.alive and node.process is not None]
        for node in running:
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            node.process.send_signal(signal.SIGCONT)  # a SIGSTOPped node cannot act on SIGTERM
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("redis node ignored SIGTERM, killing port=%d", node.port)
                node.process.kill()
                node.process.wait()
        if running:
            logger.info("redis nodes stopped count=%d graceful=%s", len(running), graceful)

    def start_all(self, timeout: float = _FORM_TIMEOUT_S) -> None:
        """Restart every stopped node from its AOF and wait until the cluster is healthy."""
        if not self._nodes:
            raise LocalRedisClusterError("cluster not started")
        stopped = [node for node in self._nodes if not node.alive]
        for node in stopped:
            self._spawn(node)
        self._wait_ping(stopped)
        self.wait_ok(timeout=timeout)

    def wait_ok(self, timeout: float = _FORM_TIMEOUT_S) -> None:
        """Wait until every running node is healthy.

        Healthy means: ``cluster_state:ok`` with all 16384 slots assigned, every node known,
        no running node flagged as failing by any running peer, and every replica reporting
        ``master_link_status:up``.
        """
        _wait_until(self._health_problem, timeout=timeout, what="a healthy cluster")

    # ----- internals -------------------------------------------------------------------------

    def _node(self, port: int) -> _Node:
        for node in self._nodes:
            if node.port == port:
                return node
        raise LocalRedisClusterError(f"no node with port {port}")

    def _write_conf(self, node: _Node) -> None:
        lines = [
            f"port {node.port}",
            f"bind {HOST}",
            "protected-mode no",
            "daemonize no",
            f"dir {_conf_string(str(node.dir))}",
            f"logfile {_conf_string(str(node.dir / 'redis.log'))}",
            "cluster-enabled yes",
            f"cluster-config-file {_conf_string(str(node.dir / 'nodes.conf'))}",
            f"cluster-node-timeout {self.node_timeout_ms}",
            # While one primary is down, the slots of the others keep answering (Redis's default
            # `yes` makes every node refuse every command until the failover completes; see
            # docs/operations.md, "Failover").
            f"cluster-require-full-coverage {'yes' if self.require_full_coverage else 'no'}",
            # Durability comes from AOF (docs/architecture.md D7), not RDB snapshots.
            "appendonly yes",
            f"appendfsync {self.appendfsync}",
            'save ""',
            # The default 5 s delay would hold back every replica's first full sync.
            "repl-diskless-sync-delay 0",
            # Bounds how long a SIGTERMed primary waits for lagging replicas.
            "shutdown-timeout 2",
        ]
        if self.password:
            lines += [
                f"requirepass {_conf_string(self.password)}",
                f"masterauth {_conf_string(self.password)}",
            ]
        if self.security is not None:  # TLS only: its lines replace the plain port
            lines = lines[1:] + self.security.conf_lines(node.port, node.dir / "users.acl")
        node.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, node: _Node) -> None:
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        with (node.dir / "stdout.log").open("ab") as out:
            node.process = subprocess.Popen(
                [self.redis_server, str(node.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.dir,
                # Own session: a Ctrl-C meant for us must not bypass our ordered shutdown.
                start_new_session=True,
                # Built per spawn: the hook checks the pid of the process that forks.
                preexec_fn=parent_death_hook(),
            )

    def _start_processes(self) -> None:
        """Start all nodes on fresh ports, retrying when a port was taken in the meantime."""
        total = self.primaries * (1 + self.replicas_per_primary)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._nodes = []
            for port in free_redis_ports(total, host=HOST):
                node_dir = self.base_dir / f"node-{port}"
                # A fresh cluster: stale nodes.conf or AOF from an earlier run must not leak in.
                shutil.rmtree(node_dir, ignore_errors=True)
                node_dir.mkdir(parents=True)
                self._nodes.append(_Node(port=port, dir=node_dir))
            for node in self._nodes:
                self._write_conf(node)
                self._spawn(node)
            try:
                self._wait_ping(self._nodes)
                return
            except LocalRedisClusterError as exc:
                self.stop_all(graceful=False)
                if "Address already in use" not in str(exc) or attempt == _START_ATTEMPTS:
                    raise
                logger.warning("redis port taken, retrying attempt=%d", attempt)

    def _wait_ping(self, nodes: Sequence[_Node]) -> None:
        def missing() -> str | None:
            for node in nodes:
                if not node.alive:
                    raise LocalRedisClusterError(
                        f"redis-server on port {node.port} exited; log:\n{node.log_tail()}"
                    )
                try:
                    self._command(node.port, "PING")
                except redis.RedisError as exc:
                    return f"node {node.port}: {exc}"
            return None

        _wait_until(missing, timeout=_PING_TIMEOUT_S, what="redis-server to answer PING")

    def _form_cluster(self) -> None:
        primaries = self._nodes[: self.primaries]
        replicas = self._nodes[self.primaries :]
        node_ids = {
            node.port: str(self._command(node.port, "CLUSTER", "MYID")) for node in self._nodes
        }
        for epoch, node in enumerate(self._nodes, start=1):
            # Distinct config epochs up front, as redis-cli does, so no collision round is needed.
            self._command(node.port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for index, node in enumerate(primaries):
            first = index * SLOT_COUNT // len(primaries)
            last = (index + 1) * SLOT_COUNT // len(primaries) - 1
            self._command(node.port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in self._nodes[1:]:
            self._command(self._nodes[0].port, "CLUSTER", "MEET", HOST, node.port)
        _wait_until(self._meet_problem, timeout=_FORM_TIMEOUT_S, what="all nodes to meet")
        for index, node in enumerate(replicas):
            primary = primaries[index % len(primaries)]
            self._command(node.port, "CLUSTER", "REPLICATE", node_ids[primary.port])

    def _meet_problem(self) -> str | None:
        for node in self._nodes:
            try:
                view = self._view(node.port)
            except redis.RedisError as exc:
                return f"node {node.port}: {exc}"
            if len(view) != len(self._nodes):
                return f"node {node.port} knows {len(view)} of {len(self._nodes)} nodes"
            if any(entry.flags & _UNHEALTHY_FLAGS for entry in view):
                return f"node {node.port} still has a handshake in progress"
        return None

    def _health_problem(self) -> str | None:
        running = [node for node in self._nodes if node.alive]
        if not running:
            return "no node is running"
        running_ports = {node.port for node in running}
        for node in running:
            try:
                info = _parse_info(self._command(node.port, "CLUSTER", "INFO"))
                view = self._view(node.port)
                with self.client(node.port) as conn:
                    replication = conn.info("replication")
            except redis.RedisError as exc:
                return f"node {node.port}: {exc}"
            if info.get("cluster_state") != "ok":
                return f"node {node.port}: cluster_state={info.get('cluster_state')}"
            if info.get("cluster_slots_assigned") != str(SLOT_COUNT):
                return f"node {node.port}: slots assigned={info.get('cluster_slots_assigned')}"
            if len(view) != len(self._nodes):
                return f"node {node.port} knows {len(view)} of {len(self._nodes)} nodes"
            for entry in view:
                if entry.port in running_ports and entry.flags & _UNHEALTHY_FLAGS:
                    flags = ",".join(sorted(entry.flags))
                    return f"node {node.port} sees {entry.port} as {flags}"
            link = replication.get("master_link_status")
            if replication.get("role") == "slave" and link != "up":
                return f"replica {node.port}: master_link_status={link}"
        return None


# ----- CLI -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a local Redis Cluster, print its URL on stdout, and stop it on SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="telemeter-redis-cluster",
        description="Start a local Redis Cluster (AOF on) from redis-server processes.",
    )
    parser.add_argument("--dir", type=Path, default=None, help="data dir (default: a temp dir)")
    parser.add_argument("--primaries", type=int, default=3, help="number of primaries")
    parser.add_argument("--replicas", type=int, default=1, help="replicas per primary")
    parser.add_argument("--password", default=None, help="requirepass/masterauth for all nodes")
    parser.add_argument("--node-timeout-ms", type=int, default=2000, help="cluster-node-timeout")
    parser.add_argument("--redis-server", default="redis-server", help="redis-server binary")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS only, with an ACL: certificates, aclfile and the server's password file in the "
        "data dir; prints the server's Redis flags too (docs/operations.md)",
    )
    parser.add_argument(
        "--require-full-coverage",
        action="store_true",
        help="Redis's default cluster-require-full-coverage yes (default here: no)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with contextlib.ExitStack() as stack:
        base_dir: Path = args.dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="telemeter-redis-"))
        )
        cluster = LocalRedisCluster(
            base_dir=base_dir,
            primaries=args.primaries,
            replicas_per_primary=args.replicas,
            redis_server=args.redis_server,
            node_timeout_ms=args.node_timeout_ms,
            password=None if args.tls else args.password,
            security=RedisSecurity.create(
                base_dir / "tls",
                admin_password=args.password or secrets.token_hex(16),
                server_password=secrets.token_hex(16),
            )
            if args.tls
            else None,
            require_full_coverage=args.require_full_coverage,
        )
        try:
            stack.enter_context(cluster)
        except LocalRedisClusterError as exc:
            logger.error("cannot start redis cluster: %s", exc)
            return 1
        print(cluster.url, flush=True)
        if cluster.security is not None:
            flags = cluster.security.server_args(base_dir / "tls" / "server-password")
            print(" ".join(flags), flush=True)
        # A timed wait keeps the main thread responsive to the signal handler.
        while not stop_requested.wait(0.5):
            pass
        logger.info("stopping redis cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
