"""One suite for the sideband's one interface (``Sideband``, opened by a ``SidebandConnector``), run against both
clients: the lean client of ``realtime/websocket.py`` (``LeanConnector``, production) and websockets' own asyncio
client (``connect_websocket``, the fallback when a proxy applies). Against websockets' real server on loopback
(and a raw one for the misbehaviours a real server will not produce), under asyncio's loop and uvloop.

The lean client's internals (back-pressure, its own ``recv`` API) are tested in ``test_websocket.py``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.utils import accept_key

from sip_controller.realtime import events as ev
from sip_controller.realtime.sideband import (
    MAX_FRAME_BYTES,
    AttachError,
    LeanConnector,
    Sideband,
    SidebandConnector,
    connect_websocket,
)
from tests.loops import both_loops

Handler = Callable[[ServerConnection], Awaitable[None]]

anyio_backend = both_loops


class Client(Protocol):
    """Builds a connector of one client with the given options (``open_timeout``, ``max_size``, pings, ...)."""

    def __call__(self, **options: Any) -> SidebandConnector: ...


def lean(**options: Any) -> SidebandConnector:
    return LeanConnector(**options)


def fallback(**options: Any) -> SidebandConnector:
    return functools.partial(connect_websocket, **options)


@pytest.fixture(params=[lean, fallback], ids=["lean", "websockets"])
def client(request: pytest.FixtureRequest) -> Client:
    made: Client = request.param
    return made


@contextlib.asynccontextmanager
async def ws_server(handler: Handler, **kwargs: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime?call_id=rtc_1"


@contextlib.asynccontextmanager
async def raw_server(
    after_handshake: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """Answers the opening handshake by hand (no extension accepted), then runs ``after_handshake``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        key = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("sec-websocket-key:"))
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
            ).encode()
        )
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


def text_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    return struct.pack("!BB", 0x81, len(payload)) + payload


async def read_all(sideband: Sideband, bound_s: float = 5.0) -> list[ev.ServerEvent]:
    async with asyncio.timeout(bound_s):
        return [event async for event in sideband.events()]


async def until(check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)


SESSION_CREATED = '{"type":"session.created","event_id":"e1","session":{"type":"realtime"}}'


