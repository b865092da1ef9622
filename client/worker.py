"""The push loop: push at start, then every ``--interval``; back off on failures; reload.

What happens after a cycle (the Go client waits a fixed minute after any failure):

    success                           wait the interval
    400/413 (payload refused)         wait the interval: the same data would be refused again
    429/503 with Retry-After          wait what the server asked (capped, see backoff.py)
    any other failure                 exponential backoff with full jitter, capped at the interval

A reload (SIGHUP or ``POST /-/reload``) re-reads the token, salt and match files; on success it
cuts the current wait short so the new configuration is used at once (as in Go), except while
waiting out a server's ``Retry-After``. A reload that fails keeps the old configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from client.backoff import Backoff
from client.errors import ForwardError
from client.forwarder import Forwarder
from client.settings import ClientSettings, load_runtime

__all__ = ["DEFAULT_BACKOFF_BASE_SECONDS", "Worker"]

logger = logging.getLogger(__name__)

DEFAULT_BACKOFF_BASE_SECONDS = 2.0


class Worker:
    """Runs :class:`Forwarder` cycles until stopped."""

    def __init__(
        self, settings: ClientSettings, forwarder: Forwarder, *, backoff: Backoff | None = None
    ) -> None:
        self._settings = settings
        self._forwarder = forwarder
        self._backoff = backoff or Backoff(
            base_seconds=min(DEFAULT_BACKOFF_BASE_SECONDS, settings.interval_seconds),
            cap_seconds=settings.interval_seconds,
        )
        self._wake = asyncio.Event()

    @property
    def forwarder(self) -> Forwarder:
        """The forwarder this loop drives."""
        return self._forwarder

    def reload(self) -> None:
        """Re-read the files named by flags and use them from the next cycle on.

        Raises ConfigError (and keeps the current configuration) when they cannot be used.
        """
        runtime = load_runtime(self._settings)
        self._forwarder.reconfigure(runtime)
        logger.info("configuration reloaded rules=%d", len(runtime.rules))
        self._wake.set()

    async def run(self) -> None:
        """Push now, then forever on the schedule above (cancel the task to stop)."""
        while True:
            self._wake.clear()
            delay, interruptible = await self._cycle()
            await self._sleep(delay, interruptible=interruptible)

    async def _cycle(self) -> tuple[float, bool]:
        """One cycle; return the wait before the next one and whether a reload may cut it."""
        interval = self._settings.interval_seconds
        try:
            await self._forwarder.forward()
        except ForwardError as exc:
            if exc.payload_rejected:
                self._backoff.reset()
                logger.error(
                    "push refused, not retrying this payload err=%s next_s=%.1f", exc, interval
                )
                return interval, True
            if exc.retry_after is not None:
                logger.warning(
                    "push deferred by server err=%s retry_after_s=%.1f", exc, exc.retry_after
                )
                return exc.retry_after, False
            delay = self._backoff.next_delay()
            logger.warning(
                "push failed err=%s failures=%d next_s=%.2f", exc, self._backoff.failures, delay
            )
            return delay, True
        except Exception:
            # A bug must not end the loop of a long-running agent; log it loudly and back off.
            delay = self._backoff.next_delay()
            logger.exception("push crashed next_s=%.2f", delay)
            return delay, True
        self._backoff.reset()
        return interval, True

    async def _sleep(self, seconds: float, *, interruptible: bool) -> None:
        if not interruptible:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
