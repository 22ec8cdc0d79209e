"""All live calls: owns their tasks, admits or rejects new ones, keeps recent records, drains on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from sip_controller.agent import session, templates
from sip_controller.calls import routing
from sip_controller.calls.admission import BUSY, DECLINE, UNAVAILABLE, CallerRateLimiter, Refusal
from sip_controller.calls.incoming import IncomingCall
from sip_controller.calls.inputs import Shutdown
from sip_controller.calls.machine import CallMachine
from sip_controller.calls.report import CallRecord
from sip_controller.calls.states import CallState
from sip_controller.calls.supervisor import CallOptions, CallSupervisor
from sip_controller.config import Settings
from sip_controller.realtime.rest import OpenAIError, RealtimeCalls
from sip_controller.realtime.retries import DEFAULT_POLICY, RetryPolicy, with_quick_retries
from sip_controller.realtime.sideband import SidebandConnector

log = structlog.get_logger("sip_controller.calls.registry")

FinishedHook = Callable[[CallRecord], None]


@dataclass
class _Live:
    supervisor: CallSupervisor | None
    task: asyncio.Task[None]
    record: CallRecord
    done: asyncio.Event = field(default_factory=asyncio.Event)


class CallRegistry:
    def __init__(
        self,
        settings: Settings,
        api: RealtimeCalls,
        connect: SidebandConnector,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._settings = settings
        self._api = api
        self._connect = connect
        self._clock = clock
        self._retry = retry
        limits = settings.limits
        self._accept_slots = asyncio.Semaphore(limits.max_accepts_in_flight)
        self._rate = CallerRateLimiter(
            limits.caller_calls_per_minute, anonymous_per_minute=limits.anonymous_calls_per_minute, clock=clock
        )
        self._live: dict[str, _Live] = {}
        self._recent: OrderedDict[str, _Live] = OrderedDict()
        #: called with the record when a call arrives (before accept) and when it has ended, exactly once each
        self.on_started: list[FinishedHook] = []
        #: sideband drops and restorations of any call ("disconnect" / "reconnect"), for metrics
        self.on_sideband: Callable[[str], None] | None = None
        self.on_finished: list[FinishedHook] = []
        self.draining = False

    @property
    def live_count(self) -> int:
        return len(self._live)

    @property
    def at_capacity(self) -> bool:
        return len(self._live) >= self._settings.limits.max_concurrent_calls

    def supervisor(self, call_id: str) -> CallSupervisor | None:
        """The supervisor of a live call (None once it ended, or for a rejected call)."""
        entry = self._live.get(call_id)
        return entry.supervisor if entry else None

    def live_records(self) -> list[CallRecord]:
        return [e.record for e in self._live.values()]

    def get(self, call_id: str) -> CallRecord | None:
        entry = self._live.get(call_id) or self._recent.get(call_id)
        return entry.record if entry else None

    def records(self) -> list[CallRecord]:
        return [e.record for e in self._live.values()] + [e.record for e in self._recent.values()]

    async def wait_ended(self, call_id: str, timeout: float) -> CallRecord:
        entry = self._live.get(call_id) or self._recent.get(call_id)
        if entry is None:
            raise KeyError(call_id)
        async with asyncio.timeout(timeout):
            await entry.done.wait()
        return entry.record

    def admission(self, incoming: IncomingCall) -> Refusal | None:
        """Why this call cannot be taken now, or None. Counts the call against its caller's rate."""
        if self.draining:
            return Refusal(UNAVAILABLE, "draining for shutdown")
        if self.at_capacity:
            return Refusal(BUSY, f"at capacity ({self._settings.limits.max_concurrent_calls} live calls)")
        if not self._rate.allow(incoming.caller):
            who = "caller" if incoming.caller else "callers without a number (one shared limit)"
            return Refusal(DECLINE, f"{who} over {self._rate.limit_for(incoming.caller)} calls per minute")
        return None

    def start(self, incoming: IncomingCall, profile_name: str | None = None) -> Refusal | None:
        """Take charge of a call: supervise it, or reject it with a SIP code (returned) when not admitted."""
        name = profile_name or routing.choose_profile(self._settings, incoming)
        record = CallRecord(
            call_id=incoming.call_id,
            profile=name,
            received_at=incoming.received_at,
            caller=incoming.caller,
            dialed=incoming.dialed,
            twilio_call_sid=incoming.header("X-Twilio-CallSid"),
        )
        self._notify(self.on_started, record)
        refusal = routing.screen_caller(self._settings, incoming) or self.admission(incoming)
        if refusal is not None:
            record.errors.append(f"rejected: {refusal.reason}")
            task = asyncio.create_task(self._reject(record, refusal.status_code), name=f"{incoming.call_id}:reject")
            self._track(_Live(None, task, record))
            return refusal
        profile = self._settings.profile(name)
        instructions = templates.render(
            profile.instructions,
            profile=name,
            timezone=profile.timezone,
            caller=incoming.caller,
            dialed=incoming.dialed,
            header=incoming.header,
            max_chars=profile.template_value_max_chars,
            now=incoming.received_at,
        )
        machine = CallMachine(
            call_id=incoming.call_id,
            profile_name=name,
            profile=profile,
            record=record,
            close_wait_s=self._settings.limits.hangup_close_wait_s,
            accept_body=session.accept_body(profile, instructions=instructions),
            today=incoming.received_at.date(),
            prices=self._settings.pricing.for_model(profile.model),
            transcription_prices=(
                self._settings.pricing.transcription.get(profile.transcription.model) if profile.transcription else None
            ),
            accept_give_up_status=self._settings.limits.accept_give_up_status,
        )
        options = CallOptions(
            ring_budget_s=self._settings.limits.ring_budget_s,
            started_at=self._clock(),
            accept_slots=self._accept_slots,
            retry=self._retry,
            on_sideband=self.on_sideband,
        )
        supervisor = CallSupervisor(machine, self._api, self._connect, clock=self._clock, options=options)
        supervisor.begin()  # the accept request starts now, not a turn of the loop later
        task = asyncio.create_task(self._run(supervisor), name=f"{incoming.call_id}:call")
        self._track(_Live(supervisor, task, record))
        return None

    def _track(self, entry: _Live) -> None:
        self._live[entry.record.call_id] = entry
        entry.task.add_done_callback(lambda _t: self._finished(entry))

    async def _run(self, supervisor: CallSupervisor) -> None:
        await supervisor.run()

    async def _reject(self, record: CallRecord, status_code: int) -> None:
        record.mark(0.0, f"rejected: SIP {status_code}")
        try:
            await with_quick_retries(lambda: self._api.reject(record.call_id, status_code), self._retry)
        except OpenAIError as exc:
            record.errors.append(f"reject failed: {exc}")
        record.state = CallState.REJECTED.value
        record.ended_reason = "rejected"
        record.duration_s = 0.0
        log.info("call.ended", **record.summary())

    def _finished(self, entry: _Live) -> None:
        call_id = entry.record.call_id
        self._live.pop(call_id, None)
        if entry.supervisor is not None:
            entry.supervisor.cancel_tasks()
        if entry.task.cancelled() and entry.record.ended_reason is None:
            entry.record.ended_reason = "shutdown"
        keep = self._settings.limits.recent_calls
        if keep:
            self._recent[call_id] = entry
            while len(self._recent) > keep:
                self._recent.popitem(last=False)
        entry.done.set()
        self._notify(self.on_finished, entry.record)

    @staticmethod
    def _notify(hooks: list[FinishedHook], record: CallRecord) -> None:
        for hook in hooks:
            try:
                hook(record)
            except Exception:
                log.exception("registry.hook_failed", call_id=record.call_id)

    async def drain(self, wait_s: float, wrap_up_s: float) -> None:
        """SIGTERM: take no new calls; let live ones end by themselves for up to ``wait_s``; then wrap up
        and hang up the rest (``shutdown``), cancelling whatever is still running after ``wrap_up_s``."""
        self.draining = True
        log.info("registry.draining", live_calls=self.live_count, wait_s=wait_s)
        tasks = [e.task for e in self._live.values()]
        if tasks and wait_s > 0:
            await asyncio.wait(tasks, timeout=wait_s)
        await self.shutdown(wrap_up_s)
        log.info("registry.drained")

    async def shutdown(self, timeout: float) -> None:
        """Ask every live call to wrap up; after ``timeout`` seconds cancel whatever is left."""
        self.draining = True
        entries = list(self._live.values())
        for entry in entries:
            if entry.supervisor is not None:
                entry.supervisor.post(Shutdown())
        if not entries:
            return
        _done, pending = await asyncio.wait([e.task for e in entries], timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
