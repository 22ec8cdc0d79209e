"""``Simulator``: OpenAI's Realtime-over-SIP side on loopback, driven by scripted callers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Self

import httpx
from standardwebhooks import Webhook
from starlette.routing import BaseRoute

from ..service.loopback import serve
from .events import new_id
from .faults import Endpoint, Faults
from .model import DEFAULT_HOLD_MARKERS, CallRuntime, SimContext
from .observe import WireObserver
from .records import SimCall
from .responses import ResponsesLog
from .scenario import CallSpec, Scenario
from .server import create_app
from .twilio_api import calls_api_routes
from .twilio_side import TwilioAccount, TwilioSide
from .webhook_sender import WebhookSender, compact_json, incoming_call_event


class Simulator:
    """Serves ``/v1`` (REST + sideband) on 127.0.0.1 and places scripted calls by webhook.

    ``async with Simulator(webhook_secret=..., webhook_url=...) as sim:`` then point the controller's
    ``OPENAI_BASE_URL`` at ``sim.base_url`` and call :meth:`place_call`.

    ``session_update_delay`` (nominal seconds, times ``time_scale``; a call's ``CallSpec.session_update_delay``
    overrides it) is how long a valid ``session.update`` takes to apply: until then the old session is in
    effect and no ``session.updated`` has been sent.

    ``faults`` (:class:`~sip_controller.simulator.faults.Faults`, all off by default) applies to every call;
    a call's ``CallSpec.faults`` overrides the fields it states. Late webhook deliveries (duplicates,
    redeliveries after the hang-up) run in the background: :meth:`settle` waits for them.

    ``hold_markers``: a caller transcript containing one of these (case-insensitive) is hold music or a recorded
    announcement; an out-of-band text check (``conversation: "none"``) of such a line is answered "no", any
    other line "yes" (a person is speaking).

    ``observers`` (:mod:`~sip_controller.simulator.observe`) see every server event sent, every client event and
    REST body received, and every webhook signed.

    ``host`` and ``port`` (0: any free port) are where it listens; ``routes`` are served beside OpenAI's
    (``sipctl simulator``'s control API, :mod:`~sip_controller.simulator.standalone`).

    ``twilio`` (a :class:`~sip_controller.simulator.twilio_side.TwilioAccount`) adds the Twilio stand-in:
    Twilio's Calls API at the same origin (``sim.twilio.base_url``), scripted callees, numbers to ring, TwiML
    whose ``<Dial><Sip>`` to this project places a call here (:mod:`~sip_controller.simulator.twilio_side`).
    """

    def __init__(
        self,
        *,
        webhook_secret: str,
        webhook_url: str | None = None,
        api_key: str = "sk-sim-test",
        time_scale: float = 1.0,
        project_id: str = "proj_sim",
        reject_vad_tuning_on_accept: bool = True,
        session_update_delay: float = 0.15,
        faults: Faults | None = None,
        hold_markers: tuple[str, ...] = DEFAULT_HOLD_MARKERS,
        observers: Sequence[WireObserver] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        routes: Sequence[BaseRoute] = (),
        twilio: TwilioAccount | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if session_update_delay < 0:
            raise ValueError("session_update_delay must not be negative")
        Webhook(webhook_secret)  # fail now on a malformed secret, not at the first call
        self.webhook_url = webhook_url
        self.base_url = ""
        self.calls: dict[str, SimCall] = {}
        self.time_scale = time_scale
        self._secret = webhook_secret
        self._host, self._port, self._routes = host, port, tuple(routes)
        self._ctx = SimContext(
            api_key=api_key,
            time_scale=time_scale,
            project_id=project_id,
            reject_vad_tuning=reject_vad_tuning_on_accept,
            session_update_delay=session_update_delay,
            faults=faults or Faults(),
            hold_markers=tuple(m.casefold() for m in hold_markers if m.strip()),
            observers=tuple(observers),
        )
        self._client: httpx.AsyncClient | None = None
        self._sender: WebhookSender | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._late: dict[asyncio.Task[None], SimCall | None] = {}
        self._stopped = False
        #: the Twilio stand-in (``None`` unless a ``twilio`` account was given)
        self.twilio: TwilioSide | None = TwilioSide(self, twilio) if twilio is not None else None
        #: what ``POST /v1/responses`` saw (the post-call analyses, #17)
        self.responses = ResponsesLog()

    @property
    def project_id(self) -> str:
        """The OpenAI project the simulator plays: ``sip:<project_id>@sip.api.openai.com`` reaches it."""
        return self._ctx.project_id

    @property
    def faults(self) -> Faults:
        """The simulator-wide faults (each call's ``CallSpec.faults`` overrides what it states)."""
        return self._ctx.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self._ctx.faults = value

    @property
    def webhook_secret(self) -> str:
        """The secret the simulator signs its webhooks with (the controller must know it)."""
        return self._secret

    @property
    def api_key(self) -> str:
        return self._ctx.api_key

    @property
    def task_errors(self) -> list[BaseException]:
        """Exceptions from the simulator's own tasks (empty unless the simulator has a bug)."""
        return self._ctx.task_errors

    def now(self) -> float:
        """Seconds since start, the clock every record uses."""
        return self._ctx.now()

    async def start(self) -> None:
        if self._stack is not None or self._stopped:
            raise RuntimeError("a Simulator starts once")
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(httpx.AsyncClient(timeout=httpx.Timeout(10.0)))
            self._sender = WebhookSender(
                self._client, self._secret, time_scale=self.time_scale, on_signed=self._observe_webhook
            )
            app = create_app(self._ctx)
            self.responses = app.state.responses
            app.router.routes.extend(self._routes)
            if self.twilio is not None:
                app.router.routes.extend(calls_api_routes(self.twilio))
                self.twilio.start(self._client)
            server = await stack.enter_async_context(serve(app, host=self._host, port=self._port))
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._ctx.started = time.monotonic()
        self.base_url = f"{server.url}/v1"

    def _observe_webhook(self, body: str, headers: dict[str, str]) -> None:
        event = json.loads(body)  # the simulator's own body: always a JSON object
        data = event.get("data") if isinstance(event, dict) else None
        call_id = data.get("call_id") if isinstance(data, dict) else None
        self._ctx.observe(
            "webhook",
            call_id if isinstance(call_id, str) else None,
            str(event.get("type", "")) if isinstance(event, dict) else "",
            body,
            headers=dict(headers),
            webhook_secret=self._secret,
        )

    async def stop(self) -> None:
        """End every task, close every sideband (1001), stop the server, close the HTTP client."""
        if self._stopped:
            return
        self._stopped = True
        self.responses.stopping.set()  # a slow /v1/responses (Faults.responses.delay_s) answers now
        if self.twilio is not None:
            await self.twilio.stop()
        for runtime in list(self._ctx.runtimes.values()):
            await runtime.shutdown()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._stack is not None:
            await self._stack.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def place_call(
        self, spec: CallSpec, *, also_to: Sequence[str] = (), sip_headers: Sequence[tuple[str, str]] | None = None
    ) -> SimCall:
        """Ring: create the call, deliver its webhook (``spec.deliveries`` times, concurrently, with retries) to
        ``webhook_url``, and the same webhook at the same time to each URL of ``also_to`` (several replicas that
        each received it: the same ``webhook-id``).

        ``sip_headers`` replaces the INVITE's headers (default: an Elastic SIP trunk's, from ``spec``): the
        Twilio stand-in's ``<Dial><Sip>`` passes its own.

        Returns once the deliveries are done; the call goes on in the background.
        """
        if self._sender is None or self._stopped:
            raise RuntimeError("the Simulator is not running")
        url = self.webhook_url
        if not url:
            raise RuntimeError("Simulator.webhook_url is not set")
        call_id = f"rtc_sim_{new_id('', 16)}"
        record = SimCall(
            call_id=call_id,
            name=spec.name,
            spec=spec,
            webhook_id=new_id("wh_", 12),
            event_id=new_id("evt_", 16),
            placed_at=self.now(),
        )
        runtime = CallRuntime(self._ctx, record)
        self._ctx.runtimes[call_id] = runtime
        self.calls[call_id] = record
        runtime.start()
        event = incoming_call_event(call_id, spec, self._ctx.project_id, record.event_id)
        if sip_headers is not None:
            event["data"]["sip_headers"] = [{"name": name, "value": value} for name, value in sip_headers]
        body = compact_json(event)
        task = asyncio.create_task(self._deliver(record, (url, *also_to), body), name=f"sim:{call_id}:webhook")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError("webhook delivery failed inside the simulator") from task.exception()
        self._late_deliveries(runtime, url, body)
        return record

    def _late_deliveries(self, runtime: CallRuntime, url: str, body: str) -> None:
        """Fault injection: duplicated (and so out-of-order) deliveries, a redelivery after the hang-up."""
        faults = runtime.faults.faults
        record = runtime.rec
        for n in range(faults.duplicate_webhooks):
            delay = self._ctx.scaled(faults.webhook_delay.sample(runtime.faults.rng("webhook")))
            webhook_id = new_id("wh_", 12) if faults.duplicate_webhook_new_id else record.webhook_id
            fresh = webhook_id != record.webhook_id
            runtime.faults.note(self.now(), "duplicate_webhook", delay=round(delay, 6), new_id=fresh)
            coro = self._deliver_later(record, url, body, webhook_id, delay)
            self._spawn(coro, f"sim:{record.call_id}:dup{n}", None)
        if faults.redeliver_after_hangup:
            self._spawn(self._redeliver_after_end(runtime, url, body), f"sim:{record.call_id}:redeliver", record)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str, after_end_of: SimCall | None) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        self._late[task] = after_end_of
        task.add_done_callback(self._late_done)

    def _late_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._late.pop(task, None)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self._ctx.task_errors.append(exc)

    async def _deliver_later(self, record: SimCall, url: str, body: str, webhook_id: str, delay: float) -> None:
        assert self._sender is not None
        await asyncio.sleep(delay)
        await self._sender.deliver(url, webhook_id, body, record.delivery_statuses.append)

    async def _redeliver_after_end(self, runtime: CallRuntime, url: str, body: str) -> None:
        assert self._sender is not None
        record = runtime.rec
        await record.ended.wait()
        runtime.faults.note(self.now(), "redeliver_after_hangup")
        await self._sender.deliver(url, record.webhook_id, body, record.delivery_statuses.append)

    async def settle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for late deliveries whose trigger has come: duplicates, and
        redeliveries of calls that have ended. True when none is left running."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    due = [t for t, call in self._late.items() if call is None or call.is_ended]
                    if not due:
                        return True
                    await asyncio.wait(due)
        return False

    async def _deliver(self, record: SimCall, urls: Sequence[str], body: str) -> None:
        assert self._sender is not None
        sender = self._sender
        await asyncio.gather(
            *(
                sender.deliver(url, record.webhook_id, body, record.delivery_statuses.append)
                for url in urls
                for _ in range(record.spec.deliveries)
            )
        )

    def heal(self, call_id: str, endpoint: Endpoint) -> None:
        """Stop injecting errors on ``endpoint`` for this call: e.g. hangups that kept failing start to work."""
        self._ctx.runtimes[call_id].faults.heal(endpoint, self.now())

    async def hang_up(self, call_id: str) -> bool:
        """The far side hangs up (a BYE, or a CANCEL while ringing): the call ends by its caller. False if it had
        already ended."""
        runtime = self._ctx.runtimes.get(call_id)
        return runtime is not None and await runtime.end("caller")

    async def wait_accepted(self, call_id: str, timeout: float) -> bool:
        """True once the call is accepted; False if it ends first or ``timeout`` seconds pass."""
        runtime = self._ctx.runtimes[call_id]
        ended = asyncio.ensure_future(runtime.rec.ended.wait())
        accepted = asyncio.ensure_future(runtime.accepted.wait())
        try:
            await asyncio.wait({ended, accepted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            accepted.cancel()
            await asyncio.gather(ended, accepted, return_exceptions=True)
        return runtime.accepted.is_set()

    async def wait_ended(self, call_id: str, timeout: float) -> SimCall:
        """Wait until the call has ended; ``TimeoutError`` if it has not within ``timeout`` seconds."""
        record = self.calls[call_id]
        async with asyncio.timeout(timeout):
            await record.ended.wait()
        return record

    async def run_scenario(self, scenario: Scenario, timeout: float) -> list[SimCall]:
        """Place every call of ``scenario`` at once and wait (``timeout`` in total) for all to end."""
        async with asyncio.timeout(timeout):
            records = await asyncio.gather(*(self.place_call(spec) for spec in scenario.calls))
            await asyncio.gather(*(record.ended.wait() for record in records))
        return list(records)
