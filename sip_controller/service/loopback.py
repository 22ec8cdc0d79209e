"""Run an ASGI app under a real uvicorn server on a free loopback port, owned by the caller."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp


@dataclass(frozen=True)
class RunningServer:
    """A uvicorn server bound to ``host:port``; ``url`` has no trailing slash."""

    host: str
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind a listening TCP socket (port 0 picks a free one) so the port is known before serving."""
    # an explicit proto makes asyncio set TCP_NODELAY on accepted connections (no 40 ms Nagle stalls)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: str = "on",
    ws_max_size: int = 16 * 1024 * 1024,
    sock: socket.socket | None = None,
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` until the block exits; waits for start-up and for a clean shutdown. ``sock``: a socket bound
    beforehand (:func:`bind_socket`) when the app must know its own URL before it starts (closed at the end)."""
    if sock is None:
        sock = bind_socket(host, port)
    host = sock.getsockname()[0]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        ws_max_size=ws_max_size,
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn:{sock.getsockname()[1]}")
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped during start-up")
            await asyncio.sleep(0.01)
        yield RunningServer(host=host, port=sock.getsockname()[1], server=server)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
