"""`sipctl serve`: uvicorn with a graceful drain on SIGTERM.

First SIGTERM (or SIGINT): ``/readyz`` turns 503 and new webhooks are refused (503, so OpenAI redelivers to
another replica, or SIP 503 with ``limits.drain_mode: reject``); live calls go on until they end or until
``limits.drain_timeout_s``; the rest get a spoken wrap-up and a hangup (``shutdown``); then the server exits.
A second signal exits at once (uvicorn's own handling; the lifespan still hangs up what is left).
"""

from __future__ import annotations

import asyncio
import contextlib
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

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is None and self._loop is not None and not self.should_exit:
            log.warning("serve.signal", signal=signal.Signals(sig).name, action="drain")
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        runtime: Runtime | None = getattr(self._app.state, "runtime", None)
        try:
            if runtime is not None:
                limits = self._settings.limits
                await runtime.registry.drain(limits.drain_timeout_s, limits.drain_wrap_up_s)
        finally:
            self.should_exit = True


def serve(app: Starlette, settings: Settings, *, host: str, port: int) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # uvicorn's loggers propagate to the structlog pipeline set up by configure_logging
        access_log=settings.access_log,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
    DrainingServer(config, app, settings).run()
