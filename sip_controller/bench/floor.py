"""The floor: the least work that can answer a ringing call, to measure the controller against.

Raw asyncio, standard library only: read the webhook request, check its HMAC (and timestamp), answer 200,
and send the accept POST over a kept-alive connection. Nothing else: no dedupe, no decision, no sideband.
Runs as its own process: ``python -m sip_controller.bench.floor --secret … --api-base … --api-key …``;
it prints ``READY <port>`` on stdout once it listens and stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from sip_controller.bench.wire import ClientPool, ProtocolError, parse_message, request_bytes, response_bytes
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


class FloorResponder:
    def __init__(self, secrets: Sequence[str], api_base: str, api_key: str) -> None:
        self.keys = [_secret_key(s) for s in secrets]
        parts = urlsplit(api_base.rstrip("/"))
        self.path_prefix = parts.path
        self.pool = ClientPool(parts.hostname or "127.0.0.1", parts.port or 80)
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.tasks: set[asyncio.Task[None]] = set()

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
            await self.pool.request(request_bytes("POST", self.pool.authority, path, self.headers, ACCEPT_BODY))


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


async def serve(secrets: Sequence[str], api_base: str, api_key: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    floor = FloorResponder(secrets, api_base, api_key)
    server = await loop.create_server(lambda: _Conn(floor), host, port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    gc.freeze()
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()
    floor.pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sip_controller.bench.floor", description=__doc__)
    parser.add_argument("--secret", action="append", required=True, help="whsec_… (repeat while rotating)")
    parser.add_argument("--api-base", required=True, help="e.g. http://127.0.0.1:8001/v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.secret, args.api_base, args.api_key, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
