"""A lean keep-alive HTTP/1.1 client for one origin: OpenAI's calls REST API on the critical path of a ring.

Accept, reject, refer and hangup are small POSTs to one host. Through httpx/httpcore, the pool's bookkeeping
(every queued request matched against every connection, each idle socket polled for readability) was about two
thirds of the controller's CPU per call in the bench profile. Here each connection is an :class:`asyncio.Protocol`:
the event loop reports a peer's close at once (``connection_lost``), so nothing polls, and taking an idle
connection is a pop from a list. Responses are parsed by httptools (the C parser uvicorn uses).

Bounds: concurrency is bounded by the caller (:class:`~sip_controller.realtime.rest.RealtimeCalls` lets a fixed
number of requests in at once); at most ``max_idle`` connections are kept open between requests, each for at
most ``keepalive_s``. A request that finds its reused connection closed before any byte of the answer arrived
(the server dropped an idle keep-alive connection as we wrote) is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

USER_AGENT = "sip-controller"


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer; header names are lower-cased (a repeated header keeps its last value)."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


class HttpFailure(Exception):
    """No HTTP answer: refused, reset, closed mid-answer, unparseable, or timed out (``timeout`` is True)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class _StaleConnection(HttpFailure):
    """A reused connection closed before any byte of the answer: safe to send once more on a new one."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.used = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Reply] | None = None
        self._reason = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._got_bytes = False
        self._framed = False
        self._headers_done = False

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's transports are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpFailure(f"malformed HTTP answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost settles any waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed:  # body delimited by the close itself
            self._complete()
        elif not self._got_bytes and self.used:
            self._fail(_StaleConnection("connection closed before the answer"))
        else:
            why = f": {exc}" if exc else ""
            self._fail(HttpFailure(f"connection closed before the answer was complete{why}"))

    # -- httptools callbacks -----------------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key in ("content-length", "transfer-encoding"):
            self._framed = True
        self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._complete()

    # -- use -----------------------------------------------------------------------------------------------

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        self.used = True  # an earlier answer came in full: a close before the next one is a stale keep-alive
        reply = Reply(self._parser.get_status_code(), self._reason.decode("latin-1"), self._headers,
                      b"".join(self._body))
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _fail(self, exc: HttpFailure) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None
        assert self._waiter is None
        self._reason, self._headers, self._body = b"", {}, []
        self._got_bytes = self._framed = self._headers_done = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()


class Http11Pool:
    """Keep-alive POSTs to one ``http``/``https`` origin (the base URL's host and port)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_idle: int = 100,
        keepalive_s: float = 30.0,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {base_url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        default_port = parts.port is None or parts.port == (443 if self._tls else 80)
        authority = parts.hostname if default_port else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname and default_port:  # IPv6 literal
            authority = f"[{parts.hostname}]"
        self._host_header = authority
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        self._max_idle = max_idle
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self._open if not c.closed)

    def _head(self, path: str, headers: Mapping[str, str], length: int) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self._host_header}", f"User-Agent: {USER_AGENT}", "Accept: */*"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """POST ``body`` to ``url`` (under this pool's origin) with extra ``headers``."""
        if not url.startswith(self._origin + "/"):
            raise ValueError(f"{url!r} is not under {self._origin}")
        if self._closed:
            raise HttpFailure("the HTTP pool is closed")
        path = url[len(self._origin):]
        request = self._head(path, headers, len(body)) + body
        for _ in range(2):
            conn = await self._take()
            try:
                reply = await self._exchange(conn, request)
            except _StaleConnection:
                continue  # a new connection next time round: _take drops closed ones
            except BaseException:
                conn.close()
                self._open.discard(conn)
                raise
            self._give_back(conn)
            return reply
        raise HttpFailure("connection closed before the answer, twice")

    async def _exchange(self, conn: _Connection, request: bytes) -> Reply:
        waiter = conn.send(request)
        try:
            async with asyncio.timeout(self._read_timeout_s):
                return await waiter
        except TimeoutError:
            raise HttpFailure("timed out (ReadTimeout)", timeout=True) from None

    async def _take(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                self._open.discard(conn)
                continue
            if now - conn.idle_since > self._keepalive_s:
                conn.close()
                self._open.discard(conn)
                continue
            return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                transport, conn = await loop.create_connection(
                    _Connection, self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            raise HttpFailure("timed out (ConnectTimeout)", timeout=True) from None
        except (OSError, ssl.SSLError) as exc:
            raise HttpFailure(f"ConnectError: {exc}") from exc
        conn.transport = transport  # uvloop may return before it has called connection_made
        self._open.add(conn)
        return conn

    def _give_back(self, conn: _Connection) -> None:
        if conn.closed or not conn.reusable or self._closed or len(self._idle) >= self._max_idle:
            conn.close()
            self._open.discard(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
