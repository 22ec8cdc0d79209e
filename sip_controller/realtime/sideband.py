"""One sideband WebSocket per call: typed events in, client events out. No policy here."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from sip_controller.realtime.events import ServerEvent, parse_server_event
from sip_controller.realtime.websocket import WebSocketClient, open_websocket

MAX_FRAME_BYTES = 4 * 1024 * 1024
#: keepalive: a ping every ``PING_INTERVAL_S``; one unanswered for ``PING_TIMEOUT_S`` fails the connection
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
#: the closing handshake's bound, then the TCP connection is closed anyway
CLOSE_TIMEOUT_S = 2.0


class AttachError(Exception):
    """The sideband could not be opened. ``gone`` is True when OpenAI says the call no longer exists."""

    def __init__(self, message: str, *, gone: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.gone = gone
        self.status = status


class Sideband(Protocol):
    """What the supervisor needs from a sideband transport."""

    def events(self) -> AsyncIterator[ServerEvent]: ...

    async def send(self, event: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...

    @property
    def close_code(self) -> int | None: ...


class SidebandConnector(Protocol):
    async def __call__(self, url: str, headers: dict[str, str]) -> Sideband: ...


class WebSocketSideband:
    """A transport over websockets' asyncio client (which honours proxy settings)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def events(self) -> AsyncIterator[ServerEvent]:
        try:
            async for frame in self._ws:
                yield parse_server_event(frame)
        except ConnectionClosed:
            return

    async def send(self, event: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(event, separators=(",", ":")))

    async def close(self) -> None:
        await self._ws.close()

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code


class LeanSideband:
    """The production transport: the lean client of :mod:`sip_controller.realtime.websocket`."""

    def __init__(self, ws: WebSocketClient) -> None:
        self._ws = ws

    async def events(self) -> AsyncIterator[ServerEvent]:
        while (frame := await self._ws.recv()) is not None:
            yield parse_server_event(frame)

    async def send(self, event: dict[str, Any]) -> None:
        await self._ws.send_text(json.dumps(event, separators=(",", ":")))

    async def close(self) -> None:
        await self._ws.close()

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code


class LeanConnector:
    """Opens :class:`LeanSideband` connections (TLS with ``ssl_context`` for ``wss://``). The options are
    :func:`connect_websocket`'s, with the same defaults: the two clients are one interface (and one test suite,
    ``tests/realtime/test_sideband.py``)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        *,
        open_timeout: float = 5.0,
        max_size: int = MAX_FRAME_BYTES,
        ping_interval: float | None = PING_INTERVAL_S,
        ping_timeout: float = PING_TIMEOUT_S,
        close_timeout: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self._ssl = ssl_context
        self._open_timeout = open_timeout
        self._max_size = max_size
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout

    async def __call__(self, url: str, headers: dict[str, str]) -> Sideband:
        try:
            ws = await open_websocket(
                url, headers, open_timeout=self._open_timeout, max_size=self._max_size,
                ping_interval=self._ping_interval, ping_timeout=self._ping_timeout,
                close_timeout=self._close_timeout, ssl_context=self._ssl,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise _attach_error(exc) from exc
        return LeanSideband(ws)


async def connect_websocket(
    url: str,
    headers: dict[str, str],
    *,
    open_timeout: float = 5.0,
    max_size: int = MAX_FRAME_BYTES,
    ping_interval: float | None = PING_INTERVAL_S,
    ping_timeout: float = PING_TIMEOUT_S,
    close_timeout: float = CLOSE_TIMEOUT_S,
) -> Sideband:
    """websockets' own asyncio client: used when a proxy must be honoured (it reads the proxy settings). Like the
    lean client it offers no per-message compression (websockets' default would: a zlib context per call)."""
    try:
        ws = await connect(
            url,
            additional_headers=headers,
            compression=None,
            open_timeout=open_timeout,
            max_size=max_size,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise _attach_error(exc) from exc
    return WebSocketSideband(ws)


def _attach_error(exc: Exception) -> AttachError:
    """A failed opening handshake as the supervisor sees it: a 404 means the call is gone."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return AttachError(f"sideband refused with HTTP {status}", gone=status == 404, status=status)
    return AttachError(f"sideband connect failed: {type(exc).__name__}: {exc}")


class FakeSideband:
    """An in-memory sideband for tests: push server events in, read what the controller sent."""

    def __init__(self) -> None:
        self._incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.sent_event = asyncio.Event()
        self._close_code: int | None = None
        self.closed_by_client = False

    def push(self, event: dict[str, Any] | str) -> None:
        self._incoming.put_nowait(event if isinstance(event, str) else json.dumps(event))

    def close_from_server(self, code: int = 1000) -> None:
        self._close_code = code
        self._incoming.put_nowait(None)

    async def events(self) -> AsyncIterator[ServerEvent]:
        while True:
            frame = await self._incoming.get()
            if frame is None:
                return
            yield parse_server_event(frame)

    async def send(self, event: dict[str, Any]) -> None:
        if self._close_code is not None:
            raise ConnectionClosed(None, None)
        self.sent.append(event)
        self.sent_event.set()

    async def close(self) -> None:
        if self._close_code is None:
            self.closed_by_client = True
            self.close_from_server(1000)

    @property
    def close_code(self) -> int | None:
        return self._close_code

    def sent_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.sent]


class FakeConnector:
    """Hands out FakeSidebands (or raises ``fail_with``) and remembers every attach."""

    def __init__(self, fail_with: AttachError | None = None) -> None:
        self.fail_with = fail_with
        self.attached: dict[str, FakeSideband] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.attach_event = asyncio.Event()

    async def __call__(self, url: str, headers: dict[str, str]) -> Sideband:
        self.requests.append((url, headers))
        if self.fail_with is not None:
            raise self.fail_with
        sideband = FakeSideband()
        call_id = url.rsplit("call_id=", 1)[-1]
        self.attached[call_id] = sideband
        self.attach_event.set()
        return sideband
