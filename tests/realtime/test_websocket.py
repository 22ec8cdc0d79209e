"""The lean sideband WebSocket client against websockets' real server on loopback (and a raw one for the
misbehaviours a real server will not produce), under asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response
from websockets.utils import accept_key

from sip_controller.realtime.sideband import AttachError, LeanConnector
from sip_controller.realtime.websocket import WebSocketClient, open_websocket
from tests.loops import both_loops

Handler = Callable[[ServerConnection], Awaitable[None]]


anyio_backend = both_loops


@contextlib.asynccontextmanager
async def ws_server(handler: Handler, **kwargs: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime?call_id=rtc_1"


@contextlib.asynccontextmanager
async def raw_server(after_handshake: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                     ) -> AsyncIterator[str]:
    """Answers the opening handshake by hand, then runs ``after_handshake`` (a server that misbehaves)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode())
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await after_handshake(reader, writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime?call_id=rtc_1"
        await asyncio.sleep(0.05)  # the handler sees the client go and ends
    finally:
        server.close()


async def until_eof(reader: asyncio.StreamReader) -> None:
    """Read and discard until the client goes away (bounded: the tests' clients always do)."""
    async with asyncio.timeout(5):
        while await reader.read(1 << 16):
            pass


def text_frame(payload: bytes, *, fin: bool = True, opcode: int = 1) -> bytes:
    assert len(payload) < 126
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, len(payload)) + payload


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
async def test_a_client_close_is_a_clean_closing_handshake() -> None:
    codes: list[int | None] = []

    async def handler(conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.recv()
        codes.append(conn.close_code)

    async with ws_server(handler) as url:
        ws = await open_websocket(url, {})
        await ws.close()
        assert await ws.recv() is None
        with pytest.raises(ConnectionClosed):
            await ws.send_text("late")
        for _ in range(100):
            if codes:
                break
            await asyncio.sleep(0.01)
    assert codes == [1000]


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
        with pytest.raises(AttachError) as attach:
            await LeanConnector()(url, {})
    assert attach.value.gone
    assert attach.value.status == 404


@pytest.mark.anyio
async def test_nothing_listening_is_an_attach_error() -> None:
    async with ws_server(lambda conn: conn.close()) as url:
        pass
    with pytest.raises(AttachError, match="connect failed"):
        await LeanConnector()(url, {})


@pytest.mark.anyio
async def test_a_silent_server_times_the_handshake_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await until_eof(reader)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
    try:
        with pytest.raises(AttachError, match="TimeoutError"):
            await LeanConnector(open_timeout=0.2)(url, {})
        await asyncio.sleep(0.05)  # the handler sees the abort and ends
    finally:
        server.close()


@pytest.mark.anyio
async def test_a_dropped_connection_reads_as_1006() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text_frame(b'{"a":1}'))
        await writer.drain()
        writer.transport.abort()

    async with raw_server(drop) as url:
        ws = await open_websocket(url, {})
        assert await read_all(ws) == ['{"a":1}']
    assert ws.close_code == 1006


@pytest.mark.anyio
async def test_keepalive_pings_keep_a_quiet_connection_open() -> None:
    async def quiet(conn: ServerConnection) -> None:
        await asyncio.sleep(0.5)
        await conn.send("still here")
        await conn.close()

    async with ws_server(quiet) as url:
        ws = await open_websocket(url, {}, ping_interval=0.05, ping_timeout=0.1)
        assert await read_all(ws) == ["still here"]
    assert ws.close_code == 1000


@pytest.mark.anyio
async def test_an_unanswered_ping_fails_the_connection() -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await until_eof(reader)  # answers nothing, not even a ping

    async with raw_server(deaf) as url:
        ws = await open_websocket(url, {}, ping_interval=0.05, ping_timeout=0.1)
        async with asyncio.timeout(3):
            assert await read_all(ws) == []
    assert ws.close_code == 1006


@pytest.mark.anyio
async def test_invalid_utf8_fails_the_connection() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text_frame(b"ok") + text_frame(b"\xff\xfe"))
        await writer.drain()
        await until_eof(reader)

    async with raw_server(garbage) as url:
        ws = await open_websocket(url, {}, close_timeout=0.2)
        async with asyncio.timeout(3):
            assert await read_all(ws) == ["ok"]
    assert ws.close_code == 1006


@pytest.mark.anyio
async def test_oversized_messages_fail_the_connection() -> None:
    async def big(conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.send("x" * 5000)
            await conn.wait_closed()

    async with ws_server(big) as url:
        ws = await open_websocket(url, {}, max_size=1000)
        async with asyncio.timeout(3):
            assert await read_all(ws) == []
    assert ws.close_code == 1006


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
