"""The Starlette app: routes and lifespan only. Dependencies are passed in; nothing is built at import."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sip_controller.calls.registry import CallRegistry
from sip_controller.config import Secrets, Settings
from sip_controller.realtime.http11 import Http11Pool
from sip_controller.realtime.rest import MAX_IN_FLIGHT, RealtimeCalls, Transport, lean_transport_fits
from sip_controller.realtime.retries import DEFAULT_POLICY, RetryPolicy
from sip_controller.realtime.sideband import LeanConnector, SidebandConnector, connect_websocket
from sip_controller.service import admin, console
from sip_controller.service.admin import AdminAuth
from sip_controller.service.intake import OtherEvent, WebhookRejected, WebhookVerifier, parse_event
from sip_controller.service.metrics import Metrics
from sip_controller.service.notifier import ReportNotifier
from sip_controller.state.store import MemoryStore, StateStore

log = structlog.get_logger("sip_controller.service.app")

WEBHOOK_PATH = "/webhooks/openai"


@dataclass
class Runtime:
    """What the routes use, built in the lifespan (so tests and the demo can reach it via app.state)."""

    settings: Settings
    registry: CallRegistry
    store: StateStore
    verifier: WebhookVerifier


class BodyTooLarge(Exception):
    pass


async def _read_limited(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes (by the declared length, or as it streams in)."""
    declared = Headers(scope=scope).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _delivery_counts(app: Starlette) -> dict[str, int]:
    notifier = getattr(app.state, "notifier", None)
    if notifier is None:
        return {}
    stats = notifier.stats
    return {"delivered": stats.delivered, "failed": stats.failed, "dropped": stats.dropped}


@dataclass(frozen=True, slots=True)
class _Answer:
    """A webhook answer and its outcome label (for the metrics)."""

    status: int
    outcome: str
    detail: str | None = None

    def encode(self) -> bytes:
        body = {"status": self.outcome} if self.detail is None else {"status": self.outcome, "detail": self.detail}
        return json.dumps(body, separators=(",", ":")).encode()


