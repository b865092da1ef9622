"""Everything a server process holds while it runs, built from the settings, owned in one place.

`Runtime` is an async context manager: it opens the Redis client, the upstream authorizer's HTTP
client and the ring, and closes them in reverse order. The two FastAPI apps (external and
internal listener, `app.app`) share one Runtime in one event loop (docs/architecture.md
D10).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import TracebackType

import httpx

from app.authorizer import Authorizer, HttpAuthorizer, StubAuthorizer
from app.forward import Forwarder, ForwardMetrics
from app.metrics import ServerMetrics
from app.redis_tls import client_context
from app.ring import Ring
from app.settings import ServerSettings
from app.store import Store
from app.tokens import (
    PublicKey,
    SigningKey,
    TokenIssuer,
    TokenVerifier,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    thumbprint,
)
from telemeter.addresses import parse_redis_url
from telemeter.selectors import Whitelist
from telemeter.transforms import parse_label_pairs
from telemeter.upload import PassConfig

log = logging.getLogger(__name__)


class UploadSlots(asyncio.Semaphore):
    """The uploads in progress, at most ``value`` (docs/architecture.md, D10): a semaphore whose
    free slot can also be taken without waiting (`try_acquire`, for `app.uploads.upload_now`)."""

    def try_acquire(self) -> bool:
        """Take a slot if one is free now (as ``acquire`` would at once); else False."""
        if self.locked():
            return False
        self._value -= 1  # what asyncio.Semaphore.acquire does when the semaphore is not locked
        return True


READY_CACHE_S = 1.0
# Rate-limit answers remembered per process, so a cluster that pushes too often is refused
# without decoding its body or asking Redis (Redis stays the authority: this only repeats its no).
LOCAL_LIMITS_MAX = 100_000


class Runtime:
    """The shared state of one server process: settings, store, tokens, authorizer, metrics."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        key = self._signing_key(settings)
        self.issuer = TokenIssuer(key, expire_seconds=settings.token_expire_seconds)
        # Verify keys come from a rotation (docs/operations.md, "Rotating the signing key").
        verify_keys = [self._verify_key(path) for path in settings.verify_key]
        self.verifier = TokenVerifier([key, *verify_keys])
        log.info(
            "token keys signing_kid=%s accepted_kids=%s",
            self.issuer.kid,
            ",".join(thumbprint(k) for k in [key, *verify_keys]),
        )
        nodes, password, tls = parse_redis_url(settings.redis_url)
        self.store = Store(
            nodes=nodes,
            username=settings.redis_username,
            password=settings.redis_secret() or password,
            tls=client_context(
                ca_file=settings.redis_ca_file,
                client_crt=settings.redis_client_crt,
                client_key=settings.redis_client_key,
            )
            if tls
            else None,
            ttl_ms=int(settings.ttl * 1000),
            ratelimit_ms=int(settings.ratelimit * 1000),
            latency=self.metrics.redis,
            timeout_s=settings.redis_timeout,
        )
        self.whitelist = Whitelist.from_strings(settings.whitelist_rules())
        if not settings.whitelist_rules():
            log.warning(
                "no --whitelist given: every uploaded metric is dropped (as the Go server does)"
            )
        self.extra_labels = tuple(parse_label_pairs(settings.label).items())
        self.required_labels = tuple(parse_label_pairs(settings.required_label).items())
        self.elide_labels = frozenset(settings.elide_label)
        self.upload_slots = UploadSlots(settings.max_concurrent_uploads)
        self.local_limits: dict[str, float] = {}
        self.ring = Ring(
            self.store.client,
            name=settings.name,
            registry=self.metrics.registry,
            heartbeat_s=settings.ring_heartbeat,
            lease_s=settings.ring_lease,
            namespace=settings.ring_namespace,
        )
        self.forwarder = (
            Forwarder(
                settings,
                self.store,
                self.ring.owned_ranges,
                ForwardMetrics(self.metrics.registry),
            )
            if settings.forward_url
            else None
        )
        self._http: httpx.AsyncClient | None = None
        self.authorizer: Authorizer = StubAuthorizer()
        self._ready_at = 0.0
        self._ready = False

    @staticmethod
    def _signing_key(settings: ServerSettings) -> SigningKey:
        if settings.shared_key is None:
            log.warning(
                "no --shared-key given: generated a signing key; replicas will not accept each "
                "other's tokens"
            )
            return generate_signing_key()
        return load_signing_key(settings.shared_key.read_bytes())

    @staticmethod
    def _verify_key(path: Path) -> PublicKey:
        try:
            return load_verify_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--verify-key {path}: {exc}") from exc

    async def __aenter__(self) -> Runtime:
        if self.settings.authorize:
            self._http = httpx.AsyncClient()
            self.authorizer = HttpAuthorizer(self.settings.authorize, client=self._http)
        else:
            log.warning("no --authorize URL given: accepting any token (stub mode)")
        await self.ring.start()
        if self.forwarder is not None:
            await self.forwarder.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_forwarding()
        await self.ring.stop()  # idempotent: normally done already, before the listeners close
        await self.store.close()
        if self._http is not None:
            await self._http.aclose()

    async def stop_forwarding(self) -> None:
        """Stop forwarding (idempotent); what is queued stays for the ranges' next owners."""
        forwarder, self.forwarder = self.forwarder, None
        if forwarder is not None:
            await forwarder.stop()

    def pass_config(self, token_labels: dict[str, str]) -> PassConfig:
        """The upload pass settings for a cluster whose token carries ``token_labels``."""
        s = self.settings
        return PassConfig(
            whitelist=self.whitelist,
            token_labels=tuple(token_labels.items()) + self.required_labels,
            extra_labels=self.extra_labels,
            elide_labels=self.elide_labels,
            max_series=s.limit_series,
            max_labels=s.limit_labels,
            max_label_length=s.limit_label_length,
            remote_write=bool(s.forward_url),
        )

    def limited_for(self, cluster_id: str) -> float:
        """Seconds this process knows the cluster must still wait (0 when it may upload)."""
        until = self.local_limits.get(cluster_id)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self.local_limits[cluster_id]
            return 0.0
        return left

    def remember_limit(self, cluster_id: str, seconds: float) -> None:
        """Remember that Redis refuses the cluster's uploads for ``seconds``."""
        if len(self.local_limits) >= LOCAL_LIMITS_MAX:
            now = time.monotonic()
            self.local_limits = {k: v for k, v in self.local_limits.items() if v > now}
            if len(self.local_limits) >= LOCAL_LIMITS_MAX:
                return
        self.local_limits[cluster_id] = time.monotonic() + seconds

    async def ready(self) -> tuple[bool, str]:
        """Whether this pod is ready, and why not: Redis answers, and it holds its ring ranges.

        The Redis check is cached for a second so probes cannot hammer Redis.
        """
        now = time.monotonic()
        if now - self._ready_at > READY_CACHE_S:
            self._ready = await self.store.ping()
            self._ready_at = now
        if not self._ready:
            return False, "redis unreachable"
        if not self.ring.ready:
            return False, "not yet holding its ring ranges"
        return True, "ready"
