"""`sipctl serve`: uvicorn with a graceful drain on SIGTERM.

First SIGTERM (or SIGINT): ``/readyz`` turns 503 and new webhooks are refused (503, so OpenAI redelivers to
another replica, or SIP 503 with ``limits.drain_mode: reject``); live calls go on until they end or until
``limits.drain_timeout_s``; the rest get a spoken wrap-up and a hangup (``shutdown``); then the server exits.
A second signal exits at once (uvicorn's own handling; the lifespan still hangs up what is left).

The listening sockets are bound first (:func:`listen`), before the app starts: a port in use is refused before
anything logs that it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import socket
from types import FrameType

import structlog
import uvicorn
from starlette.applications import Starlette

from sip_controller.config import Settings
from sip_controller.service.app import Runtime

log = structlog.get_logger("sip_controller.service.serving")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, settings: Settings) -> None:
        super().__init__(config)
        self._app = app
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await super().serve(sockets)
        finally:
            if self._drain is not None and not self._drain.done():
                self._drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._drain

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not on every platform
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _log_tasks)
        if self.started and sockets:  # uvicorn says where it listens only for sockets it bound itself
            log.info("serve.listening", urls=[_url(sock) for sock in sockets])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is None and self._loop is not None and not self.should_exit:
            # a signal handler runs inside whatever task was running: a fresh context, or the drain and its logs
            # would carry that task's bound call_id
            self._loop.call_soon_threadsafe(self._start_drain, sig, context=contextvars.Context())
            return
        super().handle_exit(sig, frame)

    def _start_drain(self, sig: int) -> None:
        if self._drain is None:
            log.warning("serve.signal", signal=signal.Signals(sig).name, action="drain")
            self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        runtime: Runtime | None = getattr(self._app.state, "runtime", None)
        try:
            if runtime is not None:
                limits = self._settings.limits
                await runtime.registry.drain(limits.drain_timeout_s, limits.drain_wrap_up_s)
        finally:
            self.should_exit = True


def _awaiting(coro: object, limit: int = 12) -> list[str]:
    """Where a suspended coroutine waits: its chain of awaits, outermost first (``file:line function``)."""
    chain: list[str] = []
    while coro is not None and len(chain) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            chain.append(type(coro).__name__)  # a Future or another awaitable at the bottom
            break
        chain.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return chain


def _log_tasks() -> None:
    """SIGUSR1: log what every task of the process is waiting on (a drain that does not end, a stuck call)."""
    tasks = [{"name": task.get_name(), "at": _awaiting(task.get_coro())} for task in asyncio.all_tasks()]
    log.warning("serve.tasks", count=len(tasks), tasks=sorted(tasks, key=lambda t: str(t["name"])))


def listen(host: str, port: int) -> list[socket.socket]:
    """Bind the listening sockets before anything starts, the way asyncio's ``create_server`` would (every
    address ``host`` resolves to), so that a port in use or a foreign address is an ``OSError`` here, before the
    app's start-up runs or logs. The caller hands the sockets to :func:`serve`."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def serve(
    app: Starlette, settings: Settings, *, host: str, port: int, sockets: list[socket.socket] | None = None
) -> None:
    """Run until drained: on ``sockets`` from :func:`listen` (what ``sipctl serve`` does), else uvicorn binds
    ``host``:``port`` itself, after the app's start-up."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # uvicorn's loggers propagate to the structlog pipeline set up by configure_logging
        access_log=settings.access_log,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
    DrainingServer(config, app, settings).run(sockets=sockets)
