"""Just enough HTTP/1.1, WebSocket framing and Standard Webhooks signing for the bench's lean peers.

Standard library only, so the floor responder starts in milliseconds and measures nothing but the wire.
The load peer and the floor both speak the real protocols: HTTP/1.1 with kept-alive connections,
RFC 6455 frames (masked from the client, unmasked from the server, ping/pong and the close handshake),
and Standard Webhooks signatures (HMAC-SHA256 over ``id.timestamp.body``, base64, ``v1,`` prefix).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
TOLERANCE_S = 300


class ProtocolError(Exception):
    """The other side sent something this minimal codec does not accept."""


# ---- Standard Webhooks -------------------------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret (base64 after the prefix)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """A ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def verify(keys: Sequence[bytes], headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """True when the delivery is fresh and one of its signatures matches one of ``keys``."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and stamp.isdigit() and signatures):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > TOLERANCE_S:
        return False
    signed = f"{msg_id}.{stamp}.".encode() + body
    for key in keys:
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
        for candidate in signatures.split():
            version, _, value = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(value.encode(), expected):
                return True
    return False


# ---- HTTP/1.1 ------------------------------------------------------------------------------------------


@dataclass
class Message:
    """One parsed request (``method``/``target``) or response (``status``); header names lower-cased."""

    method: str
    target: str
    status: int
    headers: dict[str, str]
    body: bytes


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def parse_message(buf: bytearray, *, response: bool) -> Message | None:
    """Take one complete message off the front of ``buf`` (Content-Length bodies only); None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ProtocolError("header block too large")
        return None
    first, headers = _parse_head(bytes(buf[:end]))
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ProtocolError("chunked bodies are not supported by the bench codec")
    length = int(headers.get("content-length", "0") or "0")
    if length > MAX_BODY:
        raise ProtocolError("body too large")
    total = end + 4 + length
    if len(buf) < total:
        return None
    body = bytes(buf[end + 4 : total])
    del buf[:total]
    parts = first.split(" ", 2)
    if len(parts) < 2:
        raise ProtocolError(f"bad start line {first[:80]!r}")
    if response:
        return Message("", "", int(parts[1]), headers, body)
    return Message(parts[0], parts[1], 0, headers, body)


_REASONS = {200: "OK", 101: "Switching Protocols", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


def response_bytes(status: int, body: bytes = b"{}", content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def request_bytes(method: str, host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _ClientConnection(asyncio.Protocol):
    """One kept-alive client connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[Message] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            msg = parse_message(self._buf, response=True)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if msg is not None and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(msg)
            if msg.headers.get("connection", "").lower() == "close":
                self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def request(self, data: bytes, on_write: Callable[[int], None] | None = None) -> tuple[Message, int]:
        """Send one request; return the response and the ``perf_counter_ns`` just before it was written
        (also handed to ``on_write`` before writing, so an answer racing the response sees it)."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        sent_ns = time.perf_counter_ns()
        if on_write is not None:
            on_write(sent_ns)
        self.transport.write(data)
        try:
            return await self._waiter, sent_ns
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ClientPool:
    """Kept-alive HTTP/1.1 connections to one ``host:port``, opened on demand up to ``limit``."""

    def __init__(self, host: str, port: int, *, limit: int = 256) -> None:
        self.host = host
        self.port = port
        self._idle: list[_ClientConnection] = []
        self._all: set[_ClientConnection] = set()
        self._sem = asyncio.Semaphore(limit)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    async def request(
        self, data: bytes, *, timeout: float = 10.0, on_write: Callable[[int], None] | None = None
    ) -> tuple[Message, int]:
        async with self._sem:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                loop = asyncio.get_running_loop()
                _, conn = await loop.create_connection(_ClientConnection, self.host, self.port)
                self._all.add(conn)
            try:
                async with asyncio.timeout(timeout):
                    result = await conn.request(data, on_write)
            except BaseException:
                conn.close()
                self._all.discard(conn)
                raise
            if conn.closed:
                conn.close()
                self._all.discard(conn)
            else:
                self._idle.append(conn)
            return result

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()


# ---- WebSocket (RFC 6455) --------------------------------------------------------------------------------


def ws_accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


def ws_handshake_response(key: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        f"sec-websocket-accept: {ws_accept_value(key)}\r\n\r\n"
    ).encode("ascii")


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """An unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def parse_ws_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete frame off the front of ``buf``: ``(opcode, payload)``."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    size = len(buf)
    while size - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n = b1 & 0x7F
        head = 2
        if n == 126:
            if size - pos < 4:
                break
            n = struct.unpack_from("!H", buf, pos + 2)[0]
            head = 4
        elif n == 127:
            if size - pos < 10:
                break
            n = struct.unpack_from("!Q", buf, pos + 2)[0]
            head = 10
        if n > MAX_BODY:
            raise ProtocolError("frame too large")
        masked = b1 & 0x80
        mask = b""
        if masked:
            if size - pos < head + 4:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            head += 4
        if size - pos < head + n:
            break
        payload = bytes(buf[pos + head : pos + head + n])
        if masked:
            payload = _unmask(payload, mask)
        if not b0 & 0x80:
            raise ProtocolError("fragmented messages are not supported by the bench codec")
        frames.append((b0 & 0x0F, payload))
        pos += head + n
    del buf[:pos]
    return frames
