"""The per-call state machine: inputs in, actions out. Pure: no I/O, no clock, no asyncio.

The supervisor feeds it inputs (accept results, sideband events, timers, tool and REST results) with the
current monotonic time and executes the actions it returns. Every call ends exactly once with one
``ended_reason``. The core lives here; transfers, watchdogs, hold mode and the keypad are parts of the call
(``features/``) with their own state, composed here: the machine hands each one its slice of the profile and
serves as their ``CallPort``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from jsonschema import Draft202012Validator

from sip_controller.agent import session, tools
from sip_controller.agent.profile import OPENAI_SESSION_LIMIT_S, AgentProfile, HttpTool, PythonTool
from sip_controller.agent.validation import Context, check_session, errors
from sip_controller.calls import lines, voicemail
from sip_controller.calls.actions import (
    Accept,
    Action,
    Attach,
    CancelTimer,
    EndTwilioCall,
    Finish,
    HangingUp,
    Hangup,
    Reattach,
    Reject,
    RunTool,
    Send,
    StartTimer,
)
from sip_controller.calls.features import turns
from sip_controller.calls.features.control import LiveControl
from sip_controller.calls.features.hold import Hold
from sip_controller.calls.features.keypad import Keypad
from sip_controller.calls.features.transfer import Transfer
from sip_controller.calls.features.watchdog import Watchdog
from sip_controller.calls.inputs import (
    AcceptFailed,
    AcceptOk,
    Attached,
    AttachFailed,
    HangupFailed,
    HangupOk,
    Input,
    MachineDetection,
    OperatorContext,
    OperatorHangup,
    OperatorMute,
    OperatorSay,
    OperatorTransfer,
    ParkFailed,
    ParkOk,
    ReferFailed,
    ReferOk,
    Shutdown,
    SidebandClosed,
    SidebandEvent,
    Start,
    TimerFired,
    ToolDone,
)
from sip_controller.calls.pricing import ModelPrices, TranscriptionPrices, response_cost, transcription_cost
from sip_controller.calls.report import (
    BargeIn,
    BargeInThen,
    CallRecord,
    FailedResponse,
    RateLimitState,
    ToolCallRecord,
    TranscriptEntry,
    TranscriptionUsage,
)
from sip_controller.calls.states import (
    BENIGN_ERROR_CODES,
    CLOSE_WAIT_TIMER,
    FILLER_TIMER_PREFIX,
    GOODBYE_AGAIN_TIMER,
    GOODBYE_BARGE_IN_NOTE,
    GOODBYE_INSTRUCTIONS,
    GOODBYE_QUEUE_MAX_S,
    GOODBYE_TIMER,
    HANGUP_RETRY_MAX_S,
    HANGUP_RETRY_TIMER,
    MAX_RECONNECTS,
    RESUMABLE_REASONS,
    RESUME_NOTE,
    SESSION_ACK_TIMER,
    SESSION_LIMIT_MARGIN_S,
    SESSION_LIMIT_SLACK_S,
    SESSION_LIMIT_TIMER,
    SHUTDOWN_INSTRUCTIONS,
    CallState,
    EndedReason,
)
from sip_controller.calls.tags import ANSWER, PURPOSE_KEY, TOOL_RESULT, Tag, answers, make_tag, request_tag
from sip_controller.realtime import events as ev

FILLER_INSTRUCTIONS = (
    "Say only a very short filler line such as 'One moment, let me check that.' Do not say anything else and "
    "do not call any tool."
)
_MAX_TOOL_OUTPUT = 16_000
_RATE_LIMIT_NAME = re.compile(r"[a-z_]{1,32}")


class RecentIds:
    """A set that keeps only the last ``size`` ids: a long call does not grow with every response. The ids it
    is asked about (the goodbye, a handoff line, a duplicated delivery) are always recent ones."""

    __slots__ = ("_seen", "_size")

    def __init__(self, size: int = 64) -> None:
        # one dict, in insertion order (oldest first), where a deque and a set took about four times the memory (#18)
        self._seen: dict[str, None] = {}
        self._size = size

    def add(self, item: str) -> None:
        if item in self._seen:
            return
        self._seen[item] = None
        if len(self._seen) > self._size:
            del self._seen[next(iter(self._seen))]

    def __contains__(self, item: object) -> bool:
        return item in self._seen

    def __bool__(self) -> bool:
        return bool(self._seen)

    def __len__(self) -> int:
        return len(self._seen)


class ResponseMarks:
    """What has been seen of each recent response (started, stopped, spoken, done) as bit flags: one bounded
    dict for every fact, where a set per fact kept four copies of each id (most of a long call's memory)."""

    __slots__ = ("_ever", "_flags", "_size")

    def __init__(self, size: int = 64) -> None:
        self._flags: dict[str, int] = {}
        self._ever = 0
        self._size = size

    def mark(self, rid: str, flag: int) -> None:
        flags = self._flags.get(rid)
        if flags is None:
            self._flags[rid] = flag
            if len(self._flags) > self._size:
                del self._flags[next(iter(self._flags))]  # the oldest: dicts keep insertion order
        else:
            self._flags[rid] = flags | flag
        self._ever |= flag

    def has(self, rid: object, flag: int) -> bool:
        return isinstance(rid, str) and bool(self._flags.get(rid, 0) & flag)

    def ever(self, flag: int) -> bool:
        return bool(self._ever & flag)

    def view(self, flag: int) -> Marked:
        return Marked(self, flag)


class Marked:
    """The responses with one mark, used like a set: ``add``, ``in``, truth (any marked yet)."""

    __slots__ = ("_flag", "_marks")

    def __init__(self, marks: ResponseMarks, flag: int) -> None:
        self._marks = marks
        self._flag = flag

    def add(self, rid: str) -> None:
        self._marks.mark(rid, self._flag)

    def __contains__(self, rid: object) -> bool:
        return self._marks.has(rid, self._flag)

    def __bool__(self) -> bool:
        return self._marks.ever(self._flag)


_STARTED, _STOPPED, _SPOKEN, _DONE = 1, 2, 4, 8

#: events after which the caller's turn and the model's answer may be over (``CallMachine._turn_over``)
_TURN_EVENTS = frozenset({"response.done", "output_audio_buffer.stopped", "output_audio_buffer.cleared"})
#: events after which the call may be idle: a line waiting for it (live control's ``next``) may be said
_IDLE_EVENTS = _TURN_EVENTS | {"input_audio_buffer.speech_stopped"}


@dataclass(slots=True)
class _PendingUpdate:
    """A session.update sent and not yet acknowledged by session.updated, and what waits for it."""

    event_id: str
    then: list[Action]
    what: str


@dataclass(slots=True)
class _Line:
    """A line the machine asked for and still watches (the greeting): what it says and how often it failed."""

    instructions: str
    purpose: str
    tag: Tag | None
    failures: int = 0


@dataclass(slots=True)
class _Ending:
    reason: EndedReason
    #: the response whose audio must finish before hanging up (None: not known yet / none)
    response_id: str | None = None
    #: the metadata tag of the goodbye asked for: its response is the one that echoes it
    tag: dict[str, str] | None = None
    #: the goodbye was asked for while earlier audio played: its timeout starts when that audio stops
    queued: bool = False
    #: the event_id of that response.create (an `error` naming it means no goodbye will come)
    request_event_id: str | None = None
    #: what the goodbye says, and whether to ask again once the response in progress is done
    instructions: str | None = None
    retry_when_idle: bool = False
    hangup_sent: bool = False
    #: how often the goodbye's response failed (it is asked for again ``lines.LINE_RETRIES`` times)
    failures: int = 0
    #: the caller talked over the goodbye: it is asked for again once the model has answered them
    awaiting_answer: bool = False
    #: the tag purpose of the line said before hanging up (a voicemail message is ``voicemail``)
    purpose: str = "goodbye"
    #: how long its audio may play before the hangup (None: the profile's ``goodbye_timeout_s``)
    timeout_s: float | None = None


@dataclass(slots=True)
class _AfterTurn:
    """A line the caller talked over, to ask for again (``name``: a timer name, dispatched like a timer) once
    their turn and the model's answer to it are over."""

    name: str
    #: a response was created since the caller last started speaking: the model is answering them
    answered: bool = False


@dataclass(slots=True)
class CallMachine:
    """One call's logic. ``handle(input, now)`` returns the actions to execute, in order."""

    call_id: str
    profile_name: str
    profile: AgentProfile
    record: CallRecord
    close_wait_s: float = 3.0
    #: the exact accept body (instructions rendered for this call); built from the profile when None
    accept_body: dict[str, Any] | None = None
    #: the call's day (the session checks depend on it), passed in: the machine reads no clock
    today: date = field(kw_only=True)
    prices: ModelPrices | None = None
    transcription_prices: TranscriptionPrices | None = None
    #: the SIP status a call is rejected with when its accept is given up (``limits.accept_give_up_status``)
    accept_give_up_status: int = 503
    #: what the model is asked to say first instead of the profile's greeting: a call's next leg after a parked
    #: hold (#16), where the person who came back has already spoken
    opening: str | None = None
    #: user messages the conversation starts with, before the opening (what was said before a parked hold and the
    #: person's first words: the caller's words go in as the user's, never into instructions, #16)
    context: tuple[str, ...] = ()
    #: OpenAI ends the session (and the call) this long after the accept
    session_limit_s: float = OPENAI_SESSION_LIMIT_S
    state: CallState = CallState.RECEIVED
    _t0: float | None = None
    ending: _Ending | None = None
    _seen_tool_calls: RecentIds = field(default_factory=RecentIds)
    _responses: ResponseMarks = field(default_factory=ResponseMarks)
    audio_started: Marked = field(init=False)
    audio_stopped: Marked = field(init=False)
    spoken: Marked = field(init=False)
    _responses_done: Marked = field(init=False)
    _our_update_ids: RecentIds = field(default_factory=RecentIds)
    _drain_requested: bool = False
    _event_seq: int = 0
    attached_at: float | None = None
    #: a list (at most a few, and most calls never have one) where an empty deque took a 64-slot block (#18)
    _pending_updates: list[_PendingUpdate] = field(default_factory=list)
    _caller_spoke_while_held: bool = False
    _reconnects: int = 0
    _hangup_failures: int = 0
    #: taken over from another process: the next Attached resumes supervision (see ``resume``)
    _resuming: bool = False
    #: a sideband is open now (attached and not closed since): after a hangup, its close is worth waiting for
    _sideband_open: bool = False
    #: the response whose audio the caller hears now (started, not yet stopped or cleared)
    _playing: str | None = None
    _pending_tools: dict[str, float] = field(default_factory=dict)
    #: the greeting, until its response is over (a failed one is asked for again)
    _greeting: _Line | None = None
    #: the model's responses that failed since the last one that completed
    _failed_in_a_row: int = 0
    #: times the caller talked over a goodbye in this call (``lines.MAX_BARGE_INS``)
    _goodbye_barge_ins: int = 0
    #: lines waiting for the caller's turn and the model's answer to be over (``after_caller_turn``)
    _after_turn: list[_AfterTurn] = field(default_factory=list)
    #: responses created and not yet done (the oldest are forgotten past a few: only "any?" matters)
    _in_progress: dict[str, None] = field(default_factory=dict)
    _caller_speaking: bool = False
    #: a shutdown or an operator's hangup came while the call was already ending: it may not give way
    _end_requested: bool = False
    #: Twilio's answering-machine verdict that came before the call was attached: acted on once it is (#16)
    _amd_pending: str | None = None
    #: a machine was hung up on or left its message: later verdicts change nothing
    _amd_acted: bool = False
    #: the greeting waits for Twilio's answering-machine verdict (``voicemail.GREETING_WAIT_S`` at most)
    _greeting_waits: bool = False
    #: the features: each holds its own state and its slice of the profile; they reach the call through
    #: this machine as their ``CallPort`` (passed to each call, never kept)
    transfer: Transfer = field(init=False)
    watchdog: Watchdog = field(init=False)
    hold: Hold = field(init=False)
    keypad: Keypad = field(init=False)
    control: LiveControl = field(init=False)

    def __post_init__(self) -> None:
        marks = self._responses
        self.audio_started = marks.view(_STARTED)
        self.audio_stopped = marks.view(_STOPPED)
        self.spoken = marks.view(_SPOKEN)
        self._responses_done = marks.view(_DONE)
        p = self.profile
        self.transfer = Transfer(p.transfer, p.goodbye_timeout_s)
        self.watchdog = Watchdog(p.watchdogs)
        self.hold = Hold(p.hold, p.turn_detection)
        self.keypad = Keypad(p.dtmf)
        self.control = LiveControl(p.turn_detection)

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
            case AcceptOk(already_accepted=already):
                if already:
                    self.record.mark(rel, "accept: OpenAI says already accepted: our earlier accept, whose answer "
                                          "was lost, went through")
                self._set_state(CallState.ACCEPTED, rel)
                self.record.accepted_s = round(rel, 3)
                return [Attach()]
            case AcceptFailed(gone=gone, detail=detail, invalid=invalid, why=why):
                self.record.errors.append(f"accept failed: {detail}" + (f"; {why}" if why else ""))
                self.record.mark(rel, "accept failed" + (" (call gone)" if gone else ""))
                if invalid:
                    self.record.mark(rel, "accept body refused: rejecting the call so it does not ring on")
                    return [Reject(603), *self.finish("accept_failed", rel, CallState.FAILED)]
                if gone:  # the caller hung up, or the call expired: nothing is left to reject
                    return self.finish("accept_failed", rel, CallState.FAILED)
                # given up: a clear SIP status instead of ringing until the caller's carrier times out
                status = self.accept_give_up_status
                self.record.mark(rel, f"accept given up: {why or detail}; rejecting the call with SIP {status}")
                return [Reject(status), *self.finish("accept_failed", rel, CallState.FAILED)]
            case Attached():
                self._sideband_open = True
                if self._resuming:
                    return self._on_resumed(rel)
                if self.attached_at is not None:
                    self.record.mark(rel, "sideband restored")
                    return []
                return self._on_attached(rel)
            case AttachFailed(gone=gone, detail=detail):
                self.record.errors.append(f"sideband attach failed: {detail}")
                if gone:
                    self.record.mark(rel, "sideband attach: call already gone")
                    return self.finish(self.ending.reason if self.ending else "caller_hangup", rel)
                self.ending = self.ending or _Ending(reason="session_error")
                self._set_state(CallState.ENDING, rel)
                return self.hangup(rel, "no sideband: hanging up rather than leave the call unsupervised")
            case SidebandEvent(event=event):
                return self._on_event(event, rel)
            case SidebandClosed(code=code):
                return self._on_sideband_closed(code, rel)
            case TimerFired(name=name):
                return self._on_timer(name, rel)
            case HangupOk(attempts=attempts):
                self.record.hangup_attempts += attempts
                self.record.hangup_confirmed = True
                self.record.mark(rel, "hangup acknowledged")
                if not self._sideband_open:  # no close is coming: the report need not wait for one
                    self.record.mark(rel, "no sideband open: finishing at once")
                    return self.finish(self.ending.reason if self.ending else "session_error", rel)
                return [StartTimer(CLOSE_WAIT_TIMER, self.close_wait_s)]
            case HangupFailed(gone=gone, detail=detail, attempts=attempts):
                self.record.hangup_attempts += attempts
                return self._on_hangup_failed(gone, detail, rel)
            case Shutdown(now=immediate):
                return self._on_shutdown(rel, immediate)
            case OperatorHangup(now=immediate):
                return self._on_operator_hangup(immediate, rel)
            case OperatorTransfer(target=target):
                return self.transfer.on_operator(self, target, rel)
            case ToolDone():
                return self._on_tool_done(inp, rel)
            case ReferOk(via=via):
                return self.transfer.on_refer_ok(self, rel, via=via)
            case ReferFailed(detail=detail):
                return self.transfer.on_refer_failed(self, detail, rel)
            case ParkOk():
                return self._on_parked(rel)
            case ParkFailed(detail=detail):
                failed = self.hold.on_park_failed(self, detail, rel)
                if not self._sideband_open and self.ending is None and self.state == CallState.ATTACHED:
                    # the leg closed while Twilio was asked, and Twilio did not take the line: the far side left
                    return [*failed, *self.finish("caller_hangup", rel)]
                return failed
            case MachineDetection(answered_by=verdict):
                return self._on_machine_detection(verdict, rel)
            case OperatorSay() | OperatorContext() | OperatorMute():
                return self.control.on_input(self, inp, rel)
        return []  # pragma: no cover - exhaustive match

    def resume(self, now: float, *, elapsed_s: float, ending: EndedReason | None = None) -> list[Action]:
        """Take over a call that another process supervised until its lease lapsed (#13), in place of ``Start``.
        ``record`` holds what the store kept (transcript, marks, tool calls, usage, ``accepted_s``/``attached_s``);
        ``elapsed_s``: seconds since the call arrived, so time counts from the original start (watchdogs, the
        session limit, the report's duration). The call is attached but its sideband must be opened again:
        ``Reattach``. Once ``Attached``, supervision goes on (the watchdogs with what is left, no second
        greeting); ``ending``: the call was ending when its owner was lost, so it is hung up at once. A 404 on the
        attach ends the call as ``caller_hangup``; any other failure hangs up through REST (``AttachFailed``)."""
        self._t0 = now - elapsed_s
        rel = elapsed_s
        self._resuming = True
        self.attached_at = self.record.attached_s
        if ending is not None:
            self.ending = _Ending(reason=ending)
        # the turn detection the lost owner left at OpenAI: muted by live control, waiting on hold
        self.control.restore(self.record.muted)
        self.record.muted = self.control.muted
        self.hold.restore(self.record.on_hold_since_s)
        self._set_state(CallState.ENDING if ending is not None else CallState.ATTACHED, rel)
        self.record.mark(rel, "taken over: re-attaching the sideband")
        return [Reattach()]

    def _on_resumed(self, rel: float) -> list[Action]:
        self._resuming = False
        self.record.mark(rel, "taken over: sideband re-attached")
        if self.ending is not None:
            return self.hangup(rel, "taken over while ending")
        if self.attached_at is None:  # never attached before: the call starts here (greeting and all)
            return self._on_attached(rel)
        return [*self.watchdog.start(rel, since=self.attached_at), self._session_guard(rel), *self._turns_again(rel)]

    def _turns_again(self, rel: float) -> list[Action]:
        """A call taken over muted or on hold: the agent still does not answer on its own (silence is not counted,
        the maximum hold time runs on), and the turn detection of both is said to OpenAI again. It is the state
        the session already had, so saying it again is safe, and it covers an update the lost owner sent whose
        ``session.updated`` never came."""
        on_hold, muted = self.hold.active, self.control.muted
        if not (on_hold or muted):
            return []
        if muted:
            self.record.mark(rel, "taken over: muted")
        actions = [*self.hold.taken_over(self, rel), *self.pause_silence(True)]
        td = turns.turn_detection(self.profile.turn_detection, on_hold=on_hold, muted=muted)
        if td is None:
            return actions
        what = "taken over " + " and ".join(w for w, on in (("on hold", on_hold), ("muted", muted)) if on)
        return actions + self.update_session(turns.session_patch(td), rel, what=what, then=[])

    def abort(self, reason: EndedReason, why: str, now: float, *, keep_pending: bool = False) -> None:
        """End the call from outside the normal flow (cancelled, crashed). With ``keep_pending``, a reason
        already decided (e.g. ``shutdown`` while its wrap-up was playing) wins over ``reason``."""
        if self.finished:
            return
        if keep_pending and self.ending is not None:
            reason = self.ending.reason
        self.record.errors.append(why)
        state = CallState.ENDED if reason == "shutdown" else CallState.FAILED
        unconfirmed = self.state == CallState.HANGING_UP or (self.ending is not None and self.ending.hangup_sent)
        if unconfirmed and not self.record.hangup_confirmed:
            # the call may still be up at OpenAI: it stays hanging_up (the store's janitor finishes the hangup)
            self.record.hangup_confirmed = False
            state = CallState.HANGING_UP
        self.finish(reason, now - (self._t0 if self._t0 is not None else now), state)

    # ---- the CallPort the features see, and shared helpers ------------------------------------------

    @property
    def live(self) -> bool:
        """Attached and not ending: the conversation is going on."""
        return self.state == CallState.ATTACHED and self.ending is None

    # what live control (``features/control.py``) asks of the call, beyond a feature's port
    @property
    def ending_or_over(self) -> bool:
        return self.ending is not None or self.finished or self.state in (CallState.ENDING, CallState.HANGING_UP)

    @property
    def responding(self) -> bool:
        return bool(self._in_progress)

    @property
    def now_playing(self) -> str | None:
        return self._playing

    @property
    def caller_is_speaking(self) -> bool:
        return self._caller_speaking

    @property
    def transferring(self) -> bool:
        return self.transfer.attempt is not None

    @property
    def on_hold(self) -> bool:
        return self.hold.active

    @property
    def muted(self) -> bool:
        return self.control.muted

    def next_event_id(self, kind: str) -> str:
        self._event_seq += 1
        return f"ctl_{kind}_{self._event_seq}"

    def ask(self, response: Mapping[str, Any], *, purpose: str) -> Send:
        """A response.create with ``response`` as its body, tagged with ``purpose`` (``calls/tags.py``); metadata
        the body carries already is kept beside the tag."""
        event_id = self.next_event_id("response")
        metadata = {**(response.get("metadata") or {}), **make_tag(purpose, self._event_seq)}
        return Send({"type": "response.create", "event_id": event_id, "response": {**response, "metadata": metadata}})

    def say(self, instructions: str, *, purpose: str = "say", tool_choice: str | None = "none") -> Send:
        """A response.create that makes the model say something specific (no tools by default), tagged with
        ``purpose`` (``calls/tags.py``)."""
        response: dict[str, Any] = {"instructions": instructions}
        if tool_choice is not None:
            response["tool_choice"] = tool_choice
        return self.ask(response, purpose=purpose)

    def respond(self, purpose: str = ANSWER) -> Send:
        """A plain response.create: the model answers the conversation as it stands, tagged with ``purpose`` like
        every request (nothing waits for its audio, but a failure on the report says what it answered)."""
        return self.ask({}, purpose=purpose)

    def tool_output(self, call_id: str, output: dict[str, Any] | str) -> Send:
        text = output if isinstance(output, str) else json.dumps(output)
        return Send(
            {
                "type": "conversation.item.create",
                "event_id": self.next_event_id("item"),
                "item": {"type": "function_call_output", "call_id": call_id, "output": text[:_MAX_TOOL_OUTPUT]},
            }
        )

    def user_text(self, text: str) -> Send:
        return Send(
            {
                "type": "conversation.item.create",
                "event_id": self.next_event_id("item"),
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
            }
        )

    def note(self, text: str) -> Send:
        """A system message added to the conversation: what the model should know before it answers next."""
        return Send(
            {
                "type": "conversation.item.create",
                "event_id": self.next_event_id("item"),
                "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]},
            }
        )

    def after_caller_turn(self, name: str, rel: float) -> list[Action]:
        """Once the caller has finished speaking and the model's answer to them has been heard, ``name`` is
        dispatched as if it were a timer; a real timer of that name bounds the wait (``lines.ANSWER_WAIT_MAX_S``)."""
        self._after_turn = [w for w in self._after_turn if w.name != name]
        self._after_turn.append(_AfterTurn(name))
        return [StartTimer(name, lines.ANSWER_WAIT_MAX_S)]

    def _turn_over(self, rel: float) -> list[Action]:
        """The caller is not speaking, no response is being made or heard, and the model answered them since
        they last started: the lines waiting for that are asked for again."""
        if self._caller_speaking or self._playing is not None or self._in_progress:
            return []
        ready = [w for w in self._after_turn if w.answered]
        if not ready:
            return []
        actions: list[Action] = []
        for waiter in ready:
            actions.append(CancelTimer(waiter.name))
            actions.extend(self._on_timer(waiter.name, rel))
        return actions

    def _set_state(self, state: CallState, rel: float) -> None:
        self.state = state
        self.record.state = state.value
        if state == CallState.ENDING and self.ending is not None:
            self.record.ending_reason = self.ending.reason
        self.record.mark(rel, state.value)

    def finish(self, reason: EndedReason, rel: float, state: CallState = CallState.ENDED) -> list[Action]:
        self.state = state
        self.record.state = state.value
        self.record.ended_reason = reason
        self.record.duration_s = round(rel, 3)
        self.hold.settle(self, rel)
        self.keypad.settle(self, rel)
        self.record.mark(rel, f"ended: {reason}")
        return [Finish(reason)]

    def hangup(self, rel: float, why: str) -> list[Action]:
        assert self.ending is not None
        if self.ending.hangup_sent:
            return []
        self.ending.hangup_sent = True
        self.record.mark(rel, f"hangup: {why}")
        return [CancelTimer(GOODBYE_TIMER), Hangup()]

    def begin_ending(
        self, reason: EndedReason, rel: float, instructions: str | None, *, purpose: str = "goodbye",
        timeout_s: float | None = None,
    ) -> list[Action]:  # fmt: skip
        """Every way a call ends goes through here: say goodbye (unless the caller already hears one), wait for
        that audio to finish (``output_audio_buffer.stopped``, with a timeout), then hang up. ``purpose`` and
        ``timeout_s``: a last line that is not a goodbye (a voicemail message) and the time its audio may take."""
        if self.ending is not None or self.state not in (CallState.ATTACHED, CallState.ACCEPTED):
            return []
        self.ending = _Ending(reason=reason, purpose=purpose, timeout_s=timeout_s)
        self._set_state(CallState.ENDING, rel)
        timeout = self._goodbye_timeout_s()
        if instructions is None:
            return [*self.watchdog.stop(), StartTimer(GOODBYE_TIMER, timeout)]
        self.ending.instructions = instructions
        return [self._request_goodbye(rel), *self.watchdog.stop(), *self._goodbye_clock()]

    def _request_goodbye(self, rel: float) -> Send:
        assert self.ending is not None
        assert self.ending.instructions is not None
        self.record.mark(rel, f"{self.ending.purpose} requested")
        request = self.say(self.ending.instructions, purpose=self.ending.purpose)
        self.ending.response_id = None  # a goodbye asked for again is a new response
        self.ending.tag = request.event["response"]["metadata"]
        self.ending.request_event_id = request.event.get("event_id")
        return request

    def _goodbye_clock(self) -> list[Action]:
        """The goodbye fallback (``GOODBYE_QUEUE_MAX_S`` in ``states.py``): ``goodbye_timeout_s`` from when the
        goodbye could start playing; while earlier audio still plays, only a bound until that audio stops."""
        assert self.ending is not None
        self.ending.queued = self._playing is not None
        if self.ending.queued:
            return [StartTimer(GOODBYE_TIMER, GOODBYE_QUEUE_MAX_S)]
        return [StartTimer(GOODBYE_TIMER, self._goodbye_timeout_s())]

    def _goodbye_timeout_s(self) -> float:
        end = self.ending
        return end.timeout_s if end is not None and end.timeout_s is not None else self.profile.goodbye_timeout_s

    def update_session(self, patch: dict[str, Any], rel: float, *, what: str, then: list[Action]) -> list[Action]:
        """Send a checked session.update; ``then`` runs once OpenAI confirms it with session.updated."""
        event_id = self.next_event_id("session")
        event = session.session_update(self.profile, patch, event_id=event_id)
        ctx = Context(
            today=self.today,
            update=True,
            allow_pcm=self.profile.allow_pcm,
            model=self.profile.model,
            audio_started=bool(self.audio_started),
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

    def start_transfer(self, target: str, rel: float) -> list[Action]:
        """For the keypad: a feature asks another one only through the call."""
        return self.transfer.start(self, target, rel)

    def pause_silence(self, paused: bool) -> list[Action]:
        """Waiting on hold is not silence, nor is a caller waiting while the agent is muted (the operator has the
        call: no nudge, no silence goodbye): counted again once neither is in force."""
        return self.watchdog.pause_silence(self, paused or self.hold.active or self.control.muted)

    def model_failed(self, rel: float, why: str) -> list[Action]:
        """The model cannot say what the call needs (a line failed again, or answer after answer fails): hang up
        at once as ``model_error`` rather than leave the caller in silence. An ending under way ends so too."""
        self.record.errors.append(f"model error: {why}")
        self.record.mark(rel, f"model error: {why}")
        if self.ending is None:
            if self.state not in (CallState.ATTACHED, CallState.ACCEPTED):
                return []
            self.ending = _Ending(reason="model_error")
            self._set_state(CallState.ENDING, rel)
            return [*self.watchdog.stop(), *self.hangup(rel, "the model keeps failing")]
        if self.ending.reason != "model_error":
            self.record.mark(rel, f"ending for {self.ending.reason}: now model_error")
            self.ending.reason = "model_error"
        return self.hangup(rel, "the model keeps failing")

    def fail_session(self, rel: float, why: str) -> list[Action]:
        self.record.mark(rel, why)
        if self.ending is None:
            self.ending = _Ending(reason="session_error")
            self._set_state(CallState.ENDING, rel)
        return self.hangup(rel, "session error")

    # ---- lifecycle ----------------------------------------------------------------------------------

    def _on_attached(self, rel: float) -> list[Action]:
        self._set_state(CallState.ATTACHED, rel)
        self.attached_at = rel
        self.record.attached_s = round(rel, 3)
        if self._drain_requested:
            return self.begin_ending("shutdown", rel, SHUTDOWN_INSTRUCTIONS)
        if self._amd_pending is not None:  # Twilio's verdict came first: a machine gets no greeting
            verdict, self._amd_pending = self._amd_pending, None
            acted = self._act_on_machine(verdict, rel)
            if self.ending is not None:
                return [self._session_guard(rel), *acted]
        timers: list[Action] = [*self.watchdog.start(rel), self._session_guard(rel)]
        timers += [self.user_text(text) for text in self.context]
        greeting: list[Action] = []
        if self.profile.greeting and self._verdict_awaited():
            # a call we placed with asynchronous answering-machine detection: a fax or a machine is never greeted
            self._greeting_waits = True
            self.record.mark(rel, "greeting: waiting for Twilio's answering-machine verdict")
            timers.append(StartTimer(voicemail.GREETING_WAIT_TIMER, voicemail.GREETING_WAIT_S))
        elif self.profile.greeting or self.opening is not None:
            greeting.append(self._greeting_request())
        patch = session.deferred_vad_patch(self.profile)
        if patch is None:
            if greeting:
                self.record.mark(rel, "greeting requested")
            return timers + greeting
        # the accept body held automatic responses; nothing is said until the tuning is in force
        return timers + self.update_session(patch, rel, what="VAD tuning", then=greeting)

    def _greeting_request(self) -> Action:
        line = self.opening or f'Start the call now: greet the caller by saying exactly "{self.profile.greeting}"'
        request = self.say(line, purpose="greeting")
        self._greeting = _Line(line, "greeting", request_tag(request))
        return request

    def _verdict_awaited(self) -> bool:
        """A call we placed with asynchronous answering-machine detection whose verdict has not come yet (#16)."""
        twilio = self.record.twilio or {}
        return (
            self.record.outbound is not None
            and self.profile.outbound.voicemail is not None
            and twilio.get("answered_by") is None
            and not self._amd_acted
        )

    def _greet_after_wait(self, rel: float, why: str) -> list[Action]:
        """The greeting that waited for the verdict: said now, unless the model has already spoken (it answered
        the person's hello) or the call is ending."""
        self._greeting_waits = False
        if self.ending is not None or self.state != CallState.ATTACHED:
            return []
        if self._in_progress or self.audio_started:
            self.record.mark(rel, f"greeting: not said ({why}; the model has already answered)")
            return []
        self.record.mark(rel, f"greeting requested ({why})")
        return [self._greeting_request()]

    def _on_machine_detection(self, verdict: str, rel: float) -> list[Action]:
        """Twilio's answering-machine verdict on a call we placed (#16): what answered goes on the report; with
        the profile's ``outbound.voicemail``, a machine is hung up on or left a message after its beep. A greeting
        waiting for the verdict is said to a person (or an unknown), never to a machine or a fax."""
        if self.record.twilio is not None:
            self.record.twilio["answered_by"] = verdict
        self.record.mark(rel, f"twilio: answered by {verdict}")
        if self.state in (CallState.RECEIVED, CallState.ACCEPTING, CallState.ACCEPTED):
            self._amd_pending = verdict  # acted on once the sideband is attached
            return []
        acted = self._act_on_machine(verdict, rel)
        if not self._greeting_waits:
            return acted
        stop: list[Action] = [CancelTimer(voicemail.GREETING_WAIT_TIMER)]
        if verdict in ("human", "unknown"):
            return [*stop, *acted, *self._greet_after_wait(rel, f"answered by {verdict}")]
        self._greeting_waits = False
        return [*stop, *acted]

    def _act_on_machine(self, verdict: str, rel: float) -> list[Action]:
        policy = self.profile.outbound.voicemail
        if policy is None or self._amd_acted or verdict in ("human", "unknown"):
            return []
        if self.ending is not None or self.state != CallState.ATTACHED:
            self.record.mark(rel, f"voicemail: the call is already {self.ending.reason if self.ending else 'over'}")
            return []
        if policy.action == "hangup" or verdict == "fax":  # no message can be left on a fax
            self._amd_acted = True
            self.ending = _Ending(reason="voicemail")
            self._set_state(CallState.ENDING, rel)
            return [*self.watchdog.stop(), EndTwilioCall(), *self.hangup(rel, f"answered by {verdict}")]
        if not verdict.startswith("machine_end_"):
            self.record.mark(rel, "voicemail: waiting for the beep")
            return []
        self._amd_acted = True
        outbound = self.record.outbound or {}
        variables = outbound.get("variables")
        line = voicemail.instructions(
            self.profile_name, self.profile, variables=variables if isinstance(variables, dict) else None,
            caller=self.record.caller, dialed=self.record.dialed, now=self.record.received_at,
        )  # fmt: skip
        assert line is not None  # leave_message
        stop: list[Action] = []
        if self._in_progress:  # the model is answering the machine's greeting: the message replaces that
            stop.append(Send({"type": "response.cancel", "event_id": self.next_event_id("cancel")}))
        if self._playing is not None:
            stop.append(Send({"type": "output_audio_buffer.clear", "event_id": self.next_event_id("clear")}))
        self.record.mark(rel, "voicemail: the beep; leaving the message")
        return stop + self.begin_ending(
            "voicemail", rel, line, purpose=voicemail.PURPOSE, timeout_s=policy.max_message_s
        )

    def _session_guard(self, rel: float) -> StartTimer:
        """A timer that hangs up just before OpenAI's session limit, counted from the accept."""
        began = self.record.accepted_s if self.record.accepted_s is not None else rel
        left = self.session_limit_s - SESSION_LIMIT_MARGIN_S - (rel - began)
        return StartTimer(SESSION_LIMIT_TIMER, max(0.0, left))

    def _at_session_limit(self, rel: float) -> bool:
        began = self.record.accepted_s
        return began is not None and rel - began >= self.session_limit_s - SESSION_LIMIT_SLACK_S

    def _session_ended_by_openai(self, rel: float, why: str) -> list[Action]:
        """OpenAI's session limit ended the session: the call ends as ``session_limit``, whatever was going on."""
        self.record.mark(rel, why)
        if self.ending is None:
            self.ending = _Ending(reason="session_limit")
            self._set_state(CallState.ENDING, rel)
            return [*self.watchdog.stop(), *self.hangup(rel, "the session is over")]
        self.ending.reason = "session_limit"
        return self.hangup(rel, "the session is over")

    def _on_hangup_failed(self, gone: bool, detail: str, rel: float) -> list[Action]:
        """A hangup that failed is not a finished call: the call is ``hanging_up`` and the hangup is tried again
        with backoff, with no limit, until OpenAI confirms it or says the call is gone (404: that confirms it
        too). The call stays supervised meanwhile; ``HangingUp`` lets the store know, so that another replica
        (or a restart) finishes the hangup if this process goes away."""
        self.ending = self.ending or _Ending(reason="session_error")
        if gone:
            self.record.hangup_confirmed = True
            self.record.mark(rel, "hangup: call already gone")
            return self.finish(self.ending.reason, rel)
        self._hangup_failures += 1
        if self._hangup_failures == 1:
            self.record.errors.append(f"hangup failed: {detail}")
            self._set_state(CallState.HANGING_UP, rel)
        self.ending.hangup_sent = False
        delay = min(HANGUP_RETRY_MAX_S, 0.25 * 2 ** min(self._hangup_failures - 1, 16))
        self.record.mark(rel, f"hangup failed ({detail}): trying again in {delay:g}s")
        return [HangingUp(delay, self.record.hangup_attempts), StartTimer(HANGUP_RETRY_TIMER, delay)]

    def _on_shutdown(self, rel: float, immediate: bool = False) -> list[Action]:
        if self.state in (CallState.ENDING, CallState.HANGING_UP):
            self._end_requested = True
            if immediate and self.ending is not None:
                return self.hangup(rel, "draining: the wrap-up took too long")
        if self.state == CallState.ATTACHED and immediate:
            self.ending = _Ending(reason="shutdown")
            self._set_state(CallState.ENDING, rel)
            return [*self.watchdog.stop(), *self.hangup(rel, "draining: hanging up at once")]
        if self.state == CallState.ATTACHED:
            return self.begin_ending("shutdown", rel, SHUTDOWN_INSTRUCTIONS)
        if self.state == CallState.RECEIVED:
            return self.finish("shutdown", rel)
        if self.state in (CallState.ACCEPTING, CallState.ACCEPTED):
            # the accept may already have answered the call: finish it properly once attached
            self._drain_requested = True
            self.record.mark(rel, "drain requested")
        return []

    def _on_parked(self, rel: float) -> list[Action]:
        """Twilio holds the line now (#16): this OpenAI leg is over. Its end goes the way every end goes (the
        hangup, confirmed), with no goodbye: the other side is hold music, and the call goes on in a fresh leg."""
        if self.ending is not None or self.state != CallState.ATTACHED:
            return []
        if not self._sideband_open:  # Twilio's redirect already ended the leg
            self.record.mark(rel, "parked on Twilio: the OpenAI leg ended")
            return self.finish("parked", rel)
        self.record.mark(rel, "parked on Twilio: this OpenAI leg ends")
        self.ending = _Ending(reason="parked")
        self._set_state(CallState.ENDING, rel)
        return [*self.watchdog.stop(), *self.hangup(rel, "parked")]

    def _on_operator_hangup(self, immediate: bool, rel: float) -> list[Action]:
        self.record.mark(rel, "operator hangup" + (" (now)" if immediate else ""))
        if self.ending is not None:
            self._end_requested = True
            return self.hangup(rel, "operator") if immediate else []
        if self.state != CallState.ATTACHED:
            return []
        if immediate:
            self.ending = _Ending(reason="operator_hangup")
            self._set_state(CallState.ENDING, rel)
            return [*self.watchdog.stop(), *self.hangup(rel, "operator, immediately")]
        return self.begin_ending("operator_hangup", rel, GOODBYE_INSTRUCTIONS)

    def _on_sideband_closed(self, code: int | None, rel: float) -> list[Action]:
        """1000 is how the server ends a finished call; anything else may be a dropped socket."""
        self._sideband_open = False
        self.record.mark(rel, f"sideband closed (code {code})")
        if self.transfer.leaving:  # a REFER that worked can close the socket before its 200
            return [*self.transfer.on_call_left(self, rel), *self.finish("transferred", rel)]
        if self.hold.parking and self.ending is None:
            # Twilio's redirect ends the OpenAI leg, maybe before the Calls API's answer is back (#16): that answer
            # says whether the leg was parked (ParkOk) or the far side hung up (ParkFailed)
            self.record.mark(rel, "the leg closed while parking: waiting for Twilio's answer")
            return []
        ending = self.ending
        if ending is not None and (ending.hangup_sent or self.state == CallState.HANGING_UP):
            if self.record.hangup_confirmed:
                return self.finish(ending.reason, rel)
            if code == 1000 and self.state != CallState.HANGING_UP:
                self.record.hangup_confirmed = True  # OpenAI closed the session right after our hangup
                return self.finish(ending.reason, rel)
            # a hangup that failed before, or a socket that dropped: only OpenAI's answer to the hangup (2xx, or
            # 404: gone) says the call is over
            self.record.mark(rel, "sideband closed while the hangup is unconfirmed: waiting for OpenAI's answer")
            return []
        if self._at_session_limit(rel) and not (ending is not None and ending.hangup_sent):
            self.record.mark(rel, "the sideband closed at OpenAI's session limit")
            return self.finish("session_limit", rel)
        if code == 1000 or (ending is not None and ending.hangup_sent) or self.attached_at is None:
            return self.finish(ending.reason if ending else "caller_hangup", rel)
        if ending is not None:
            # we owed a hangup after the goodbye, and can no longer hear it end: hang up now
            return self.hangup(rel, "sideband lost while ending")
        if self._reconnects < MAX_RECONNECTS:
            self._reconnects += 1
            self.record.mark(rel, f"reconnecting the sideband (try {self._reconnects} of {MAX_RECONNECTS})")
            return [Reattach()]
        self.ending = _Ending(reason="session_error")
        self._set_state(CallState.ENDING, rel)
        self.record.errors.append(f"sideband dropped {self._reconnects + 1} times")
        return self.hangup(rel, "sideband keeps dropping: hanging up rather than leave the call unsupervised")

    def _on_timer(self, name: str, rel: float) -> list[Action]:
        if name == voicemail.GREETING_WAIT_TIMER:
            return self._greet_after_wait(rel, "no verdict yet") if self._greeting_waits else []
        if self._after_turn:
            self._after_turn = [w for w in self._after_turn if w.name != name]
        if name == GOODBYE_AGAIN_TIMER:
            end = self.ending
            if end is None or not end.awaiting_answer or end.hangup_sent:
                return []
            end.awaiting_answer = False
            self.record.mark(rel, "after the caller's turn: the goodbye again")
            return [self._request_goodbye(rel), *self._goodbye_clock()]
        if name == SESSION_LIMIT_TIMER and self.state in (CallState.ATTACHED, CallState.ENDING):
            self.record.mark(rel, f"OpenAI's session limit is {SESSION_LIMIT_MARGIN_S:g}s away: hanging up now")
            actions: list[Action] = []
            if self.ending is None:
                self.ending = _Ending(reason="max_duration")
                self._set_state(CallState.ENDING, rel)
                actions = self.watchdog.stop()
            return actions + self.hangup(rel, "the session limit is near")
        if name == SESSION_ACK_TIMER and self._pending_updates:
            what = self._pending_updates[0].what
            self.record.errors.append(
                f"session.update ({what}) not confirmed within {self.profile.session_ack_timeout_s}s"
            )
            return self.fail_session(rel, f"session.update for {what} never confirmed")
        if name == GOODBYE_TIMER and self.ending is not None:
            if self.ending.awaiting_answer:
                return []  # a goodbye fallback of the goodbye the caller talked over
            if self.ending.queued:
                return self.hangup(rel, f"audio ahead of the goodbye not ended after {GOODBYE_QUEUE_MAX_S:g}s")
            return self.hangup(rel, f"{self.ending.purpose} audio not finished after {self._goodbye_timeout_s()}s")
        if name == HANGUP_RETRY_TIMER and self.ending is not None:
            return self.hangup(rel, f"retry {self._hangup_failures}")
        if name == CLOSE_WAIT_TIMER and self.ending is not None:
            self.record.mark(rel, "sideband still open after hangup")
            return self.finish(self.ending.reason, rel)
        if name.startswith(FILLER_TIMER_PREFIX):
            call_id = name.removeprefix(FILLER_TIMER_PREFIX)
            if call_id in self._pending_tools and self.live:
                self.record.mark(rel, "tool is slow: filler line")
                return [self.say(FILLER_INSTRUCTIONS, purpose="filler")]
            return []
        return [
            *self.transfer.on_timer(self, name, rel),
            *self.watchdog.on_timer(self, name, rel),
            *self.hold.on_timer(self, name, rel),
            *self.keypad.on_timer(self, name, rel),
            *self.control.on_timer(self, name, rel),
        ]

    def _on_session_updated(self, rel: float) -> list[Action]:
        if not self._pending_updates:
            return []
        done = self._pending_updates.pop(0)
        self.record.mark(rel, f"session.updated: {done.what} in force")
        actions: list[Action] = [CancelTimer(SESSION_ACK_TIMER)]
        if self._pending_updates:
            actions.append(StartTimer(SESSION_ACK_TIMER, self.profile.session_ack_timeout_s))
        if self.ending is not None:
            return actions
        then = list(done.then)
        if then:
            self.record.mark(rel, f"after {done.what}: continuing")
        elif self._caller_spoke_while_held and not self._pending_updates:
            then.append(self.respond("held_turn"))  # answer the turn that was held
            self.record.mark(rel, "answering the caller's held turn")
        if not self._pending_updates:
            self._caller_spoke_while_held = False
        return actions + then

    # ---- sideband events ----------------------------------------------------------------------------

    def _on_event(self, event: ev.ServerEvent, rel: float) -> list[Action]:
        actions = self._on_event_core(event, rel)
        if self._after_turn and not self.finished and event.type in _TURN_EVENTS:
            actions.extend(self._turn_over(rel))
        if self.control.waiting and not self.finished and event.type in _IDLE_EVENTS:
            actions.extend(self.control.when_idle(self, rel))
        return actions

    def _on_event_core(self, event: ev.ServerEvent, rel: float) -> list[Action]:
        match event:
            case ev.InputTranscriptionCompleted(transcript=text, usage=usage):
                self._count_transcription(usage)
                if text.strip():
                    self.record.transcripts.append(TranscriptEntry("caller", text.strip(), round(rel, 3)))
                    return self.hold.on_caller_transcript(self, text.strip(), event.item_id, rel)
            case ev.OutputTranscriptDone(transcript=text, response_id=rid):
                if rid:
                    self.spoken.add(rid)
                if text.strip() and not self.hold.is_classifier_response(rid):
                    self.record.transcripts.append(TranscriptEntry("assistant", text.strip(), round(rel, 3)))
            case ev.ResponseEvent(type="response.created", response=resp):
                if resp.id:
                    self._in_progress[resp.id] = None
                    if len(self._in_progress) > 16:
                        del self._in_progress[next(iter(self._in_progress))]
                for waiter in self._after_turn:
                    waiter.answered = True
                end = self.ending
                if end is not None and end.response_id is None and answers(resp, end.tag):
                    end.response_id = resp.id  # the goodbye: matched on its tag, never on order
                self.transfer.on_response_created(resp)
                self.watchdog.on_response_created(resp)
                self.hold.on_response_created(resp)
            case ev.ResponseEvent(type="response.done", response=resp):
                return self._on_response_done(resp, rel)
            case ev.OutputAudioBuffer(type="output_audio_buffer.started", response_id=rid):
                if rid:
                    self.audio_started.add(rid)
                self._playing = rid
                end = self.ending
                if end is not None and end.response_id is not None and rid == end.response_id:
                    end.queued = False
                    return [StartTimer(GOODBYE_TIMER, self._goodbye_timeout_s())]  # the goodbye is playing
                return self.watchdog.on_assistant_audio(self, started=True)
            case ev.OutputAudioBuffer(type=kind, response_id=rid):
                if rid:
                    self.audio_stopped.add(rid)
                if rid is None or rid == self._playing:
                    self._playing = None
                end = self.ending
                cleared = kind.endswith("cleared")
                if end is not None and end.response_id is not None and rid == end.response_id:
                    if cleared:
                        return self._goodbye_interrupted(rel)
                    return self.hangup(rel, "goodbye heard in full")
                if end is not None and end.queued and self._playing is None and not end.hangup_sent:
                    end.queued = False  # the audio ahead of the goodbye is over: the goodbye can start now
                    self.record.mark(rel, "audio ahead of the goodbye ended")
                    return [StartTimer(GOODBYE_TIMER, self._goodbye_timeout_s())]
                return [
                    *self.transfer.on_audio_done(self, rid, rel, cleared=cleared),
                    *self.watchdog.on_assistant_audio(self, started=False),
                    *(self.watchdog.on_audio_cleared(self, rid, rel) if cleared else []),
                ]
            case ev.ErrorEvent(error=err):
                return self._on_error(err, rel)
            case ev.SessionEvent(type="session.updated"):
                return self._on_session_updated(rel)
            case ev.SpeechEdge(type=kind):
                self._caller_speaking = kind.endswith("speech_started")
                if self._caller_speaking:
                    for waiter in self._after_turn:
                        waiter.answered = False  # an answer they talk over is not the answer
                if (
                    kind.endswith("speech_stopped") and self._pending_updates and not self.hold.active
                    and not self.control.muted
                ):
                    self._caller_spoke_while_held = True
                return self.watchdog.on_caller_speech(self, started=kind.endswith("speech_started"))
            case ev.DtmfReceived(event=digit):
                return self.keypad.on_digit(self, digit, rel)
            case ev.InputAudioTimeout():
                return self.watchdog.on_idle_timeout(self, rel)
            case ev.RateLimitsUpdated(rate_limits=limits):
                self._note_rate_limits(limits, rel)
            case ev.InputTranscriptionFailed():
                self.record.mark(rel, "caller transcription failed")
            case ev.UnknownEvent() | ev.MalformedEvent():
                self.record.ignored_events += 1
            case ev.FunctionCallArgumentsDone() | ev.SessionEvent():
                pass  # tool calls run from response.done, once its status says the response completed
        return []

    def _count_transcription(self, usage: ev.TranscriptionUsage | None) -> None:
        if usage is None:
            return
        totals = [self.record.transcription]
        if self.hold.active:  # hold music and announcements transcribed: part of what the hold cost
            totals.append(self.record.hold_transcription)
        for t in totals:
            t.audio_tokens += usage.input_token_details.audio_tokens
            t.text_tokens += usage.input_token_details.text_tokens
            t.output_tokens += usage.output_tokens
            t.seconds += usage.seconds
        self._update_cost()

    def _update_cost(self) -> None:
        record = self.record
        cost = response_cost(record.usage, self.prices) if self.prices else 0.0
        hold_cost = response_cost(record.hold_usage, self.prices) if self.prices else 0.0
        transcription = 0.0
        if self.transcription_prices is not None:
            transcription = self._transcription_cost(record.transcription, self.transcription_prices)
            cost += transcription
            hold_cost += self._transcription_cost(record.hold_transcription, self.transcription_prices)
        record.cost_usd = cost
        record.hold_cost_usd = hold_cost
        record.transcription_cost_usd = transcription

    @staticmethod
    def _transcription_cost(t: TranscriptionUsage, prices: TranscriptionPrices) -> float:
        return transcription_cost(t.audio_tokens, t.text_tokens, t.output_tokens, t.seconds, prices)

    def _on_error(self, err: ev.ErrorDetail, rel: float) -> list[Action]:
        """An error about one of our session updates, or an early one about the session, means the caller
        would be left in static or silence: hang up at once and keep OpenAI's message in the report."""
        where = f" (param {err.param})" if err.param else ""
        self.record.errors.append(f"sideband error {err.code or err.type}: {err.message}{where}")
        end = self.ending
        if end is not None and end.request_event_id is not None and err.event_id == end.request_event_id:
            if err.code == "conversation_already_has_active_response":
                end.retry_when_idle = True  # ask again when the answer being made is done
                return []
            return self.hangup(rel, "the goodbye could not be created")
        if self.control.on_error(self, err, rel):
            return []  # a say line refused while a response is made waits for that response to be over
        ours = err.event_id is not None and err.event_id in self._our_update_ids
        since_attach = rel - (self.attached_at if self.attached_at is not None else rel)
        early = (
            since_attach <= self.profile.early_error_window_s
            and err.type in (None, "invalid_request_error", "server_error")
            and (err.code or "") not in BENIGN_ERROR_CODES
        )
        if err.code == "session_expired":
            return self._session_ended_by_openai(rel, "OpenAI's session limit: the session expired")
        if not (ours or early):
            return []
        return self.fail_session(rel, "session error: the call cannot continue")

    def _on_response_done(self, resp: ev.Response, rel: float) -> list[Action]:
        self._in_progress.pop(resp.id, None)
        if resp.id:
            if resp.id in self._responses_done:
                self.record.ignored_events += 1  # a duplicated delivery: count usage and tools once
                return []
            self._responses_done.add(resp.id)
        self.control.on_response_done(self, resp, rel)
        if resp.usage is not None:
            self.record.usage.add(resp.usage)
            if self.hold.active:
                self.record.hold_usage.add(resp.usage)
            self._update_cost()
        self._note_status(resp, rel)
        completed = resp.status == "completed"
        actions: list[Action] = []
        classified = self.hold.on_response_done(self, resp, rel)
        if classified is not None:
            return [*classified, *self.watchdog.on_cost(self, rel), *self._keeps_failing(rel)]
        end = self.ending
        if end is not None and end.retry_when_idle and resp.id != end.response_id:
            end.retry_when_idle = False
            return [self._request_goodbye(rel), *self._goodbye_clock()]
        if end is not None and end.response_id is None and resp.id and answers(resp, end.tag):
            end.response_id = resp.id  # its response.created was missed
        if end is not None and resp.id and resp.id == end.response_id:
            return self._goodbye_done(resp, rel)
        greeting = self._greeting
        if greeting is not None and answers(resp, greeting.tag):
            actions.extend(self._greeting_done(greeting, resp, rel))
        actions.extend(self.transfer.on_response_done(self, resp, rel))
        actions.extend(self.watchdog.on_response_done(self, resp, rel))
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
        actions.extend(self.watchdog.on_cost(self, rel))
        actions.extend(self._keeps_failing(rel))
        return actions

    def _heard(self, resp: ev.Response) -> bool:
        """The caller heard (some of) the response: its audio started, it has a transcript, or audio output."""
        return resp.id in self.audio_started or resp.id in self.spoken or resp.has_audio()

    def _note_status(self, resp: ev.Response, rel: float) -> None:
        """A failed or incomplete response goes on the report with OpenAI's status_details; failures in a row
        are counted (a completed response resets the count)."""
        status = resp.status
        if status == "completed":
            self._failed_in_a_row = 0
            return
        if status not in ("failed", "incomplete"):
            return
        if status == "failed":
            self._failed_in_a_row += 1
        details = resp.status_details
        err = details.error if details is not None else None
        reason = lines.reason(resp)
        metadata = resp.metadata if isinstance(resp.metadata, dict) else {}
        purpose = metadata.get(PURPOSE_KEY)
        self.record.add_failed_response(
            FailedResponse(
                response_id=resp.id,
                status=status,
                reason=reason,
                error_type=err.type if err else None,
                error_code=err.code if err else None,
                error_message=err.message if err else None,
                purpose=purpose[:64] if isinstance(purpose, str) else None,
                at_s=round(rel, 3),
            )
        )
        why = (err.code or err.type if err else None) or reason
        self.record.mark(rel, f"response {status}" + (f": {why}" if why else ""))
        if status == "failed":
            message = f": {err.message}" if err is not None and err.message else ""
            self.record.errors.append(f"response failed ({why or 'no reason given'}){message}")

    def _note_rate_limits(self, limits: list[ev.RateLimit], rel: float) -> None:
        """Keep the latest value of each rate limit (a few names at most: OpenAI sends requests and tokens)."""
        kept = self.record.rate_limits
        for limit in limits:
            name = limit.name
            if not name or not _RATE_LIMIT_NAME.fullmatch(name) or (name not in kept and len(kept) >= 8):
                continue
            kept[name] = RateLimitState(limit.limit, limit.remaining, limit.reset_seconds, round(rel, 3))

    def _keeps_failing(self, rel: float) -> list[Action]:
        if self._failed_in_a_row < lines.MAX_FAILED_IN_A_ROW or not self.live:
            return []
        return self.model_failed(rel, f"{self._failed_in_a_row} responses in a row failed")

    def _greeting_done(self, greeting: _Line, resp: ev.Response, rel: float) -> list[Action]:
        """The greeting's response is over: asked for once more if it failed, a second failure is a model
        error; heard, talked over or silent, it is done with."""
        if lines.outcome(resp, heard=self._heard(resp)) != "failed":
            self._greeting = None
            return []
        if greeting.failures >= lines.LINE_RETRIES or not self.live:
            self._greeting = None
            return self.model_failed(rel, f"the greeting failed {greeting.failures + 1} times")
        greeting.failures += 1
        self.record.mark(rel, "greeting failed: asking for it once more")
        request = self.say(greeting.instructions, purpose=greeting.purpose)
        greeting.tag = request_tag(request)
        return [request]

    def _goodbye_interrupted(self, rel: float) -> list[Action]:
        """The caller talked over the goodbye (its audio cleared, or its response cancelled by their turn)."""
        end = self.ending
        assert end is not None
        if end.hangup_sent:
            return []
        self._goodbye_barge_ins += 1
        end.response_id, end.tag, end.queued, end.retry_when_idle = None, None, False, False

        def barge_in(then: BargeInThen) -> None:
            self.record.add_barge_in(BargeIn("goodbye", round(rel, 3), then))

        # a shutdown or an operator's hangup that came during this goodbye must still end the call
        resumable = end.reason in RESUMABLE_REASONS and not self._end_requested
        # a voicemail message talked over (noise on the recorder's line) is not said twice: the call ends
        nothing_to_ask = (end.instructions is None and not resumable) or end.purpose == voicemail.PURPOSE
        if self.hold.active or self._goodbye_barge_ins > lines.MAX_BARGE_INS or nothing_to_ask:
            barge_in("hung_up")
            why = "on hold" if self.hold.active else f"{self._goodbye_barge_ins} times"
            return self.hangup(rel, f"the caller talked over the goodbye ({why}): hanging up")
        if resumable:
            barge_in("resumed")
            self.ending = None
            self._set_state(CallState.ATTACHED, rel)
            self.record.mark(rel, f"the caller talked over the goodbye ({end.reason}): the call goes on")
            return [CancelTimer(GOODBYE_TIMER), self.note(RESUME_NOTE), *self.watchdog.resume(self, rel)]
        barge_in("answered")
        end.awaiting_answer = True
        self.record.mark(rel, "the caller talked over the goodbye: answering them, then the goodbye again")
        again = self.after_caller_turn(GOODBYE_AGAIN_TIMER, rel)
        return [CancelTimer(GOODBYE_TIMER), self.note(GOODBYE_BARGE_IN_NOTE), *again]

    def _goodbye_done(self, resp: ev.Response, rel: float) -> list[Action]:
        """The goodbye's response is over: wait for its audio to stop, or ask again if it failed (once), or hang
        up."""
        end = self.ending
        assert end is not None
        result = lines.outcome(resp, heard=self._heard(resp))
        if result == "interrupted":
            return self._goodbye_interrupted(rel)
        if result == "failed":
            if end.instructions is not None and end.failures < lines.LINE_RETRIES and not end.hangup_sent:
                end.failures += 1
                self.record.mark(rel, "goodbye failed: asking for it once more")
                return [self._request_goodbye(rel), *self._goodbye_clock()]
            self.record.mark(rel, f"goodbye failed (the call was ending for {end.reason})")
            return self.model_failed(rel, f"the goodbye failed {end.failures + 1} times")
        if result != "heard":
            return self.hangup(rel, f"goodbye response {resp.status or 'ended'} without audio")
        if resp.id in self.audio_stopped:
            return self.hangup(rel, "goodbye heard in full")
        return []

    # ---- tools ---------------------------------------------------------------------------------------

    def _run_tool(self, item: ev.OutputItem, response_id: str, rel: float) -> list[Action]:
        assert item.call_id is not None
        name = item.name or ""
        raw = item.arguments or ""
        record = ToolCallRecord(item.call_id, name, raw, round(rel, 3), "ok")
        self.record.tool_calls.append(record)
        if not self.live:
            record.outcome, record.detail = "ignored", "the call is ending"
            return [self.tool_output(item.call_id, {"error": "the call is ending"})]
        handler_tool = self.profile.handler_tools().get(name)
        if handler_tool is not None:
            return self._run_handler_tool(handler_tool, item.call_id, raw, record)
        spec = tools.BUILTIN_TOOLS.get(name) if name in self.profile.tools else None
        if spec is None:
            record.outcome = "unknown_tool"
            available = ", ".join(self.profile.tool_names()) or "none"
            error = {"error": f"tool {name!r} cannot be run here; available: {available}"}
            return [self.tool_output(item.call_id, error), self.respond(TOOL_RESULT)]
        try:
            args = tools.parse_arguments(spec, raw)
        except tools.ToolArgumentsError as exc:
            record.outcome, record.detail = "invalid_arguments", str(exc)
            if name != "end_call":
                return [self.tool_output(item.call_id, {"error": str(exc)}), self.respond(TOOL_RESULT)]
            # end_call still ends the call (its intent is unambiguous): recorded as invalid_arguments, and its
            # result says the call was ended anyway
            args = tools.EndCallArgs()
        self.record.mark(rel, f"tool {name}")
        if name == "transfer_call":
            assert isinstance(args, tools.TransferArgs)
            return self.transfer.on_tool(self, record, args, rel)
        if name == "wait_on_hold":
            assert isinstance(args, tools.WaitOnHoldArgs)
            return self.hold.on_tool(self, record, rel, args)
        return self._end_call(item.call_id, response_id, record, rel)

    def _end_call(self, call_id: str, response_id: str, record: ToolCallRecord, rel: float) -> list[Action]:
        record.result = "ending the call"
        actions: list[Action] = [self.tool_output(call_id, {"status": "ending the call"})]
        # If the model already spoke in the same response, that was its goodbye: wait for it, don't ask again.
        if response_id in self.spoken or response_id in self.audio_started:
            actions.extend(self.begin_ending("agent_end_call", rel, None))
            assert self.ending is not None
            self.ending.response_id = response_id
            if response_id in self.audio_stopped:
                actions.extend(self.hangup(rel, "goodbye heard in full"))
            return actions
        actions.extend(self.begin_ending("agent_end_call", rel, GOODBYE_INSTRUCTIONS))
        return actions

    def _run_handler_tool(
        self, tool: HttpTool | PythonTool, call_id: str, raw: str, record: ToolCallRecord
    ) -> list[Action]:
        problem: str | None
        try:
            args = tools.decode_arguments(raw)
        except tools.ToolArgumentsError as exc:
            args, problem = None, str(exc)
        else:
            problem = _schema_problem(tool.parameters, args)
        if problem is not None or not isinstance(args, dict):
            record.outcome, record.detail = "invalid_arguments", problem or "arguments must be a JSON object"
            return [self.tool_output(call_id, {"error": record.detail}), self.respond(TOOL_RESULT)]
        record.outcome = "pending"
        self._pending_tools[call_id] = record.at_s
        actions: list[Action] = [RunTool(call_id, tool.name, args)]
        if tool.filler_after_s is not None:
            actions.append(StartTimer(FILLER_TIMER_PREFIX + call_id, tool.filler_after_s))
        return actions

    def _on_tool_done(self, done: ToolDone, rel: float) -> list[Action]:
        if done.call_id not in self._pending_tools:
            return []
        self._pending_tools.pop(done.call_id)
        for record in self.record.tool_calls:
            if record.call_id == done.call_id:
                record.outcome = done.outcome if not done.ok else "ok"
                record.result = done.output[:2000]
                record.duration_s = round(done.duration_s, 3)
        actions: list[Action] = [CancelTimer(FILLER_TIMER_PREFIX + done.call_id)]
        if self.ending is not None or self.state != CallState.ATTACHED:
            return actions
        output = done.output if done.ok else json.dumps({"error": done.output})
        actions.append(self.tool_output(done.call_id, output))
        if done.actions or done.actions_problem:  # live control from the operator's tool (#17)
            return actions + self.control.on_tool_answer(self, done.actions, done.actions_problem, rel)
        return [*actions, self.respond(TOOL_RESULT)]


def _schema_problem(schema: dict[str, Any], args: Any) -> str | None:
    error = next(iter(Draft202012Validator(schema).iter_errors(args)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "arguments"
    return f"invalid arguments at {where}: {error.message}"
