"""Runs one call: feeds inputs to the pure CallMachine and executes its actions. Owns the call's tasks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from websockets.exceptions import ConnectionClosed

from sip_controller.agent.operator_tools import ToolCall
from sip_controller.calls.actions import (
    Accept,
    Action,
    Attach,
    CancelTimer,
    EndTwilioCall,
    Finish,
    HangingUp,
    Hangup,
    Park,
    Reattach,
    Refer,
    Reject,
    RunTool,
    Send,
    StartTimer,
)
from sip_controller.calls.inputs import (
    AcceptFailed,
    AcceptOk,
    Attached,
    AttachFailed,
    HangupFailed,
    HangupOk,
    Input,
    ParkFailed,
    ParkOk,
    ReferFailed,
    ReferOk,
    SidebandClosed,
    SidebandEvent,
    Start,
    TimerFired,
    ToolDone,
)
from sip_controller.calls.journal import CallJournal
from sip_controller.calls.machine import CallMachine
from sip_controller.calls.report import CallRecord
from sip_controller.calls.states import CallState, EndedReason
from sip_controller.calls.tool_runner import run_tool
from sip_controller.realtime.events import InputTranscriptionCompleted, OutputTranscriptDone
from sip_controller.realtime.rest import (
    CallGone,
    InvalidRequest,
    OpenAIError,
    RateLimited,
    RealtimeCalls,
    ServerError,
    TransportError,
)
from sip_controller.realtime.retries import (
    DEFAULT_POLICY,
    RetryPolicy,
    accept_within_budget,
    ambiguous,
    retrying,
    with_quick_retries,
)
from sip_controller.realtime.sideband import AttachError, Sideband, SidebandConnector

log = structlog.get_logger("sip_controller.calls.supervisor")

#: OpenAI's 400 code for an accept of a call that is already accepted
CALL_ALREADY_ACCEPTED = "call_already_accepted"


class _TaskCrashed:
    """Posted when one of the call's own tasks raised: the call ends as a session_error."""

    def __init__(self, name: str, exc: BaseException) -> None:
        self.name = name
        self.exc = exc


@dataclass(frozen=True)
class CallOptions:
    """Per-call I/O policy from the settings (the state machine never sees these)."""

    #: the accept must succeed this long after ``started_at`` (the webhook's arrival), or the caller is lost
    ring_budget_s: float = 8.0
    #: ``clock()`` when the webhook arrived; None: when the supervisor starts
    started_at: float | None = None
    #: shared cap on accepts in flight
    accept_slots: asyncio.Semaphore | None = None
    retry: RetryPolicy = DEFAULT_POLICY
    #: told "disconnect" when the sideband drops and "reconnect" when it is restored (metrics)
    on_sideband: Callable[[str], None] | None = None
    #: what the call records goes to the store through it, in batches (shown every input the machine handled)
    journal: CallJournal | None = None
    #: awaited with ``(call_id, next_try_at)`` each time a hangup failed and is to be tried again at
    #: ``next_try_at`` (``wall_clock`` seconds): the call is ``hanging_up``. The store's wiring records it
    #: (``update_call(fence, state="hanging_up", wake_at=next_try_at)``) so any replica can finish the hangup
    #: if this process goes; metrics count the retry. A failure of the hook is logged, never fatal.
    on_hanging_up: Callable[[str, float], Awaitable[None]] | None = None
    #: the wall clock ``next_try_at`` is on (the store's scale)
    wall_clock: Callable[[], float] = time.time
    #: awaited before each REST action whose effect outlives this process (hangup, refer, reject): False when
    #: the call is not ours to act on any more (the store's fence no longer holds): the action is dropped
    may_act: Callable[[], Awaitable[bool]] | None = None
    #: hangs up the call's Twilio side (Twilio's Calls API, ``Status=completed``); None: not a Twilio call of
    #: ours, or Twilio is not configured (the OpenAI hangup that follows ends the bridge all the same)
    end_twilio_call: Callable[[], Awaitable[None]] | None = None
    #: on a call Twilio bridged (#16): carries a ``Refer`` out through Twilio, redirecting the Twilio call to TwiML
    #: that dials the target (Twilio hangs the OpenAI leg up); None: OpenAI's ``/refer``
    transfer_twilio_call: Callable[[str], Awaitable[None]] | None = None
    #: on a call Twilio bridged (#16): parks it on Twilio for a long hold (the store keeps the park, the Calls API
    #: moves the call onto TwiML that listens for a person); awaited with the ``Park``; None: parking is refused
    park_twilio_call: Callable[[Park], Awaitable[None]] | None = None


