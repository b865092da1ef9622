"""Every Redis key name, hash tag and TTL default of the server, built in one place.

All keys of cluster ``X`` carry the hash tag ``{X}`` so they live in one slot and can be
written by one Lua script (docs/architecture.md, D2). The cluster index is sharded into
``RANGES`` keys, one per range of ``SLOTS_PER_RANGE`` hash slots, so that a pod serving some
ranges reads only their index keys (the ring, D5, hands out the same ranges).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from redis.crc import key_slot

SLOTS = 16384
RANGES = 256
SLOTS_PER_RANGE = SLOTS // RANGES
PREFIX = "telemeter"

# Cluster IDs become hash tags and label values: a safe character set keeps `{`/`}` out.
CLUSTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# The ring's state lives under one hash tag (docs/architecture.md, D5).
DEFAULT_RING_NAMESPACE = "telemeter-ring"
RING_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

# Index entries whose snapshot is gone are pruned only after this long, so an upload whose
# index entry is written just before its snapshot is never pruned in between.
INDEX_PRUNE_GRACE_MS = 60_000
# A burst of failed token exchanges for one cluster is throttled for this long.
AUTH_FAILURE_WINDOW_S = 60


def valid_cluster_id(cluster_id: str) -> bool:
    """Whether a cluster ID is in the safe character set (letters, digits, ``._:-``, <= 128)."""
    return CLUSTER_ID.fullmatch(cluster_id) is not None


def snapshot_key(cluster_id: str) -> str:
    """The cluster's latest rendered snapshot (a string, expiring after ``--ttl``)."""
    return f"{PREFIX}:{{{cluster_id}}}:snapshot"


def ratelimit_key(cluster_id: str) -> str:
    """Present while the cluster may not upload again (expires after ``--ratelimit``)."""
    return f"{PREFIX}:{{{cluster_id}}}:ratelimit"


def auth_key(cluster_id: str, token: str) -> str:
    """A cached positive answer of the upstream authorizer for (cluster, token).

    Only a hash of the long-lived token is stored, never the token itself.
    """
    digest = hashlib.sha256(token.encode()).hexdigest()[:32]
    return f"{PREFIX}:{{{cluster_id}}}:auth:{digest}"


def receive_limit_key(cluster_id: str) -> str:
    """Remote-write requests received from the cluster in the current minute."""
    return f"{PREFIX}:{{{cluster_id}}}:receive"


def auth_failures_key(cluster_id: str) -> str:
    """Count of rejected token exchanges of the cluster in the current window."""
    return f"{PREFIX}:{{{cluster_id}}}:authfail"


def range_of_slot(slot: int) -> int:
    """The ring range a hash slot belongs to."""
    return slot // SLOTS_PER_RANGE


def cluster_range(cluster_id: str) -> int:
    """The ring range of a cluster: the range of the hash slot of its ``{cluster-id}`` tag."""
    return range_of_slot(key_slot(snapshot_key(cluster_id).encode()))


@functools.cache
def _index_tag(range_id: int) -> str:
    # The first tag whose hash slot falls inside the range: the index then lives on the primary
    # that holds (most of) the range's clusters, so losing another primary does not block it.
    n = 0
    while range_of_slot(key_slot(f"{PREFIX}-index-{range_id}-{n}".encode())) != range_id:
        n += 1
    return f"{PREFIX}-index-{range_id}-{n}"


def index_key(range_id: int) -> str:
    """The sorted set of cluster IDs stored in one range (score: last write, ms).

    Its hash tag is chosen so that the key's slot is inside the range itself.
    """
    return f"{PREFIX}:index:{{{_index_tag(range_id)}}}"


def forward_key(range_id: int) -> str:
    """The stream of uploads queued for remote write from one range (docs/architecture.md, D13).

    It shares the index key's hash tag, so it lives in a slot of the range it queues for.
    """
    return f"{PREFIX}:forward:{{{_index_tag(range_id)}}}"


@dataclass(frozen=True)
class RingKeys:
    """The ring's key names; all share the hash tag ``{namespace}``, so one script sees them."""

    namespace: str = DEFAULT_RING_NAMESPACE

    def __post_init__(self) -> None:
        if RING_NAMESPACE.fullmatch(self.namespace) is None:
            raise ValueError(f"bad ring namespace {self.namespace!r}")

    def _key(self, what: str) -> str:
        return f"{PREFIX}:ring:{{{self.namespace}}}:{what}"

    @property
    def members(self) -> str:
        return self._key("members")

    @property
    def joined(self) -> str:
        return self._key("joined")

    @property
    def owners(self) -> str:
        return self._key("owners")

    @property
    def expiries(self) -> str:
        return self._key("expiries")

    @property
    def assignment(self) -> str:
        return self._key("assignment")

    @property
    def meta(self) -> str:
        return self._key("meta")

    def heartbeat_keys(self) -> list[str]:
        """KEYS of the heartbeat script, in its order."""
        return [self.members, self.joined, self.owners, self.expiries, self.assignment, self.meta]
