"""The per-call state machine: inputs in, actions out. Pure: no I/O, no clock, no asyncio.

The supervisor feeds it inputs (accept results, sideband events, timers, hangup results) with the current
monotonic time and executes the actions it returns. Every call ends exactly once with one ``ended_reason``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Literal

from sip_controller import events as ev
from sip_controller import session, tools
from sip_controller.config import AgentProfile
from sip_controller.report import CallRecord, ToolCallRecord, TranscriptEntry
from sip_controller.validation import Context, check_session, errors

EndedReason = Literal[
    "caller_hangup",
    "agent_end_call",
    "transferred",
    "transfer_failed",
    "max_duration",
    "silence_timeout",
    "budget_exceeded",
    "session_error",
    "accept_failed",
    "rejected",
    "shutdown",
    "operator_hangup",
]

#: Sideband error codes that say something about one request, not about the session being broken.
BENIGN_ERROR_CODES = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response", "rate_limit_exceeded"}
)

GOODBYE_INSTRUCTIONS = (
    "Say a short, warm goodbye to the caller in one sentence, in the language of the conversation. "
    "Do not ask anything and do not call any tool."
)
SHUTDOWN_INSTRUCTIONS = (
    "The line has to close now for maintenance. Apologise briefly, invite the caller to call back, and say "
    "goodbye in one or two sentences. Do not call any tool."
)


class CallState(StrEnum):
    RECEIVED = "received"
    ACCEPTING = "accepting"
    ACCEPTED = "accepted"
    ATTACHED = "attached"
    ENDING = "ending"
    ENDED = "ended"
    REJECTED = "rejected"
    FAILED = "failed"


# ---- inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class AcceptOk:
    pass


@dataclass(frozen=True)
class AcceptFailed:
    gone: bool
    detail: str
    #: OpenAI refused the body (400): the config is wrong, and the caller must not be left ringing
    invalid: bool = False


@dataclass(frozen=True)
class Attached:
    pass


@dataclass(frozen=True)
class AttachFailed:
    gone: bool
    detail: str


@dataclass(frozen=True)
class SidebandEvent:
    event: ev.ServerEvent


@dataclass(frozen=True)
class SidebandClosed:
    code: int | None
    reason: str = ""


@dataclass(frozen=True)
class TimerFired:
    name: str


@dataclass(frozen=True)
class HangupOk:
    pass


@dataclass(frozen=True)
class HangupFailed:
    gone: bool
    detail: str


@dataclass(frozen=True)
class Shutdown:
    """The process is draining: wrap up politely and hang up."""


Input = (
    Start
    | AcceptOk
    | AcceptFailed
    | Attached
    | AttachFailed
    | SidebandEvent
    | SidebandClosed
    | TimerFired
    | HangupOk
    | HangupFailed
    | Shutdown
)

# ---- actions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    body: dict[str, Any]


@dataclass(frozen=True)
class Attach:
    pass


@dataclass(frozen=True)
class Send:
    event: dict[str, Any]


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class Finish:
    reason: EndedReason


@dataclass(frozen=True)
class Reattach:
    """The sideband dropped while the call may still be up: open it again (bounded retries)."""


@dataclass(frozen=True)
class Reject:
    status_code: int


Action = Accept | Attach | Reattach | Send | Hangup | Reject | StartTimer | CancelTimer | Finish

#: sideband reconnects allowed per call before giving up and hanging up through REST
MAX_RECONNECTS = 3

GOODBYE_TIMER = "goodbye"
CLOSE_WAIT_TIMER = "close_wait"
SESSION_ACK_TIMER = "session_ack"


@dataclass
class _PendingUpdate:
    """A session.update sent and not yet acknowledged by session.updated, and what waits for it."""

    event_id: str
    then: list[Action]
    what: str


@dataclass
class _Ending:
    reason: EndedReason
    #: the response whose audio must finish before hanging up (None: not known yet / none)
    response_id: str | None = None
    #: a response.create for the goodbye was sent and its response.created not yet seen
    awaiting_created: bool = False
    hangup_sent: bool = False


@dataclass
class CallMachine:
    """One call's logic. ``handle(input, now)`` returns the actions to execute, in order."""

    call_id: str
    profile_name: str
    profile: AgentProfile
    record: CallRecord
    close_wait_s: float = 3.0
    #: the exact accept body (instructions rendered for this call); built from the profile when None
    accept_body: dict[str, Any] | None = None
    today: date = field(default_factory=lambda: datetime.now(UTC).date())
    state: CallState = CallState.RECEIVED
    _t0: float | None = None
    _ending: _Ending | None = None
    _seen_tool_calls: set[str] = field(default_factory=set)
    _audio_started: set[str] = field(default_factory=set)
    _audio_stopped: set[str] = field(default_factory=set)
    _spoken: set[str] = field(default_factory=set)
    _our_update_ids: set[str] = field(default_factory=set)
    _responses_done: set[str] = field(default_factory=set)
    _drain_requested: bool = False
    _event_seq: int = 0
    _attached_at: float | None = None
    _pending_updates: deque[_PendingUpdate] = field(default_factory=deque)
    _caller_spoke_while_held: bool = False
    _reconnects: int = 0

    @property
    def finished(self) -> bool:
        return self.record.ended_reason is not None

    @property
    def ended_reason(self) -> str | None:
        return self.record.ended_reason

    def handle(self, inp: Input, now: float) -> list[Action]:
        if self._t0 is None:
            self._t0 = now
        if self.finished:
            return []
        rel = now - self._t0
        match inp:
            case Start():
                self._set_state(CallState.ACCEPTING, rel)
                body = self.accept_body if self.accept_body is not None else session.accept_body(self.profile)
                return [Accept(body)]
            case AcceptOk():
                self._set_state(CallState.ACCEPTED, rel)
                return [Attach()]
            case AcceptFailed(gone=gone, detail=detail, invalid=invalid):
                self.record.errors.append(f"accept failed: {detail}")
                self.record.mark(rel, "accept failed" + (" (call gone)" if gone else ""))
                if invalid:
                    self.record.mark(rel, "accept body refused: rejecting the call so it does not ring on")
                    return [Reject(603), *self._finish("accept_failed", rel, CallState.FAILED)]
                return self._finish("accept_failed", rel, CallState.FAILED)
            case Attached():
                if self._attached_at is not None:
                    self.record.mark(rel, "sideband restored")
                    return []
                return self._on_attached(rel)
            case AttachFailed(gone=gone, detail=detail):
                self.record.errors.append(f"sideband attach failed: {detail}")
                if gone:
                    self.record.mark(rel, "sideband attach: call already gone")
                    return self._finish(self._ending.reason if self._ending else "caller_hangup", rel)
                self._ending = _Ending(reason="session_error")
                self._set_state(CallState.ENDING, rel)
                return self._hangup(rel, "no sideband: hanging up rather than leave the call unsupervised")
            case SidebandEvent(event=event):
                return self._on_event(event, rel)
            case SidebandClosed(code=code):
                return self._on_sideband_closed(code, rel)
            case TimerFired(name=name):
                return self._on_timer(name, rel)
            case HangupOk():
                self.record.mark(rel, "hangup acknowledged")
                return [StartTimer(CLOSE_WAIT_TIMER, self.close_wait_s)]
            case HangupFailed(gone=gone, detail=detail):
                reason = self._ending.reason if self._ending else "session_error"
                if gone:
                    self.record.mark(rel, "hangup: call already gone")
                else:
                    self.record.errors.append(f"hangup failed: {detail}")
                    self.record.mark(rel, "hangup failed")
                return self._finish(reason, rel)
            case Shutdown():
                if self.state == CallState.ATTACHED:
                    return self._begin_ending("shutdown", rel, SHUTDOWN_INSTRUCTIONS)
                if self.state == CallState.RECEIVED:
                    return self._finish("shutdown", rel)
                if self.state in (CallState.ACCEPTING, CallState.ACCEPTED):
                    # the accept may already have answered the call: finish it properly once attached
                    self._drain_requested = True
                    self.record.mark(rel, "drain requested")
                return []
        return []  # pragma: no cover - exhaustive match

    def abort(self, reason: EndedReason, why: str, now: float, *, keep_pending: bool = False) -> None:
        """End the call from outside the normal flow (cancelled, crashed). With ``keep_pending``, a reason
        already decided (e.g. ``shutdown`` while its wrap-up was playing) wins over ``reason``."""
        if self.finished:
            return
        if keep_pending and self._ending is not None:
            reason = self._ending.reason
        self.record.errors.append(why)
        state = CallState.ENDED if reason == "shutdown" else CallState.FAILED
        self._finish(reason, now - (self._t0 if self._t0 is not None else now), state)

    # ---- helpers ------------------------------------------------------------------------------------

    def _next_event_id(self, kind: str) -> str:
        self._event_seq += 1
        return f"ctl_{kind}_{self._event_seq}"

    def _set_state(self, state: CallState, rel: float) -> None:
        self.state = state
        self.record.state = state.value
        self.record.mark(rel, state.value)

    def _finish(self, reason: EndedReason, rel: float, state: CallState = CallState.ENDED) -> list[Action]:
        self.state = state
        self.record.state = state.value
        self.record.ended_reason = reason
        self.record.duration_s = round(rel, 3)
        self.record.mark(rel, f"ended: {reason}")
        timers = (GOODBYE_TIMER, CLOSE_WAIT_TIMER, SESSION_ACK_TIMER)
        return [*(CancelTimer(t) for t in timers), Finish(reason)]

    def _on_attached(self, rel: float) -> list[Action]:
        self._set_state(CallState.ATTACHED, rel)
        self._attached_at = rel
        if self._drain_requested:
            return self._begin_ending("shutdown", rel, SHUTDOWN_INSTRUCTIONS)
        greeting: list[Action] = []
        if self.profile.greeting:
            instructions = f'Start the call now: greet the caller by saying exactly "{self.profile.greeting}"'
            greeting.append(Send(self._response_create(instructions)))
        patch = session.deferred_vad_patch(self.profile)
        if patch is None:
            if greeting:
                self.record.mark(rel, "greeting requested")
            return greeting
        # the accept body held automatic responses; nothing is said until the tuning is in force
        return self._update_session(patch, rel, what="VAD tuning", then=greeting)

    def _update_session(self, patch: dict[str, Any], rel: float, *, what: str, then: list[Action]) -> list[Action]:
        """Send a checked session.update; ``then`` runs once OpenAI confirms it with session.updated."""
        event_id = self._next_event_id("session")
        event = session.session_update(self.profile, patch, event_id=event_id)
        ctx = Context(
            today=self.today,
            update=True,
            allow_pcm=self.profile.allow_pcm,
            model=self.profile.model,
            audio_started=bool(self._audio_started),
        )
        problems = errors(check_session(event["session"], ctx))
        if problems:
            for problem in problems:
                self.record.errors.append(f"session.update refused before sending ({what}): {problem}")
            self.record.mark(rel, f"session.update for {what} refused by validation")
            return then
        self._our_update_ids.add(event_id)
        self._pending_updates.append(_PendingUpdate(event_id, then, what))
        self.record.mark(rel, f"session.update sent: {what}")
        actions: list[Action] = [Send(event)]
        if len(self._pending_updates) == 1:
            actions.append(StartTimer(SESSION_ACK_TIMER, self.profile.session_ack_timeout_s))
        return actions

    def _on_session_updated(self, rel: float) -> list[Action]:
        if not self._pending_updates:
            return []
        done = self._pending_updates.popleft()
        self.record.mark(rel, f"session.updated: {done.what} in force")
        actions: list[Action] = [CancelTimer(SESSION_ACK_TIMER)]
        if self._pending_updates:
            actions.append(StartTimer(SESSION_ACK_TIMER, self.profile.session_ack_timeout_s))
        if self._ending is not None:
            return actions
        then = list(done.then)
        if then:
            self.record.mark(rel, "greeting requested")
        elif self._caller_spoke_while_held and not self._pending_updates:
            then.append(Send(self._response_create_plain()))  # answer the turn that was held
            self.record.mark(rel, "answering the caller's held turn")
        if not self._pending_updates:
            self._caller_spoke_while_held = False
        return actions + then

    def _response_create(self, instructions: str, *, tool_choice: str | None = None) -> dict[str, Any]:
        response: dict[str, Any] = {"instructions": instructions}
        if tool_choice is not None:
            response["tool_choice"] = tool_choice
        return {"type": "response.create", "event_id": self._next_event_id("response"), "response": response}

    def _hangup(self, rel: float, why: str) -> list[Action]:
        assert self._ending is not None
        if self._ending.hangup_sent:
            return []
        self._ending.hangup_sent = True
        self.record.mark(rel, f"hangup: {why}")
        return [CancelTimer(GOODBYE_TIMER), Hangup()]

    def _begin_ending(self, reason: EndedReason, rel: float, instructions: str | None) -> list[Action]:
        """Start ending the call: say goodbye (unless the caller already hears one), then hang up."""
        if self._ending is not None:
            return []
        self._ending = _Ending(reason=reason)
        self._set_state(CallState.ENDING, rel)
        timer = StartTimer(GOODBYE_TIMER, self.profile.goodbye_timeout_s)
        if instructions is None:
            return [timer]
        self._ending.awaiting_created = True
        self.record.mark(rel, "goodbye requested")
        return [Send(self._response_create(instructions, tool_choice="none")), timer]

    def _on_sideband_closed(self, code: int | None, rel: float) -> list[Action]:
        """1000 is how the server ends a finished call; anything else may be a dropped socket."""
        self.record.mark(rel, f"sideband closed (code {code})")
        ending = self._ending
        if code == 1000 or (ending is not None and ending.hangup_sent) or self._attached_at is None:
            return self._finish(ending.reason if ending else "caller_hangup", rel)
        if ending is not None:
            # we owed a hangup after the goodbye, and can no longer hear it end: hang up now
            return self._hangup(rel, "sideband lost while ending")
        if self._reconnects < MAX_RECONNECTS:
            self._reconnects += 1
            self.record.mark(rel, f"reconnecting the sideband (try {self._reconnects} of {MAX_RECONNECTS})")
            return [Reattach()]
        self._ending = _Ending(reason="session_error")
        self._set_state(CallState.ENDING, rel)
        self.record.errors.append(f"sideband dropped {self._reconnects + 1} times")
        return self._hangup(rel, "sideband keeps dropping: hanging up rather than leave the call unsupervised")

    def _on_timer(self, name: str, rel: float) -> list[Action]:
        if name == SESSION_ACK_TIMER and self._pending_updates:
            what = self._pending_updates[0].what
            self.record.errors.append(
                f"session.update ({what}) not confirmed within {self.profile.session_ack_timeout_s}s"
            )
            return self._fail_session(rel, f"session.update for {what} never confirmed")
        if name == GOODBYE_TIMER and self._ending is not None:
            return self._hangup(rel, f"goodbye audio not finished after {self.profile.goodbye_timeout_s}s")
        if name == CLOSE_WAIT_TIMER and self._ending is not None:
            self.record.mark(rel, "sideband still open after hangup")
            return self._finish(self._ending.reason, rel)
        return []

    # ---- sideband events ----------------------------------------------------------------------------

    def _on_event(self, event: ev.ServerEvent, rel: float) -> list[Action]:
        match event:
            case ev.InputTranscriptionCompleted(transcript=text):
                if text.strip():
                    self.record.transcripts.append(TranscriptEntry("caller", text.strip(), round(rel, 3)))
            case ev.OutputTranscriptDone(transcript=text, response_id=rid):
                if rid:
                    self._spoken.add(rid)
                if text.strip():
                    self.record.transcripts.append(TranscriptEntry("assistant", text.strip(), round(rel, 3)))
            case ev.ResponseEvent(type="response.created", response=resp):
                if self._ending is not None and self._ending.awaiting_created:
                    self._ending.awaiting_created = False
                    self._ending.response_id = resp.id
            case ev.ResponseEvent(type="response.done", response=resp):
                return self._on_response_done(resp, rel)
            case ev.OutputAudioBuffer(type="output_audio_buffer.started", response_id=rid):
                if rid:
                    self._audio_started.add(rid)
            case ev.OutputAudioBuffer(type=kind, response_id=rid):
                if rid:
                    self._audio_stopped.add(rid)
                end = self._ending
                if end is not None and end.response_id is not None and rid == end.response_id:
                    what = "goodbye heard in full" if kind.endswith("stopped") else "goodbye audio cleared"
                    return self._hangup(rel, what)
            case ev.ErrorEvent(error=err):
                return self._on_error(err, rel)
            case ev.SessionEvent(type="session.updated"):
                return self._on_session_updated(rel)
            case ev.SpeechEdge(type="input_audio_buffer.speech_stopped"):
                if self._pending_updates:
                    self._caller_spoke_while_held = True
            case ev.FunctionCallArgumentsDone() | ev.SessionEvent() | ev.SpeechEdge() | ev.DtmfReceived():
                pass  # tool calls run from response.done, once its status says the response completed
            case ev.InputTranscriptionFailed():
                self.record.mark(rel, "caller transcription failed")
            case ev.UnknownEvent() | ev.MalformedEvent():
                self.record.ignored_events += 1
        return []

    def _on_error(self, err: ev.ErrorDetail, rel: float) -> list[Action]:
        """An error about one of our session updates, or an early one about the session, means the caller
        would be left in static or silence: hang up at once and keep OpenAI's message in the report."""
        where = f" (param {err.param})" if err.param else ""
        self.record.errors.append(f"sideband error {err.code or err.type}: {err.message}{where}")
        ours = err.event_id is not None and err.event_id in self._our_update_ids
        since_attach = rel - (self._attached_at if self._attached_at is not None else rel)
        early = (
            since_attach <= self.profile.early_error_window_s
            and err.type in (None, "invalid_request_error", "server_error")
            and (err.code or "") not in BENIGN_ERROR_CODES
        )
        if not (ours or early or err.code == "session_expired"):
            return []
        return self._fail_session(rel, "session error: the call cannot continue")

    def _fail_session(self, rel: float, why: str) -> list[Action]:
        self.record.mark(rel, why)
        if self._ending is None:
            self._ending = _Ending(reason="session_error")
            self._set_state(CallState.ENDING, rel)
        return self._hangup(rel, "session error")

    def _on_response_done(self, resp: ev.Response, rel: float) -> list[Action]:
        if resp.id:
            if resp.id in self._responses_done:
                self.record.ignored_events += 1  # a duplicated delivery: count usage and tools once
                return []
            self._responses_done.add(resp.id)
        if resp.usage is not None:
            self.record.usage.add(resp.usage)
        completed = resp.status == "completed"
        end = self._ending
        if end is not None and resp.id and resp.id == end.response_id:
            if not completed or (resp.id not in self._audio_started and resp.id not in self._spoken):
                return self._hangup(rel, f"goodbye response {resp.status or 'ended'} without audio")
            if resp.id in self._audio_stopped:
                return self._hangup(rel, "goodbye heard in full")
            return []
        actions: list[Action] = []
        for item in resp.output:
            if item.type != "function_call" or not item.call_id or item.call_id in self._seen_tool_calls:
                continue
            self._seen_tool_calls.add(item.call_id)
            if not completed:
                self.record.tool_calls.append(
                    ToolCallRecord(item.call_id, item.name or "", item.arguments or "", round(rel, 3),
                                   "interrupted", f"response {resp.status}")
                )
                continue
            actions.extend(self._run_tool(item, resp.id, rel))
        return actions

    def _tool_output(self, call_id: str, output: dict[str, Any]) -> Send:
        return Send(
            {
                "type": "conversation.item.create",
                "event_id": self._next_event_id("item"),
                "item": {"type": "function_call_output", "call_id": call_id, "output": json.dumps(output)},
            }
        )

    def _run_tool(self, item: ev.OutputItem, response_id: str, rel: float) -> list[Action]:
        assert item.call_id is not None
        name = item.name or ""
        raw = item.arguments or ""
        spec = tools.BUILTIN_TOOLS.get(name) if name in self.profile.tools else None
        if spec is None:
            self.record.tool_calls.append(ToolCallRecord(item.call_id, name, raw, round(rel, 3), "unknown_tool"))
            available = [e if isinstance(e, str) else str(e.get("name", "")) for e in self.profile.tools]
            error = {"error": f"tool {name!r} cannot be run here; available: {', '.join(available) or 'none'}"}
            return [self._tool_output(item.call_id, error), Send(self._response_create_plain())]
        detail = ""
        try:
            tools.parse_arguments(spec, raw)
        except tools.ToolArgumentsError as exc:
            detail = str(exc)  # end_call still ends the call: the intent is unambiguous
        self.record.tool_calls.append(ToolCallRecord(item.call_id, name, raw, round(rel, 3), "ok", detail))
        self.record.mark(rel, f"tool {name}")
        actions: list[Action] = [self._tool_output(item.call_id, {"status": "ending the call"})]
        # If the model already spoke in the same response, that was its goodbye: wait for it, don't ask again.
        if response_id in self._spoken or response_id in self._audio_started:
            actions.extend(self._begin_ending("agent_end_call", rel, None))
            assert self._ending is not None
            self._ending.response_id = response_id
            if response_id in self._audio_stopped:
                actions.extend(self._hangup(rel, "goodbye heard in full"))
            return actions
        actions.extend(self._begin_ending("agent_end_call", rel, GOODBYE_INSTRUCTIONS))
        return actions

    def _response_create_plain(self) -> dict[str, Any]:
        return {"type": "response.create", "event_id": self._next_event_id("response")}
