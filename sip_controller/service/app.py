"""The Starlette app: routes and lifespan only. Dependencies are passed in; nothing is built at import.

The store is one of them (``store``): an open :class:`~sip_controller.state.store.Store` the caller owns, or an
async opener the lifespan calls and closes (``sipctl serve``: ``open_store`` on the settings). In the lifespan the
process gets its lease id (``new_process_id``), registers it and renews it every ``state.heartbeat_s`` for
``state.lease_s`` (an owned task, which also takes over the live calls of processes whose lease lapsed:
``calls/takeover.py``), runs the bounded sweep (``sweep_loop``), the operator-command poller and the hangup
janitor (``calls/hangups.py``), and at the end ends its lease after the calls are finished and the notifier has
delivered what it could.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sip_controller import __version__
from sip_controller.calls.analysis import requests_for as analysis_requests
from sip_controller.calls.analysis import wanted as analysis_wanted
from sip_controller.calls.commands import run_command_poller
from sip_controller.calls.hangups import run_hangup_janitor
from sip_controller.calls.outbox import report_items
from sip_controller.calls.registry import CallRegistry
from sip_controller.calls.takeover import take_over_orphans
from sip_controller.config import Secrets, Settings, StoreSettings
from sip_controller.realtime.responses import ResponsesAPI
from sip_controller.realtime.rest import MAX_IN_FLIGHT, RealtimeCalls, new_http_client
from sip_controller.realtime.retries import DEFAULT_POLICY, RetryPolicy
from sip_controller.realtime.sideband import LeanConnector, SidebandConnector, connect_websocket
from sip_controller.service import admin, batch_routes, console, diagnostics, retention, twilio_routes
from sip_controller.service.admin import AdminAuth
from sip_controller.service.analysis import AnalysisWorker, close_with_deliveries
from sip_controller.service.dialler import BatchClock, Dialler, SystemClock
from sip_controller.service.heap import HeapFreezer
from sip_controller.service.intake import OtherEvent, WebhookRejected, WebhookVerifier, parse_event
from sip_controller.service.metrics import Metrics
from sip_controller.service.notifier import ReportNotifier
from sip_controller.state.factory import new_process_id
from sip_controller.state.jobs import sweep_loop
from sip_controller.state.records import CallExists, Duplicate
from sip_controller.state.store import Store
from sip_controller.telephony.calls_api import TwilioCalls

#: how the lifespan gets a store it owns (opens at start, closes at the end)
StoreOpener = Callable[[], Awaitable[Store]]

log = structlog.get_logger("sip_controller.service.app")

WEBHOOK_PATH = "/webhooks/openai"


@dataclass
class Runtime:
    """What the routes use, built in the lifespan (so tests and the demo can reach it via app.state)."""

    settings: Settings
    registry: CallRegistry
    store: Store
    verifier: WebhookVerifier
    #: this process's lease id (the owner of the calls it takes)
    process_id: str = ""


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
    return {
        "delivered": stats.delivered,
        "failed": stats.failed,
        "dropped": stats.dropped,
        "gave_up": stats.gave_up,
        "write_failed": stats.write_failed,
    }


async def _heartbeat(store: Store, process_id: str, state: StoreSettings, registry: CallRegistry) -> None:
    """Each ``heartbeat_s`` until cancelled: renew the process's lease, then take over the live calls of processes
    whose lease lapsed (``take_over_orphans``). A failed renewal is logged and tried again at the next beat (the
    lease outlasts two missed beats); a renewal that finds the lease had lapsed tells the registry, whose calls
    then check their fence before acting (another replica may have taken them)."""
    while True:
        try:
            alive = await store.heartbeat(process_id, state.lease_s)
            if not alive:
                log.error("store.lease_lapsed", process_id=process_id)
                await registry.lease_found_lapsed()
            await take_over_orphans(store, registry, process_id)
        except Exception as exc:  # the store's or its driver's: never the end of the loop
            log.warning("store.heartbeat_failed", error=type(exc).__name__)
        await asyncio.sleep(state.heartbeat_s)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


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


def _proxied(base_url: str) -> bool:
    """True when the environment routes ``base_url`` through a proxy (``HTTPS_PROXY`` and friends, unless
    ``NO_PROXY`` exempts the host)."""
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not (parts.hostname and urllib.request.proxy_bypass(parts.hostname))


def _sideband_connector(base_url: str) -> SidebandConnector:
    """The lean WebSocket client for the sidebands (TLS verified against httpx's CA bundle, ``SSL_CERT_FILE``
    honoured), or websockets' own client when a proxy applies: only it honours one. (The REST calls need no such
    choice: the HTTP client reads the proxy settings itself.)"""
    if _proxied(base_url):
        return connect_websocket
    return LeanConnector(httpx.create_ssl_context())


def create_app(
    settings: Settings,
    secrets: Secrets,
    *,
    http_client: httpx.AsyncClient | None = None,
    store: Store | StoreOpener | None = None,
    connect: SidebandConnector | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    drain_timeout_s: float | None = None,
    retry: RetryPolicy = DEFAULT_POLICY,
    metrics: Metrics | None = None,
    freeze_heap: bool = False,
    batch_clock: BatchClock | None = None,
) -> Starlette:
    """Build the service. ``http_client`` (if given) carries OpenAI's REST calls and the operator HTTP tools and stays
    owned by the caller; otherwise the lifespan makes and closes them (:func:`new_http_client`). ``store`` is
    required: an open store (owned by the caller) or an opener whose store the lifespan closes. ``freeze_heap``:
    freeze what survives every second, so the collector's passes never walk live calls (``sipctl serve``; heap.py).
    ``batch_clock``: the outbound batches' clock (default ``wall_clock``; the simulator's is simulated, and the store's
    ``batch_clock`` must be the same one)."""
    secrets.require_for_serving()
    if store is None:
        raise TypeError("create_app needs a store: an open Store, or an async function that opens one")
    batches_clock = batch_clock or SystemClock(wall_clock)
    verifier = WebhookVerifier([s.get_secret_value() for s in secrets.webhook_secrets], clock=wall_clock)
    api_key = secrets.openai_api_key.get_secret_value() if secrets.openai_api_key else ""
    meters = metrics or Metrics()
    auth = AdminAuth(
        secrets.admin_token.get_secret_value() if secrets.admin_token else None,
        settings.console,
        clock=clock,
        wall_clock=wall_clock,
    )
    # SIPCTL_DIAGNOSTICS=1: event-loop lag and collector pauses on /metrics and /v1/diagnostics (diagnostics.py)
    diag = diagnostics.Diagnostics(meters.registry) if diagnostics.enabled() else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if diag is not None:
                diag.start()
                stack.callback(diag.stop)
            if callable(store):
                the_store = await store()
                stack.push_async_callback(the_store.aclose)
            else:
                the_store = store
            auth.use_store(the_store)  # console sessions and the sign-in throttle, shared by the replicas (#13)
            process_id = new_process_id()
            info: dict[str, object] = {"host": socket.gethostname(), "version": __version__}
            await the_store.heartbeat(process_id, settings.state.lease_s, info)
            stack.push_async_callback(the_store.end_lease, process_id)
            keep_batches = settings.twilio.batch_retain_days  # finished outbound batches (#16)
            jobs = [asyncio.create_task(sweep_loop(
                the_store, keep_batches_s=None if keep_batches is None else keep_batches * 86_400.0
            ), name="store:sweep")]  # fmt: skip
            if retention.enabled(settings.history):  # the call history's retention (#17): bounded passes
                jobs.append(asyncio.create_task(
                    retention.retention_loop(the_store, settings.history, clock=wall_clock), name="store:retention"
                ))  # fmt: skip
            stack.push_async_callback(_stop, jobs)
            client = rest_client = http_client
            if client is None:
                # one kind of HTTP client (httpx over aiohttp's pool) for every request; OpenAI's REST calls get a
                # pool of their own so that slow operator tools never hold the connections a ring needs
                client = await stack.enter_async_context(new_http_client())
                rest_client = await stack.enter_async_context(new_http_client(max_connections=MAX_IN_FLIGHT))
            api = RealtimeCalls(
                client, base_url=secrets.openai_base_url, api_key=api_key, rest_client=rest_client,
                observer=meters.openai_request,
            )
            if secrets.twilio is not None:  # Twilio's Calls API on the same HTTP client (#16)
                app.state.twilio_api = TwilioCalls(
                    client, base_url=secrets.twilio.api_base_url, account_sid=secrets.twilio.account_sid,
                    auth=secrets.twilio.rest_auth(), policy=retry,
                )  # fmt: skip
            sideband_connect = connect or _sideband_connector(secrets.openai_base_url)
            registry = CallRegistry(
                settings, api, sideband_connect, store=the_store, owner=process_id, clock=clock,
                wall_clock=wall_clock, retry=retry,
            )  # fmt: skip
            registry.twilio_api = getattr(app.state, "twilio_api", None)  # voicemail hangups (#16)
            registry.twilio_credentials = secrets.twilio  # parked holds (#16)
            if freeze_heap:  # #18: collector passes walk only what is new, never the live calls
                freezer = HeapFreezer(lambda: registry.live_count)
                freezer.start()
                stack.callback(freezer.stop)
            # the lease, renewed each heartbeat, and the calls of lapsed processes taken over (#13)
            jobs.append(asyncio.create_task(
                _heartbeat(the_store, process_id, settings.state, registry), name="store:heartbeat"
            ))  # fmt: skip
            # operator hangups and transfers posted by other replicas for this process's calls
            jobs.append(asyncio.create_task(run_command_poller(the_store, registry, process_id), name="store:commands"))
            registry.on_finished.append(meters.call_ended)
            registry.on_hangup_retry = meters.hangup_retry
            registry.on_sideband = meters.sideband_event
            meters.watch_live_calls(lambda: registry.live_count)
            meters.watch_rate_limits(registry.live_records)
            # reports, driven from the store's outbox; closed after the shutdown below (exit stack, with the analyses:
            # close_with_deliveries) so the reports of the calls it ends go out now if they can (what cannot stays in
            # the outbox for the next process)
            notifier = ReportNotifier(settings.reports, the_store, worker=process_id, wall_clock=wall_clock)
            notifier.start()
            registry.on_started.append(lambda _record: notifier.kick())
            registry.on_finished.append(lambda _record: notifier.kick())
            # hangups OpenAI has not confirmed, of calls nobody supervises any more (left by a drain, a crash, a
            # predecessor): retried with backoff until confirmed, then finished with their report (#13)
            jobs.append(asyncio.create_task(run_hangup_janitor(
                the_store, api, process_id, supervised=registry.supervisor, clock=wall_clock,
                outbox_for=lambda document: [
                    *report_items(document, settings.reports, at=wall_clock()), *analysis_requests(settings, document)
                ],
                on_retry=meters.hangup_retry, on_finished=notifier.kick, late_recording=registry.late_recording,
            ), name="store:hangups"))  # fmt: skip
            app.state.notifier = notifier
            # post-call analyses (#17): a bounded pool beside the calls, fed from the store; the Responses API on
            # OpenAI's REST client and retry policy; stopped before the notifier (its outcomes go out with the rest),
            # both within reports.flush_timeout_s: those still running then are given back to the store
            responses = ResponsesAPI(
                rest_client or client, base_url=secrets.openai_base_url, api_key=api_key, observer=meters.openai_request
            )
            app.state.responses_api = responses  # also the parked holds' text checks (#16)
            analyses = AnalysisWorker(
                settings, the_store, responses, worker=process_id, policy=retry, wall_clock=wall_clock,
                on_stored=notifier.kick,
            )  # fmt: skip
            analyses.start()
            stack.push_async_callback(close_with_deliveries, analyses, notifier, settings)
            # only a call whose profile is analysed wakes the pool: the others would cost two store queries each
            # on the ring path for nothing (other replicas' requests are found by the pool's poll)
            registry.on_finished.append(
                lambda record: analyses.kick() if analysis_wanted(settings, record.profile) is not None else None
            )
            app.state.analyses = analyses
            app.state.runtime = Runtime(settings, registry, the_store, verifier, process_id)
            if secrets.twilio is not None:  # outbound batches (#16): any replica dials their due rows
                dialler = Dialler(settings, the_store, secrets.twilio, app.state.twilio_api, registry,
                                  worker=process_id, clock=batches_clock)  # fmt: skip
                dialler.start()
                stack.push_async_callback(dialler.aclose)
                app.state.dialler = dialler
            log.info(
                "app.started", base_url=secrets.openai_base_url, profiles=sorted(settings.profiles),
                store=the_store.backend, process_id=process_id,
            )  # fmt: skip
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
        try:
            # the dedupe claims go in the call's admission: one store transaction on the ring path (#18)
            refusal = await rt.registry.start(event, claims=(f"webhook:{webhook_id}", f"call:{event.call_id}"))
        except Duplicate as exc:
            key = "webhook_id" if exc.key.startswith("webhook:") else "call_id"
            log.info("webhook.duplicate", key=key, call_id=event.call_id, webhook_id=webhook_id)
            return _Answer(200, "duplicate")
        except CallExists:  # written by another replica (or before a restart) after its claim expired
            log.info("webhook.duplicate", key="call_row", call_id=event.call_id, webhook_id=webhook_id)
            return _Answer(200, "duplicate")
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
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        outbox = None
        if runtime is not None:
            try:
                outbox = await runtime.store.outbox_stats()
            except Exception as exc:  # the store away: the scrape still answers, without the outbox gauges
                log.warning("metrics.outbox_unavailable", error=type(exc).__name__)
        meters.set_outbox(outbox)
        return Response(meters.render(), media_type=CONTENT_TYPE_LATEST)

    endpoint = _WebhookEndpoint(webhook)
    routes = [
        Route(WEBHOOK_PATH, endpoint, methods=["POST"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        *admin.routes(
            auth,
            lambda request: request.app.state.runtime,
            mask_caller=settings.reports.mask_caller,
            export_max_rows=settings.history.export_max_rows,
        ),
        *console.routes(auth, lambda request: request.app.state.runtime),
        # before /v1/outbound/{id}: an unsupported method on /v1/outbound/batches answers with the batch route's Allow
        *batch_routes.routes(secrets.twilio, settings, auth, lambda request: request.app.state.runtime,
                             batches_clock.time),
        *twilio_routes.routes(
            secrets.twilio, settings, auth, lambda request: request.app.state.runtime,
            lambda request: getattr(request.app.state, "twilio_api", None),
        ),
        *diagnostics.routes(diag, auth.authorize),
    ]
    app = _Service(routes=routes, lifespan=lifespan)
    app.webhook = endpoint
    meters.watch_deliveries(lambda: _delivery_counts(app))  # read at scrape time, from the lifespan's notifier
    return app