class CallSupervisor:
    """The I/O edge of one call. ``run()`` returns the finished record; it never raises for call errors."""

    def __init__(
        self,
        machine: CallMachine,
        api: RealtimeCalls,
        connect: SidebandConnector,
        *,
        clock: Callable[[], float] = time.monotonic,
        options: CallOptions | None = None,
    ) -> None:
        self.machine = machine
        self._api = api
        self._connect = connect
        self._clock = clock
        self._options = options or CallOptions()
        self._started_at = self._options.started_at if self._options.started_at is not None else clock()
        #: inputs from the call's tasks; None only wakes the run loop (the call finished elsewhere)
        self._inbox: asyncio.Queue[Input | _TaskCrashed | None] = asyncio.Queue()
        #: one input at a time goes through the machine and its actions, whichever task brought it
        self._turn = asyncio.Lock()
        #: set by begin(): the actions of Start still to run (everything but the accept, which is under way)
        self._after_begin: list[Action] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: the machine's timers: loop timer handles (a task each cost far more memory, and the silence
        #: watchdog is restarted on every turn)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sideband: Sideband | None = None
        self._log = log.bind(call_id=machine.call_id, profile=machine.profile_name)

    @property
    def record(self) -> CallRecord:
        return self.machine.record

    def post(self, inp: Input) -> None:
        """Feed an input from outside the call (e.g. Shutdown); safe from any task on this loop."""
        self._inbox.put_nowait(inp)

    async def run(self) -> CallRecord:
        structlog.contextvars.bind_contextvars(call_id=self.machine.call_id)
        try:
            if self._after_begin is None:
                await self._dispatch(Start())
            else:
                async with self._turn:
                    for action in self._after_begin:
                        await self._execute(action)
            while not self.machine.finished:
                item = await self._inbox.get()
                if isinstance(item, _TaskCrashed):
                    raise RuntimeError(f"task {item.name} failed") from item.exc
                if item is not None:
                    await self._dispatch(item)
        except asyncio.CancelledError:
            self.machine.abort("shutdown", "cancelled", self._clock(), keep_pending=True)
            raise
        except Exception:
            self._log.exception("call.crashed")
            live = self.machine.state in (
                CallState.ACCEPTED, CallState.ATTACHED, CallState.ENDING, CallState.HANGING_UP
            )
            self.machine.abort("session_error", "internal error", self._clock())
            if live:
                await self._best_effort_hangup()
        finally:
            await self._close()
            self._log.info("call.ended", **self.record.summary())
        return self.record

    def begin(self) -> None:
        """Take the Start input now, in the caller's task (the webhook's): the accept request is then under way
        one turn of the event loop sooner than from the run task, on the ring path of every call. Optional:
        ``run()`` starts the call itself otherwise."""
        if self._after_begin is not None:
            return
        self._after_begin = []
        for action in self.machine.handle(Start(), self._clock()):
            if isinstance(action, Accept):
                self._start_accept(action.body)
            else:
                self._after_begin.append(action)
        self._journal()

    def resume(self, *, elapsed_s: float, ending: EndedReason | None = None) -> None:
        """In place of ``begin()``, for a call taken over from a process whose lease lapsed: the machine resumes
        (``CallMachine.resume``) and ``run()`` re-attaches the sideband by call_id and supervises from there."""
        if self._after_begin is not None:
            return
        self._after_begin = self.machine.resume(self._clock(), elapsed_s=elapsed_s, ending=ending)
        self._journal()

    async def _allowed(self, what: str) -> bool:
        """Whether a REST action may go out (``CallOptions.may_act``); logged when it may not."""
        check = self._options.may_act
        if check is None or await check():
            return True
        self._log.warning("call.fenced_action_dropped", action=what)
        return False

    def cancel_tasks(self) -> None:
        """Cancel whatever this call still runs (a backstop: a run task cancelled before its first step never
        reaches its own cleanup)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _best_effort_hangup(self) -> None:
        if not await self._allowed("hangup"):
            return
        with contextlib.suppress(OpenAIError):
            await self._api.hangup(self.machine.call_id)

    async def _close(self) -> None:
        tasks = list(self._tasks.values())
        self.cancel_tasks()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sideband is not None:
            with contextlib.suppress(Exception):
                await self._sideband.close()

    async def _dispatch(self, inp: Input) -> None:
        async with self._turn:
            for action in self.machine.handle(inp, self._clock()):
                await self._execute(action)
            self._journal()

    def _journal(self) -> None:
        """Hand the journal what the record gained (buffered; written in batches, never here)."""
        if self._options.journal is not None:
            self._options.journal.observe(self.machine.record)

    async def _feed(self, inp: Input) -> None:
        """A sideband input: handled right here when the call is idle, which spares every event a hop through
        the run loop (on a busy process each hop waits for a whole turn of the event loop); queued behind
        anything already waiting or under way otherwise, so the machine still sees inputs one at a time, in
        order."""
        if self._turn.locked() or not self._inbox.empty() or self.machine.finished:
            self.post(inp)
            return
        await self._dispatch(inp)
        if self.machine.finished:
            self._inbox.put_nowait(None)  # the run loop waits on the inbox: let it see the end

    def _spawn(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work()`` as a task owned by this call (replacing one of the same name). The coroutine is
        made inside the task, so a task cancelled before it starts leaves nothing un-awaited."""
        old = self._tasks.pop(name, None)
        if old is not None:
            old.cancel()
        self._tasks[name] = asyncio.create_task(self._guard(name, work), name=f"{self.machine.call_id}:{name}")

    async def _guard(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._inbox.put_nowait(_TaskCrashed(name, exc))

    async def _execute(self, action: Action) -> None:
        match action:
            case Accept(body=body):
                self._start_accept(body)
            case Attach():
                self._spawn("sideband", lambda: self._attach(reconnect=False))
            case Reattach():
                self._log.warning("call.sideband_reconnecting")
                if self._options.on_sideband is not None:
                    self._options.on_sideband("disconnect")
                self._spawn("sideband", lambda: self._attach(reconnect=True))
            case Reject(status_code=status):
                await self._reject(status)
            case RunTool(call_id=tool_call_id, name=tool_name, arguments=arguments):
                self._log.info("call.tool", tool=tool_name)
                self._spawn(f"tool:{tool_call_id}", lambda: self._run_tool(tool_call_id, tool_name, arguments))
            case Refer(target_uri=target_uri):
                self._log.info("call.refer", via="openai" if self._options.transfer_twilio_call is None else "twilio")
                self._spawn("refer", lambda: self._refer(target_uri))
            case EndTwilioCall():
                self._log.info("call.twilio_hangup")
                self._spawn("twilio_hangup", self._end_twilio_call)
            case Park():
                self._log.info("call.park", expected_min=action.expected_min)
                self._spawn("park", lambda: self._park(action))
            case Send(event=event):
                await self._send(event)
            case Hangup():
                self._log.info("call.hangup")
                self._spawn("hangup", self._hangup)
            case HangingUp(retry_in_s=retry_in_s, attempts=attempts):
                self._log.warning("call.hangup_unconfirmed", retry_in_s=retry_in_s, attempts=attempts)
                await self._hanging_up(self._options.wall_clock() + retry_in_s)
            case StartTimer(name=name, seconds=seconds):
                old = self._timers.pop(name, None)
                if old is not None:
                    old.cancel()
                self._timers[name] = asyncio.get_running_loop().call_later(seconds, self._timer_fired, name)
            case CancelTimer(name=name):
                handle = self._timers.pop(name, None)
                if handle is not None:
                    handle.cancel()
            case Finish():
                pass  # the run loop sees machine.finished and closes everything

    def _start_accept(self, body: dict[str, Any]) -> None:
        self._log.info("call.accepting")
        self._spawn("accept", lambda: self._accept(body))

    async def _accept(self, body: dict[str, Any]) -> None:
        deadline = self._started_at + self._options.ring_budget_s
        slots = self._options.accept_slots

        #: an attempt went unanswered (timeout, reset, 5xx): OpenAI may have carried it out
        unanswered = False

        def on_retry(exc: OpenAIError) -> None:
            nonlocal unanswered
            unanswered = unanswered or ambiguous(exc)
            self._log.info("call.accept_retry", status=exc.status, code=exc.code)

        try:
            async with slots if slots is not None else contextlib.nullcontext():
                await accept_within_budget(
                    self._api,
                    self.machine.call_id,
                    body,
                    deadline=deadline,
                    clock=self._clock,
                    policy=self._options.retry,
                    on_retry=on_retry,
                )
        except CallGone as exc:
            self._log.info("call.accept_gone")
            self.post(AcceptFailed(gone=True, detail=str(exc)))
        except InvalidRequest as exc:
            if exc.code == CALL_ALREADY_ACCEPTED and unanswered:
                # our own earlier accept went through and only its answer was lost; we hold the call's claim,
                # so nobody else accepted it: the call is ours (no reject, no failure)
                self._log.info("call.accepted", already_accepted=True)
                self.post(AcceptOk(already_accepted=True))
                return
            # should have been caught by preflight: say so loudly, with OpenAI's own words
            self._log.error("call.accept_refused", status=exc.status, message=exc.message, param=exc.param)
            self.post(AcceptFailed(gone=False, detail=str(exc), invalid=True))
        except OpenAIError as exc:
            why = self._why_accept_given_up(exc, deadline)
            self._log.warning("call.accept_failed", status=exc.status, error=exc.message, why=why)
            self.post(AcceptFailed(gone=False, detail=str(exc), why=why))
        else:
            self._log.info("call.accepted")
            self.post(AcceptOk())

    def _why_accept_given_up(self, exc: OpenAIError, deadline: float) -> str:
        """Why the accept is not tried again, in the words of the report."""
        now = self._clock()
        if isinstance(exc, RateLimited) and exc.retry_after is not None and now + exc.retry_after >= deadline:
            left = max(0.0, deadline - now)
            return f"Retry-After {exc.retry_after:g}s is past the {left:.1f}s left of the ring budget: given up at once"
        if isinstance(exc, RateLimited | ServerError | TransportError):
            return f"the ring budget ({self._options.ring_budget_s:g}s) ran out while retrying"
        return f"HTTP {exc.status} is not retried"

    async def _connect_with_retries(self, url: str) -> Sideband:
        """A refused or failed handshake is retried (bounded); a 404 means the call is gone and is final."""
        return await retrying(
            lambda: self._connect(url, self._api.sideband_headers),
            lambda exc: isinstance(exc, AttachError) and not exc.gone,
            self._options.retry,
            attempts=self._options.retry.attempts,
            timeout_s=self._options.retry.timeout_s,
        )

    async def _attach(self, *, reconnect: bool) -> None:
        url = self._api.sideband_url(self.machine.call_id)
        try:
            sideband = await self._connect_with_retries(url)
        except AttachError as exc:
            self._log.warning("call.attach_failed", gone=exc.gone, error=str(exc), reconnect=reconnect)
            self.post(AttachFailed(gone=exc.gone, detail=str(exc)))
            return
        self._sideband = sideband
        self._log.info("call.attached", reconnect=reconnect)
        if reconnect and self._options.on_sideband is not None:
            self._options.on_sideband("reconnect")
        self.post(Attached())
        async for event in sideband.events():
            if event.type in ("error", "malformed"):
                self._log.warning("call.sideband_problem", event_type=event.type, detail=_brief(event))
            elif isinstance(event, InputTranscriptionCompleted | OutputTranscriptDone):
                role = "caller" if isinstance(event, InputTranscriptionCompleted) else "assistant"
                self._log.debug("call.transcript", role=role, text=event.transcript)  # never at info
            await self._feed(SidebandEvent(event))
        self.post(SidebandClosed(code=sideband.close_code))

    async def _send(self, event: dict[str, Any]) -> None:
        if self._sideband is None:
            self._log.warning("call.send_without_sideband", event_type=event.get("type"))
            return
        try:
            await self._sideband.send(event)
        except ConnectionClosed:
            self._log.info("call.send_after_close", event_type=event.get("type"))

    async def _reject(self, status_code: int) -> None:
        if not await self._allowed("reject"):
            return
        try:
            await with_quick_retries(lambda: self._api.reject(self.machine.call_id, status_code), self._options.retry)
        except CallGone:
            pass  # the caller already gave up
        except OpenAIError as exc:
            self.record.errors.append(f"reject failed: {exc}")
            self._log.error("call.reject_failed", status=exc.status, error=exc.message)

    async def _run_tool(self, call_id: str, name: str, arguments: dict[str, Any]) -> None:
        tool = self.machine.profile.handler_tools()[name]
        record = self.record
        call = ToolCall(record.call_id, record.profile, record.caller, record.dialed, record.twilio_call_sid)
        answer = await run_tool(tool, arguments, call, self._api.http_client, clock=self._clock)
        if not answer.ok:
            self._log.warning("call.tool_failed", tool=name, outcome=answer.outcome, error=answer.output[:200])
        self.post(
            ToolDone(call_id, answer.ok, answer.output, answer.duration_s, answer.outcome, answer.actions,
                     answer.actions_problem)
        )  # fmt: skip

    async def _refer(self, target_uri: str) -> None:
        if not await self._allowed("refer"):
            return
        move = self._options.transfer_twilio_call
        if move is not None:
            try:
                await move(target_uri)
            except Exception as exc:  # Twilio's refusal, or the transport's: the transfer did not happen
                self._log.warning("call.twilio_transfer_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                self.post(ReferFailed(f"Twilio: {exc}"[:300]))
            else:
                self.post(ReferOk(via="twilio"))
            return
        try:
            await with_quick_retries(lambda: self._api.refer(self.machine.call_id, target_uri), self._options.retry)
        except OpenAIError as exc:
            self._log.warning("call.refer_failed", status=exc.status, error=exc.message)
            self.post(ReferFailed(str(exc)))
        else:
            self.post(ReferOk())

    async def _park(self, park: Park) -> None:
        move = self._options.park_twilio_call
        if move is None:
            self.post(ParkFailed("not a call Twilio bridged here (Twilio is not configured, or the call has no SID)"))
            return
        if not await self._allowed("park"):
            return
        try:
            await move(park)
        except Exception as exc:  # Twilio's refusal, the transport's, or the store's: the call stays on hold mode
            self._log.warning("call.park_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self.post(ParkFailed(f"{type(exc).__name__}: {exc}"[:300]))
        else:
            self.post(ParkOk())

    async def _hangup(self) -> None:
        if not await self._allowed("hangup"):
            return
        attempts = 0

        async def once() -> None:
            nonlocal attempts
            attempts += 1
            await self._api.hangup(self.machine.call_id)

        try:
            await with_quick_retries(once, self._options.retry)
        except CallGone as exc:
            self.post(HangupFailed(gone=True, detail=str(exc), attempts=attempts))
        except OpenAIError as exc:
            self._log.warning("call.hangup_failed", status=exc.status, error=exc.message)
            self.post(HangupFailed(gone=False, detail=str(exc), attempts=attempts))
        else:
            self.post(HangupOk(attempts=attempts))

    async def _end_twilio_call(self) -> None:
        end = self._options.end_twilio_call
        if end is None or not await self._allowed("twilio_hangup"):
            return
        try:
            await end()
        except Exception as exc:  # Twilio's or the transport's: the OpenAI hangup still ends the bridge
            self._log.warning("call.twilio_hangup_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self.record.errors.append(f"Twilio hangup failed: {exc}"[:300])

    async def _hanging_up(self, next_try_at: float) -> None:
        hook = self._options.on_hanging_up
        if hook is None:
            return
        try:
            await hook(self.machine.call_id, next_try_at)
        except Exception:
            self._log.exception("call.hanging_up_hook_failed")

    def _timer_fired(self, name: str) -> None:
        self._timers.pop(name, None)
        self.post(TimerFired(name))


def _brief(event: Any) -> str:
    error = getattr(event, "error", None)
    if error is not None:
        return f"{error.code or error.type}: {error.message}"[:300]
    return str(getattr(event, "reason", ""))[:300]
