"""A lean WebSocket client for the sideband: websockets' sans-I/O protocol driven by one asyncio.Protocol.

websockets' own asyncio client gives each connection a keepalive task, a frame assembler with its own queues
and locks, and a proxy lookup through the environment on every connect; for thousands of long calls that was
a large share of the memory and of the CPU per new call in the bench. Here the handshake, framing, masking,
size limits, ping answers and the closing handshake stay websockets' (:class:`websockets.client.ClientProtocol`);
this module only moves bytes: the event loop calls :meth:`data_received`, complete messages wait in a deque, and
the keepalive ping is a timer handle, not a task.

Bounds: at most ``max_queue`` received messages wait unread (then reading pauses until the reader catches up);
messages are at most ``max_size`` bytes; the opening handshake is bounded by ``open_timeout``, the closing one by
``close_timeout``; a ping unanswered for ``ping_timeout`` fails the connection (close code 1011 sent, 1006 seen).
No extensions are offered (no per-message compression: sideband events are small and compression costs a zlib
context per call).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import Mapping
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidState, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.uri import parse_uri


def _release_parser(protocol: ClientProtocol) -> None:
    """websockets' sans-I/O parser is a generator whose frame holds its protocol, and after the end of the stream it
    stays suspended for good: a reference cycle that only the collector frees, and only its full pass once a long
    call's objects are old (#18). With the stream ended the parser has nothing left to do (``receive_eof`` is
    idempotent and ``receive_data`` refuses data after it without stepping the parser): close it, so the
    connection's objects go by reference counting when the call lets go of them."""
    parser = getattr(protocol, "parser", None)
    if parser is not None and hasattr(parser, "close"):
        parser.close()


class WebSocketClient(asyncio.Protocol):
    """One client connection. Use :func:`open_websocket`; then :meth:`recv`, :meth:`send_text`, :meth:`close`."""

    def __init__(
        self,
        protocol: ClientProtocol,
        request: Request,
        *,
        max_queue: int,
        ping_interval: float | None,
        ping_timeout: float,
        close_timeout: float,
    ) -> None:
        self._protocol = protocol
        self._request: Request | None = request  # dropped once sent: a live call keeps only what it uses
        self._max_queue = max_queue
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.opened: asyncio.Future[None] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._reader: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._closing = False

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's transports are not asyncio subclasses
        request, self._request = self._request, None
        if request is not None:
            self._protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._protocol.receive_data(data)
        self._take_events()

    def eof_received(self) -> bool | None:
        self._protocol.receive_eof()
        self._flush()
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.receive_eof()  # idempotent; the state becomes CLOSED
        _release_parser(self._protocol)
        self._cancel_timer()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
            self.opened.exception()  # retrieved here: nobody may be waiting any more
        if not self._lost.done():
            self._lost.set_result(None)
        self._wake_reader()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- protocol events ---------------------------------------------------------------------------------

    def _take_events(self) -> None:
        for event in self._protocol.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Response) and not self.opened.done():
                failure = self._protocol.handshake_exc
                if failure is None:
                    self.opened.set_result(None)
                    self._schedule_ping()
                else:
                    self.opened.set_exception(failure)
        self._flush()
        self._expect_close()

    def _expect_close(self) -> None:
        """Once a close frame went out, the server should close the TCP connection soon: abort if it does not."""
        if self._protocol.close_expected() and not self._closing and self.transport is not None:
            self._closing = True
            self._cancel_timer()  # no more pings
            self._timer = self._loop.call_later(self._close_timeout, self._abort)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(bytes(frame.data), opcode is Opcode.TEXT)
            else:
                self._fragments, self._fragment_text = [bytes(frame.data)], opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._deliver(data, self._fragment_text)
        elif opcode is Opcode.PONG and self._ping_payload is not None and frame.data == self._ping_payload:
            self._ping_payload = None
            self._schedule_ping()
        # PING is answered and CLOSE is replied to by the protocol itself (see _flush)

    def _deliver(self, data: bytes, text: bool) -> None:
        try:
            message: str | bytes = data.decode() if text else data
        except UnicodeDecodeError:
            self._protocol.fail(1007, "invalid UTF-8 in a text message")
            return
        self._messages.append(message)
        if len(self._messages) >= self._max_queue and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def _wake_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self._protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    # -- keepalive -----------------------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule_ping(self) -> None:
        self._cancel_timer()
        if self._ping_interval is not None and not self._closing:
            self._timer = self._loop.call_later(self._ping_interval, self._ping)

    def _ping(self) -> None:
        self._timer = None
        if self._protocol.state is not State.OPEN:
            return
        self._ping_payload = os.urandom(4)
        self._protocol.send_ping(self._ping_payload)
        self._flush()
        self._timer = self._loop.call_later(self._ping_timeout, self._ping_missed)

    def _ping_missed(self) -> None:
        self._timer = None
        self._closing = True
        self._protocol.fail(1011, "keepalive ping timeout")
        self._flush()
        self._abort()

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    # -- use -------------------------------------------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        """The code the server closed with; 1006 when the connection ended without a closing handshake."""
        return self._protocol.close_code

    async def recv(self) -> str | bytes | None:
        """The next message; None once the connection is closed and every message has been read."""
        while not self._messages:
            if self._lost.done():
                return None
            self._reader = self._loop.create_future()
            await self._reader
        message = self._messages.popleft()
        if self._paused and len(self._messages) <= self._max_queue // 4 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return message

    async def send_text(self, text: str) -> None:
        """Send one text message; raises ConnectionClosed once the connection is closing or closed."""
        try:
            self._protocol.send_text(text.encode())
        except InvalidState:
            p = self._protocol
            raise ConnectionClosed(p.close_rcvd, p.close_sent, p.close_rcvd_then_sent) from None
        self._flush()
        if self._writable is not None and not self._writable.done():
            await self._writable  # the kernel buffer is full: wait for the server to read

    async def close(self, code: int = 1000) -> None:
        """The closing handshake, bounded by ``close_timeout``; then the TCP connection is closed."""
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code)
            self._flush()
            self._expect_close()
        elif self.transport is not None and not self._lost.done():
            self.transport.close()
        try:
            async with asyncio.timeout(self._close_timeout):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self._abort()
            await self._lost


async def open_websocket(
    url: str,
    headers: Mapping[str, str],
    *,
    open_timeout: float = 5.0,
    max_size: int = 2**20,
    max_queue: int = 256,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
    close_timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocketClient:
    """Connect and finish the opening handshake. Raises websockets' ``InvalidStatus`` (with the response) when
    the server refuses, ``InvalidHandshake`` for a broken answer, OSError or TimeoutError for the network."""
    uri = parse_uri(url)
    protocol = ClientProtocol(uri, max_size=max_size)
    request = protocol.connect()
    for name, value in headers.items():
        request.headers[name] = value
    loop = asyncio.get_running_loop()
    client: WebSocketClient | None = None
    try:
        async with asyncio.timeout(open_timeout):
            transport, client = await loop.create_connection(
                lambda: WebSocketClient(protocol, request, max_queue=max_queue, ping_interval=ping_interval,
                                        ping_timeout=ping_timeout, close_timeout=close_timeout),
                uri.host, uri.port,
                ssl=(ssl_context or ssl.create_default_context()) if uri.secure else None,
                server_hostname=uri.host if uri.secure else None,
            )
            client.transport = transport
            await client.opened
    except (OSError, TimeoutError, WebSocketException, asyncio.CancelledError):
        if client is not None and client.transport is not None:
            client.transport.abort()
        raise
    return client
