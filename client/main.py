"""``telemeter-client``: push a Prometheus's federated series to a telemeter server.

One asyncio loop runs the push loop and the local listener (`client.app`): SIGTERM and SIGINT
stop the process, SIGHUP reloads the files named by
flags. Bad flags exit with status 2 and a message, like any argparse program.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from client.app import Listener
from client.errors import ConfigError
from client.forwarder import Forwarder
from client.metrics import ClientMetrics
from client.settings import (
    ClientSettings,
    Runtime,
    build_parser,
    describe,
    load_runtime,
    settings_from_args,
)
from client.worker import Worker

__all__ = ["main", "run"]

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags, refuse inconsistent ones, then run until SIGTERM/SIGINT."""
    parser = build_parser()
    try:
        settings = settings_from_args(parser.parse_args(argv))
        logging.basicConfig(
            level=logging.DEBUG if settings.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        runtime = load_runtime(settings)
    except ConfigError as exc:
        parser.error(str(exc))
    asyncio.run(run(settings, runtime))


async def run(settings: ClientSettings, runtime: Runtime) -> None:
    """Run the push loop and the local listener until SIGTERM/SIGINT (or cancellation)."""
    metrics = ClientMetrics()
    worker = Worker(settings, Forwarder(settings, runtime, metrics=metrics))
    logger.info("starting telemeter-client %s", describe(settings))
    if not settings.anonymize_labels:
        logger.warning("not anonymizing any labels")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, worker)
    tasks = [asyncio.create_task(worker.run(), name="push-loop")]
    if settings.listen is not None:
        listener = Listener(worker, metrics).serve(*settings.listen)
        tasks.append(asyncio.create_task(listener, name="listener"))
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                logger.error("task ended err=%r", task.exception())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in tasks:
            task.cancel()
        stopper.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
    logger.info("stopped")


def _reload(worker: Worker) -> None:
    try:
        worker.reload()
    except ConfigError as exc:
        logger.error("reload failed, keeping the old configuration err=%s", exc)


if __name__ == "__main__":
    main()
