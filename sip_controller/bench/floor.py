"""The floor: the least work that can answer a ringing call, to measure the controller against.

Raw asyncio, standard library only: read the webhook request, check its HMAC (and timestamp), answer 200,
and send the accept POST over a kept-alive connection. Nothing else: no dedupe, no decision, no sideband.
With ``--attach`` it also does the least a call needs after that: open the sideband WebSocket, wait for
``session.created``, ask for the greeting (``response.create``) and read events until the greeting's audio has
stopped; this is the floor of the CPU per new call.
Runs as its own process: ``python -m sip_controller.bench.floor --secret … --api-base … --api-key …``;
it prints ``READY <port>`` on stdout once it listens and stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import signal
import struct
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from sip_controller.bench.wire import (
    OP_TEXT,
    ClientPool,
    ProtocolError,
    parse_message,
    parse_ws_frames,
    request_bytes,
    response_bytes,
)
from sip_controller.bench.wire import secret_key as _secret_key
from sip_controller.bench.wire import verify as _verify

ACCEPT_BODY = json.dumps(
    {
        "type": "realtime",
        "model": "gpt-realtime-2.1",
        "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}},
    },
    separators=(",", ":"),
).encode()
ACKED = response_bytes(200, b'{"status":"accepted"}')
UNAUTHORIZED = response_bytes(401, b'{"status":"invalid_signature"}')
MALFORMED = response_bytes(400, b'{"status":"malformed"}')


GREETING = json.dumps({"type": "response.create", "response": {"instructions": "Greet the caller."}}).encode()


def masked_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A final client frame (clients must mask)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little") if n else b""
    return head + mask + body


class _Sideband(asyncio.Protocol):
    """The least sideband: handshake, greeting on session.created, read until the greeting's audio stopped."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.transport.close()
                return
            del self.buf[: end + 4]
            self.upgraded = True
        try:
            frames = parse_ws_frames(self.buf)
        except ProtocolError:
            self.transport.close()
            return
        for opcode, payload in frames:
            if opcode == OP_TEXT and json.loads(payload).get("type") == "session.created":
                self.transport.write(masked_frame(GREETING))


class FloorResponder:
    def __init__(self, secrets: Sequence[str], api_base: str, api_key: str, *, attach: bool = False) -> None:
        self.keys = [_secret_key(s) for s in secrets]
        parts = urlsplit(api_base.rstrip("/"))
        self.path_prefix = parts.path
        self.pool = ClientPool(parts.hostname or "127.0.0.1", parts.port or 80)
        self.api_key = api_key
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.tasks: set[asyncio.Task[None]] = set()
        self.attach = attach
        self.sidebands: set[asyncio.Transport] = set()

    def handle(self, headers: dict[str, str], body: bytes) -> bytes:
        if not _verify(self.keys, headers, body):
            return UNAUTHORIZED
        try:
            call_id = json.loads(body)["data"]["call_id"]
        except (ValueError, KeyError, TypeError):
            return MALFORMED
        task = asyncio.get_running_loop().create_task(self.accept(str(call_id)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return ACKED

    async def accept(self, call_id: str) -> None:
        path = f"{self.path_prefix}/realtime/calls/{call_id}/accept"
        with contextlib.suppress(OSError, TimeoutError, ProtocolError):
            msg, _ = await self.pool.request(
                request_bytes("POST", self.pool.authority, path, self.headers, ACCEPT_BODY)
            )
            if self.attach and msg.status == 200:
                await self.open_sideband(call_id)

    async def open_sideband(self, call_id: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.path_prefix}/realtime?call_id={call_id} HTTP/1.1\r\nHost: {self.pool.authority}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {self.api_key}\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: _Sideband(request), self.pool.host, self.pool.port)
        self.sidebands.add(transport)


class _Conn(asyncio.Protocol):
    def __init__(self, floor: FloorResponder) -> None:
        self.floor = floor
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while True:
            try:
                msg = parse_message(self.buf, response=False)
            except ProtocolError:
                self.transport.close()
                return
            if msg is None:
                return
            self.transport.write(self.floor.handle(msg.headers, msg.body))


async def serve(
    secrets: Sequence[str], api_base: str, api_key: str, host: str, port: int, *, attach: bool = False
) -> None:
    loop = asyncio.get_running_loop()
    floor = FloorResponder(secrets, api_base, api_key, attach=attach)
    server = await loop.create_server(lambda: _Conn(floor), host, port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    gc.freeze()
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()
    floor.pool.close()
    for transport in floor.sidebands:
        transport.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sip_controller.bench.floor", description=__doc__)
    parser.add_argument("--secret", action="append", required=True, help="whsec_… (repeat while rotating)")
    parser.add_argument("--api-base", required=True, help="e.g. http://127.0.0.1:8001/v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--attach", action="store_true", help="also open the sideband and ask for the greeting")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.secret, args.api_base, args.api_key, args.host, args.port, attach=args.attach))
    return 0


if __name__ == "__main__":
    sys.exit(main())
