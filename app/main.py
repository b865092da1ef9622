"""`telemeter-server`: one process, one event loop, two listeners (docs/architecture.md, D10)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn
from prometheus_client import Counter

from app.app import create_external_app, create_internal_app
from app.protocol import FirstRequest, TelemeterProtocol
from app.runtime import Runtime
from app.settings import ServerSettings, parse_settings
from telemeter.addresses import parse_listen_address
from telemeter.delimited import check_upb

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5
TICK_S = 1.0  # the main loop's period (uvicorn's: 0.1 s)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve` (two servers share one loop), and
    whose main loop wakes once a second rather than ten times: a wake-up of an idle pod costs
    ~0.3 ms of CPU here, and uvicorn's ticks of the two listeners were more than half of an
    idle pod's CPU (docs/benchmarks.md, "Idle work"). Setting ``should_exit`` wakes it at once.
    """

    _exit: asyncio.Event | None = None
    _should_exit = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._exit is not None:
            self._exit.set()

    async def main_loop(self) -> None:
        self._exit = asyncio.Event()
        counter = 0  # uvicorn's on_tick renews the Date header when counter % 10 == 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._exit.wait()


def _config(
    app: object,
    address: str,
    crt: Path | None,
    key: Path | None,
    *,
    head_timeout_s: float,
    uploads: Runtime | None = None,
    linger: tuple[int, float, Counter] | None = None,
    client_ca: Path | None = None,
) -> uvicorn.Config:
    """``linger``: the lingering-close bounds (bytes, seconds) and the counter of their ends;
    ``client_ca``: require a client certificate signed by it (docs/operations.md, "TLS")."""
    host, port = parse_listen_address(address)
    attributes: dict[str, object] = {"head_timeout_s": head_timeout_s, "runtime": uploads}
    if linger is not None:
        names = ("linger_bytes", "linger_timeout_s", "linger_ends")
        attributes.update(zip(names, linger, strict=True))
    protocol = type("Protocol", (TelemeterProtocol,), attributes)
    http: type[asyncio.Protocol] = protocol
    if uploads is not None:  # the external listener: the upload fast path first
        http = type("FirstRequest", (FirstRequest,), {"full": protocol})
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        lifespan="off",
        http=http,
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ssl_certfile=crt,
        ssl_keyfile=key,
        ssl_ca_certs=client_ca,
        ssl_cert_reqs=ssl.CERT_NONE if client_ca is None else ssl.CERT_REQUIRED,
    )


async def serve(settings: ServerSettings) -> None:
    """Run both listeners until SIGTERM or SIGINT, then shut down cleanly."""
    check_upb()  # the fast upb protobuf backend is required (the reference pass uses it)
    async with Runtime(settings) as rt:
        linger = (
            settings.lingering_close_bytes,
            settings.lingering_close_timeout,
            rt.metrics.lingering_closes,
        )
        # What exists now lives as long as the process: keep it out of the collector's scans.
        gc.collect()
        gc.freeze()
        servers = [
            _Server(
                _config(
                    create_external_app(rt),
                    settings.listen,
                    settings.tls_crt,
                    settings.tls_key,
                    head_timeout_s=settings.upload_timeout,
                    uploads=rt,
                    linger=linger,
                )
            ),
            _Server(
                _config(
                    create_internal_app(rt),
                    settings.listen_internal,
                    settings.internal_tls_crt,
                    settings.internal_tls_key,
                    head_timeout_s=settings.upload_timeout,
                    linger=linger,
                    client_ca=settings.internal_tls_client_ca,
                )
            ),
        ]

        async def shutdown(signum: int) -> None:
            # I4: stop serving and release the ring's leases first, so the other pods take
            # the ranges over within two heartbeats, then close the listeners.
            log.info("shutting down signal=%s", signal.Signals(signum).name)
            await rt.stop_forwarding()
            await rt.ring.stop()
            for server in servers:
                server.should_exit = True

        tasks: set[asyncio.Task[None]] = set()

        def stop(signum: int) -> None:
            task = asyncio.ensure_future(shutdown(signum))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        log.info(
            "telemeter-server started name=%s listen=%s listen_internal=%s",
            settings.name, settings.listen, settings.listen_internal,
        )  # fmt: skip
        await asyncio.gather(*(server.serve() for server in servers))
        if not all(server.started for server in servers):
            raise SystemExit("a listener could not start (is its address in use?)")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of `telemeter-server`."""
    settings = parse_settings(argv)
    level = logging.DEBUG if settings.verbose else logging.INFO
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is an optional speed-up (installed with uvicorn[standard])
        pass
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
