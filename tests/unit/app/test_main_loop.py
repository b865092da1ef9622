"""The server's main loop: it wakes once a second (an idle pod's wake-ups cost CPU), and still
stops as soon as ``should_exit`` is set, whatever its period, and keeps the Date header fresh."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app import main
from app.main import _config, _Server
from dev.ports import free_port


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_should_exit_stops_the_server_within_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "TICK_S", 3600.0)  # a stop that waited for the tick would hang

    async def run() -> tuple[bytes, bool]:
        port = free_port()
        server = _Server(_config(_ok, f"127.0.0.1:{port}", None, None, head_timeout_s=5))
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
        return answer, server.should_exit

    answer, stopped = asyncio.run(run())
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"\r\ndate: " in answer.lower(), answer  # on_tick ran: the Date header is set
    assert stopped
