"""The lean sideband WebSocket client's own API and internals (``open_websocket``, ``recv``, back-pressure),
against websockets' real server on loopback, under asyncio's loop and uvloop.

What the sideband does (opening, events both ways, close codes, a dropped connection, bad and oversized frames,
keepalive) is one suite for both clients, the lean one and websockets' own: ``test_sideband.py``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from sip_controller.realtime.websocket import WebSocketClient, open_websocket
from tests.loops import both_loops

Handler = Callable[[ServerConnection], Awaitable[None]]


anyio_backend = both_loops


@contextlib.asynccontextmanager
async def ws_server(handler: Handler, **kwargs: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime?call_id=rtc_1"


async def read_all(ws: WebSocketClient) -> list[str | bytes]:
    out = []
    while (message := await ws.recv()) is not None:
        out.append(message)
    return out


@pytest.mark.anyio
async def test_handshake_headers_and_messages_both_ways() -> None:
    seen: dict[str, Any] = {}

    async def handler(conn: ServerConnection) -> None:
        assert conn.request is not None
        seen["auth"] = conn.request.headers.get("Authorization")
        seen["path"] = conn.request.path
        seen["extensions"] = conn.request.headers.get("Sec-WebSocket-Extensions")
        await conn.send('{"type":"session.created"}')
        seen["got"] = await conn.recv()
        await conn.send(b"\x00binary")
        await conn.send(["frag", "mented"])  # one message in three frames
        await conn.close(1000)

    async with ws_server(handler) as url:
        ws = await open_websocket(url, {"Authorization": "Bearer sk-1"})
        assert await ws.recv() == '{"type":"session.created"}'
        await ws.send_text('{"type":"response.create"}')
        rest = await read_all(ws)
        assert ws.close_code == 1000
        await ws.close()  # after the server's close: nothing to do, returns at once
    assert rest == [b"\x00binary", "fragmented"]
    assert seen == {"auth": "Bearer sk-1", "path": "/v1/realtime?call_id=rtc_1", "extensions": None,
                    "got": '{"type":"response.create"}'}


@pytest.mark.anyio
async def test_a_refused_handshake_carries_the_status() -> None:
    def refuse(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(404, "Call not found\n")

    async def handler(conn: ServerConnection) -> None:  # pragma: no cover - never reached
        await conn.close()

    async with ws_server(handler, process_request=refuse) as url:
        with pytest.raises(InvalidStatus) as info:
            await open_websocket(url, {})
        assert info.value.response.status_code == 404


@pytest.mark.anyio
async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    count, pad = 400, "x" * 4000

    async def flood(conn: ServerConnection) -> None:
        for i in range(count):
            await conn.send(f'{{"n":{i},"pad":"{pad}"}}')
        await conn.close()

    async with ws_server(flood) as url:
        ws = await open_websocket(url, {}, max_queue=8)
        await asyncio.sleep(0.2)  # let the server run ahead while nobody reads
        # reading paused at the bound; the bytes of the socket read that crossed it are still parsed
        assert ws._paused
        assert len(ws._messages) < 8 + (256 * 1024) // 4000
        got = await read_all(ws)
    assert got == [f'{{"n":{i},"pad":"{pad}"}}' for i in range(count)]