# ---- opening ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_handshake_headers_and_events_both_ways(client: Client) -> None:
    seen: dict[str, Any] = {}

    async def handler(conn: ServerConnection) -> None:
        assert conn.request is not None
        seen["auth"] = conn.request.headers.get("Authorization")
        seen["path"] = conn.request.path
        seen["extensions"] = conn.request.headers.get("Sec-WebSocket-Extensions")  # no compression offered
        await conn.send(SESSION_CREATED)
        seen["got"] = await conn.recv()
        await conn.send(['{"type":"input_audio_buffer.', 'speech_started","event_id":"e2"}'])  # in two frames
        await conn.close(1000)

    async with ws_server(handler) as url:
        sideband = await client()(url, {"Authorization": "Bearer sk-1"})
        events = sideband.events()
        first = await anext(events)
        assert first.type == "session.created"
        await sideband.send({"type": "response.create", "response": {"instructions": "Hi"}})
        rest = [event async for event in events]
        assert sideband.close_code == 1000
        await sideband.close()  # after the server's close: nothing to do, returns at once
    assert [event.type for event in rest] == ["input_audio_buffer.speech_started"]
    assert seen == {
        "auth": "Bearer sk-1",
        "path": "/v1/realtime?call_id=rtc_1",
        "extensions": None,
        "got": '{"type":"response.create","response":{"instructions":"Hi"}}',  # compact JSON
    }


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "gone"), [(404, True), (403, False), (500, False)])
async def test_a_refused_handshake_is_an_attach_error_with_its_status(client: Client, status: int, gone: bool) -> None:
    def refuse(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(status, "No\n")

    async def handler(conn: ServerConnection) -> None:  # pragma: no cover - never reached
        await conn.close()

    async with ws_server(handler, process_request=refuse) as url:
        with pytest.raises(AttachError) as attach:
            await client()(url, {})
    assert attach.value.gone is gone
    assert attach.value.status == status
    assert str(attach.value) == f"sideband refused with HTTP {status}"


@pytest.mark.anyio
async def test_nothing_listening_is_an_attach_error(client: Client) -> None:
    async with ws_server(lambda conn: conn.close()) as url:
        pass
    with pytest.raises(AttachError, match="connect failed") as attach:
        await client()(url, {})
    assert not attach.value.gone
    assert attach.value.status is None


@pytest.mark.anyio
async def test_a_silent_server_times_the_handshake_out(client: Client) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await until_eof(reader)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
    try:
        with pytest.raises(AttachError, match="TimeoutError"):
            await client(open_timeout=0.2)(url, {})
        await asyncio.sleep(0.05)  # the handler sees the abort and ends
    finally:
        server.close()


# ---- closing ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_client_close_is_a_clean_closing_handshake_and_later_sends_raise(client: Client) -> None:
    codes: list[int | None] = []

    async def handler(conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.recv()
        codes.append(conn.close_code)

    async with ws_server(handler) as url:
        sideband = await client()(url, {})
        await sideband.close()
        assert await read_all(sideband) == []
        assert sideband.close_code == 1000
        with pytest.raises(ConnectionClosed):
            await sideband.send({"type": "late"})
        await until(lambda: bool(codes))
    assert codes == [1000]


@pytest.mark.anyio
@pytest.mark.parametrize("code", [1000, 1001, 1011, 4000])
async def test_the_server_s_close_code_is_seen(client: Client, code: int) -> None:
    async def handler(conn: ServerConnection) -> None:
        await conn.send(SESSION_CREATED)
        await conn.close(code, "bye")

    async with ws_server(handler) as url:
        sideband = await client()(url, {})
        assert [event.type for event in await read_all(sideband)] == ["session.created"]
    assert sideband.close_code == code


@pytest.mark.anyio
async def test_a_dropped_connection_reads_as_1006(client: Client) -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text_frame(b'{"type":"session.created","event_id":"e1"}'))
        await writer.drain()
        writer.transport.abort()

    async with raw_server(drop) as url:
        sideband = await client()(url, {})
        assert [event.type for event in await read_all(sideband)] == ["session.created"]
    assert sideband.close_code == 1006


# ---- frames -----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_malformed_frame_is_an_event_and_the_connection_goes_on(client: Client) -> None:
    async def handler(conn: ServerConnection) -> None:
        await conn.send("not json")
        await conn.send(b"\x00binary")
        await conn.send(SESSION_CREATED)
        await conn.close()

    async with ws_server(handler) as url:
        sideband = await client()(url, {})
        got = await read_all(sideband)
    assert [type(event) for event in got[:2]] == [ev.MalformedEvent, ev.MalformedEvent]
    assert got[2].type == "session.created"
    assert sideband.close_code == 1000


@pytest.mark.anyio
async def test_invalid_utf8_fails_the_connection(client: Client) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text_frame(b'{"type":"session.created","event_id":"e1"}') + text_frame(b"\xff\xfe"))
        await writer.drain()
        await until_eof(reader)  # answers no close frame

    async with raw_server(garbage) as url:
        sideband = await client(close_timeout=0.2)(url, {})
        assert [event.type for event in await read_all(sideband)] == ["session.created"]
    assert sideband.close_code == 1006


@pytest.mark.anyio
async def test_an_oversized_message_fails_the_connection(client: Client) -> None:
    async def big(conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.send("x" * 5000)
            await conn.wait_closed()

    async with ws_server(big) as url:
        sideband = await client(max_size=1000)(url, {})
        assert await read_all(sideband) == []
    assert sideband.close_code == 1006


@pytest.mark.anyio
async def test_the_default_frame_bound_takes_a_large_event_and_refuses_a_larger_one(client: Client) -> None:
    pad = "x" * (MAX_FRAME_BYTES - 100)

    async def handler(conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.send(json.dumps({"type": "session.created", "event_id": "e1", "pad": pad}))
            await conn.send("y" * (MAX_FRAME_BYTES + 1))
            await conn.wait_closed()

    async with ws_server(handler, max_size=None) as url:
        sideband = await client()(url, {})
        assert [event.type for event in await read_all(sideband)] == ["session.created"]
    assert sideband.close_code == 1006


# ---- keepalive --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_keepalive_pings_keep_a_quiet_connection_open(client: Client) -> None:
    async def quiet(conn: ServerConnection) -> None:
        await asyncio.sleep(0.5)
        await conn.send(SESSION_CREATED)
        await conn.close()

    async with ws_server(quiet) as url:
        sideband = await client(ping_interval=0.05, ping_timeout=0.1)(url, {})
        assert [event.type for event in await read_all(sideband)] == ["session.created"]
    assert sideband.close_code == 1000


@pytest.mark.anyio
async def test_an_unanswered_ping_fails_the_connection(client: Client) -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await until_eof(reader)  # answers nothing, not even a ping

    async with raw_server(deaf) as url:
        sideband = await client(ping_interval=0.05, ping_timeout=0.1, close_timeout=0.2)(url, {})
        assert await read_all(sideband, bound_s=3) == []
    assert sideband.close_code == 1006