class _WebhookEndpoint:
    """``POST /webhooks/openai`` as a bare ASGI app. :class:`_Service` sends POSTs straight here, past
    Starlette's middleware and router: on the ring path of every call they were a sixth of the CPU per webhook."""

    def __init__(self, handle: Callable[[Scope, Receive], Awaitable[_Answer]]) -> None:
        self._handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self._handle(scope, receive)
        body = answer.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Service(Starlette):
    """The app; webhook POSTs take the short way (see :class:`_WebhookEndpoint`), everything else Starlette's."""

    webhook: _WebhookEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.webhook is not None
            and scope["type"] == "http"
            and scope["path"] == WEBHOOK_PATH
            and scope["method"] == "POST"
        ):
            scope["app"] = self
            await self.webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    secrets: Secrets,
    *,
    http_client: httpx.AsyncClient | None = None,
    store: StateStore | None = None,
    connect: SidebandConnector | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    drain_timeout_s: float | None = None,
    retry: RetryPolicy = DEFAULT_POLICY,
    metrics: Metrics | None = None,
) -> Starlette:
    """Build the service. ``http_client`` (if given) stays owned by the caller; otherwise the lifespan owns one."""
    secrets.require_for_serving()
    verifier = WebhookVerifier([s.get_secret_value() for s in secrets.webhook_secrets], clock=wall_clock)
    api_key = secrets.openai_api_key.get_secret_value() if secrets.openai_api_key else ""
    meters = metrics or Metrics()
    auth = AdminAuth(
        secrets.admin_token.get_secret_value() if secrets.admin_token else None,
        settings.console,
        clock=clock,
        wall_clock=wall_clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            client = http_client
            transport: Transport | None = None
            sideband_connect = connect or connect_websocket
            if client is None:
                # operator HTTP tools and report deliveries use httpx; OpenAI's REST calls and the sidebands
                # the lean transports, unless a proxy is configured (only httpx and websockets honour one)
                client = await stack.enter_async_context(httpx.AsyncClient())
                if lean_transport_fits(secrets.openai_base_url):
                    tls = httpx.create_ssl_context()
                    pool = Http11Pool(secrets.openai_base_url, max_idle=MAX_IN_FLIGHT, ssl_context=tls)
                    stack.push_async_callback(pool.aclose)
                    transport = pool
                    sideband_connect = connect or LeanConnector(tls)
            api = RealtimeCalls(
                client, base_url=secrets.openai_base_url, api_key=api_key, transport=transport,
                observer=meters.openai_request,
            )
            registry = CallRegistry(settings, api, sideband_connect, clock=clock, retry=retry)
            registry.on_finished.append(meters.call_ended)
            registry.on_sideband = meters.sideband_event
            meters.watch_live_calls(lambda: registry.live_count)
            meters.watch_rate_limits(registry.live_records)
            # end-of-call reports; closed after the shutdown below (exit stack) so the calls it ends are reported
            notifier = ReportNotifier(settings.reports)
            notifier.start()
            stack.push_async_callback(notifier.aclose, settings.reports.flush_timeout_s)
            registry.on_started.append(notifier.call_started)
            registry.on_finished.append(notifier.call_ended)
            app.state.notifier = notifier
            app.state.runtime = Runtime(settings, registry, store or MemoryStore(clock=clock), verifier)
            log.info("app.started", base_url=secrets.openai_base_url, profiles=sorted(settings.profiles))
            try:
                yield
            finally:
                # normally the SIGTERM drain (serving.py) has already ended every call; this is the backstop
                wrap_up = drain_timeout_s if drain_timeout_s is not None else settings.limits.drain_wrap_up_s
                await registry.shutdown(wrap_up)
                log.info("app.stopped")

    async def webhook(scope: Scope, receive: Receive) -> _Answer:
        answer = await _webhook(scope, receive)
        meters.webhook(answer.outcome)
        return answer

    async def _webhook(scope: Scope, receive: Receive) -> _Answer:
        rt: Runtime = scope["app"].state.runtime
        try:
            body = await _read_limited(scope, receive, settings.limits.webhook_max_body_bytes)
        except BodyTooLarge:
            log.warning("webhook.rejected", outcome="too_large")
            return _Answer(413, "too_large")
        except ClientDisconnect:
            return _Answer(400, "malformed", "client disconnected")
        try:
            webhook_id = rt.verifier.verify(body, Headers(scope=scope))
            event = parse_event(body, webhook_id)
        except WebhookRejected as exc:
            log.warning("webhook.rejected", outcome=exc.outcome, reason=exc.message)
            return _Answer(exc.status, exc.outcome, exc.message)
        if isinstance(event, OtherEvent):
            log.info("webhook.ignored", event_type=event.type, webhook_id=webhook_id)
            return _Answer(200, "ignored")
        if rt.registry.draining and settings.limits.drain_mode == "redeliver":
            log.warning("webhook.draining", call_id=event.call_id)
            return _Answer(503, "draining")
        ttl = settings.limits.dedupe_ttl_s
        if not await rt.store.claim(f"webhook:{webhook_id}", ttl):
            log.info("webhook.duplicate", key="webhook_id", call_id=event.call_id, webhook_id=webhook_id)
            return _Answer(200, "duplicate")
        if not await rt.store.claim(f"call:{event.call_id}", ttl):
            log.info("webhook.duplicate", key="call_id", call_id=event.call_id, webhook_id=webhook_id)
            return _Answer(200, "duplicate")
        refusal = rt.registry.start(event)
        if refusal is not None:
            log.warning("webhook.refused", call_id=event.call_id, sip_status=refusal.status_code, why=refusal.reason)
            return _Answer(200, "rejected", refusal.reason)
        log.info("webhook.accepted", call_id=event.call_id, webhook_id=webhook_id)
        return _Answer(200, "accepted")

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        if runtime is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        if runtime.registry.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if runtime.registry.at_capacity:
            return JSONResponse({"status": "at_capacity"}, status_code=503)
        return JSONResponse({"status": "ready", "live_calls": runtime.registry.live_count})

    async def metrics_route(request: Request) -> Response:
        return Response(meters.render(), media_type=CONTENT_TYPE_LATEST)

    endpoint = _WebhookEndpoint(webhook)
    routes = [
        Route(WEBHOOK_PATH, endpoint, methods=["POST"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        *admin.routes(auth, lambda request: request.app.state.runtime, mask_caller=settings.reports.mask_caller),
        *console.routes(auth, lambda request: request.app.state.runtime),
    ]
    app = _Service(routes=routes, lifespan=lifespan)
    app.webhook = endpoint
    meters.watch_deliveries(lambda: _delivery_counts(app))  # read at scrape time, from the lifespan's notifier
    return app
