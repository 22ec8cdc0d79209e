"""Live call control (#17): an operator (the admin API, the live console, from any replica) or an operator's own
HTTP tool steers a call while it happens.

- **say**: the model says exactly one line. ``now``: what it is saying is cut off (``response.cancel`` while a
  response is being made, ``output_audio_buffer.clear`` while audio plays) and the line is asked for at once;
  ``next``: the line waits until the answer in progress is over (no response being made, no audio playing, the
  caller not speaking), at most ``SAY_NEXT_MAX_S``, and is then said as if ``now``. Each line is a
  ``response.create`` tagged ``{"sipctl": "say", "n": …}`` (``calls/tags.py``) without tools; one is asked for at
  a time, the rest wait in order (at most ``MAX_WAITING_LINES``).
- **context**: a system message (``conversation.item.create``, role ``system``) the model sees from now on.
- **mute** / **unmute**: the agent stops answering on its own: the turn detection's ``create_response`` and
  ``interrupt_response`` (and OpenAI's idle-timeout re-prompt) are turned off through a ``session.update`` (which,
  like every update, states ``type: realtime`` and restates the codec: ``session.session_patch``); the caller is
  still heard and transcribed, and their silence is not counted (no nudge, no silence goodbye: the operator has
  the call). Unmute restores the profile's values. Both take effect when OpenAI confirms (``session.updated``).
  Hold mode turns answers off too: on hold, a mute is taken and outlives the hold (the agent stays muted when a
  person is back), and an unmute leaves the answers off until the hold ends (``features/turns.py``).

Every action goes through the call machine as an input, one at a time with everything else, and is marked on the
report's timeline (never with its text: that is what the transcript is for). It is refused while the call is
not live (not answered yet, or ending: nothing may race a goodbye); say, mute and unmute while a transfer is
under way (its handoff line must not be cut off); mute and unmute without turn detection. ``refusal`` says why,
so that the admin API can answer 409 before queueing anything.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sip_controller.agent.profile import TurnDetection
from sip_controller.calls.actions import Action, CancelTimer, Send, StartTimer
from sip_controller.calls.features import turns
from sip_controller.calls.features.port import CallPort
from sip_controller.calls.inputs import OperatorContext, OperatorMute, OperatorSay
from sip_controller.calls.tags import Tag, answers, request_tag
from sip_controller.realtime import events as ev

#: the tag purpose of a line asked for by say
PURPOSE = "say"
#: a ``next`` line waits this long at most for the answer in progress to be over
SAY_NEXT_TIMER = "control_say_next"
SAY_NEXT_MAX_S = 30.0
#: lines waiting to be said (``next``, or asked for while another is being said); more are refused
MAX_WAITING_LINES = 5
#: bounds of the texts (characters, after stripping)
MAX_SAY_CHARS = 1000
MAX_CONTEXT_CHARS = 4000
#: actions one tool answer may carry
MAX_TOOL_ACTIONS = 5

Kind = Literal["say", "context", "mute", "unmute"]
KINDS: tuple[Kind, ...] = ("say", "context", "mute", "unmute")
When = Literal["now", "next"]
WHENS: tuple[When, ...] = ("now", "next")
Control = OperatorSay | OperatorContext | OperatorMute


def say_instructions(text: str) -> str:
    """The instructions of a say line: the line itself, word for word, and nothing else."""
    return f'Say exactly this line to the caller, word for word, and nothing else; do not call any tool: "{text}"'


def check_text(value: object, *, limit: int) -> str:
    """The text of a say or context, stripped; ValueError saying what is wrong with it."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters")
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
        raise ValueError("must not hold control characters")
    return text


def kind_of(inp: Control) -> Kind:
    if isinstance(inp, OperatorSay):
        return "say"
    if isinstance(inp, OperatorContext):
        return "context"
    return "mute" if inp.muted else "unmute"


class ControlPort(CallPort, Protocol):
    """What control needs of its call beyond a feature's port: what the model and the caller are doing."""

    @property
    def ending_or_over(self) -> bool:
        """The call is ending (a goodbye, a hangup) or over."""
        ...

    @property
    def responding(self) -> bool:
        """A response is being made."""
        ...

    @property
    def now_playing(self) -> str | None:
        """The response whose audio the caller hears now."""
        ...

    @property
    def caller_is_speaking(self) -> bool: ...

    @property
    def transferring(self) -> bool: ...

    @property
    def on_hold(self) -> bool: ...


@dataclass(slots=True)
class _Waiting:
    text: str
    source: str


@dataclass(slots=True)
class LiveControl:
    """A call's live control: the lines waiting to be said, the one being said, and whether it is muted."""

    #: the profile's turn detection (None: the session answers only when asked; nothing to mute)
    turn_detection: TurnDetection | None
    muted: bool = False
    waiting: deque[_Waiting] = field(default_factory=deque)
    #: the say line asked for and not over yet: its tag, its request's event id, and the line
    asked_tag: Tag | None = None
    asked_event_id: str | None = None
    asked: _Waiting | None = None

    # ---- refusals -----------------------------------------------------------------------------------

    def refusal(self, port: ControlPort, kind: Kind) -> str | None:
        """Why ``kind`` cannot be done on this call now (None: it can)."""
        if port.ending_or_over:
            return "the call is ending"
        if not port.live:
            return "the call is not answered yet"
        if kind == "context":
            return None
        if port.transferring:
            return "a transfer is under way"
        if kind == "say":
            if len(self.waiting) >= MAX_WAITING_LINES:
                return f"{MAX_WAITING_LINES} lines are already waiting to be said"
            return None
        if self.turn_detection is None:
            return "the profile has no turn detection: the agent answers only when asked"
        return None

    # ---- inputs -------------------------------------------------------------------------------------

    def on_input(self, port: ControlPort, inp: Control, rel: float) -> list[Action]:
        kind = kind_of(inp)
        why = self.refusal(port, kind)
        if why is not None:
            port.record.mark(rel, f"control: {kind} from {inp.source} refused ({why})")
            return []
        match inp:
            case OperatorSay(text=text, when=when, source=source):
                return self._on_say(port, _Waiting(text, source), when, rel)
            case OperatorContext(text=text, source=source):
                port.record.mark(rel, f"control: context from {source} added ({len(text)} chars)")
                return [port.note(text)]
            case OperatorMute(muted=muted, source=source):
                return self._set_muted(port, muted, source, rel)
        return []  # pragma: no cover - exhaustive match

    def on_tool_answer(self, port: ControlPort, actions: tuple[Control, ...], problem: str, rel: float) -> list[Action]:
        """The actions an operator's tool answer carried, after its output went to the model: contexts and
        mutes as they come; a say line is the answer to the tool (asked for in place of the model's own
        answer). Refused or malformed ones are marked and the model answers on its own."""
        if problem:
            port.record.errors.append(f"tool answer actions refused: {problem}")
            port.record.mark(rel, "control: a tool answer's actions were refused (malformed)")
        out: list[Action] = []
        answer: list[Action] = []
        for inp in actions:
            if isinstance(inp, OperatorSay):
                why = self.refusal(port, "say")
                if why is not None:
                    port.record.mark(rel, f"control: say from tool refused ({why})")
                    continue
                port.record.mark(rel, f"control: say from tool, as its answer ({len(inp.text)} chars)")
                answer = [self._ask(port, _Waiting(inp.text, inp.source))]
            else:
                out.extend(self.on_input(port, inp, rel))
        return out + (answer or [port.respond()])

    def _on_say(self, port: ControlPort, line: _Waiting, when: str, rel: float) -> list[Action]:
        if when == "next":
            self.waiting.append(line)
            port.record.mark(rel, f"control: say next from {line.source} ({len(line.text)} chars): waiting")
            return [StartTimer(SAY_NEXT_TIMER, SAY_NEXT_MAX_S), *self.when_idle(port, rel)]
        port.record.mark(rel, f"control: say now from {line.source} ({len(line.text)} chars)")
        stop: list[Action] = []
        if port.responding:
            stop.append(Send({"type": "response.cancel", "event_id": port.next_event_id("cancel")}))
        if port.now_playing is not None:
            stop.append(Send({"type": "output_audio_buffer.clear", "event_id": port.next_event_id("clear")}))
        if self.asked is not None and not stop:
            # the previous line is asked for but its response not yet made: this one follows it
            self.waiting.appendleft(line)
            return [StartTimer(SAY_NEXT_TIMER, SAY_NEXT_MAX_S)]
        return [*stop, self._ask(port, line)]

    def _ask(self, port: ControlPort, line: _Waiting) -> Send:
        request = port.say(say_instructions(line.text), purpose=PURPOSE)
        self.asked, self.asked_tag = line, request_tag(request)
        self.asked_event_id = request.event.get("event_id")
        return request

    def _set_muted(self, port: ControlPort, muted: bool, source: str, rel: float) -> list[Action]:
        word = "mute" if muted else "unmute"
        if muted == self.muted:
            port.record.mark(rel, f"control: {word} from {source}: already {'muted' if muted else 'answering'}")
            return []
        self.muted = muted
        port.record.muted = muted  # kept in the store: a takeover restores it (``restore``)
        on_hold = ""
        if port.on_hold:
            on_hold = " (on hold: kept when the hold ends)" if muted else " (on hold: no answers until it ends)"
        port.record.mark(rel, f"control: {word} from {source}{on_hold}")
        td = turns.turn_detection(self.turn_detection, on_hold=port.on_hold, muted=muted)
        assert td is not None  # refused without turn detection
        update = port.update_session(turns.session_patch(td), rel, what=word, then=[])
        return [*port.pause_silence(muted), *update]

    def restore(self, muted: bool) -> None:
        """A call taken over from a lost owner (#13) whose agent was muted: it stays muted (without turn detection
        there is nothing to mute, and a stored mute is ignored). The waiting lines are not kept: lost with it."""
        self.muted = muted and self.turn_detection is not None

    # ---- what the call reports ----------------------------------------------------------------------

    def when_idle(self, port: ControlPort, rel: float) -> list[Action]:
        """Something ended (a response, its audio, the caller's turn): the next waiting line, if the call is
        idle now."""
        if not self.waiting:
            return []
        if not port.live:
            self._drop(port, rel)
            return [CancelTimer(SAY_NEXT_TIMER)]
        if self.asked is not None or port.responding or port.now_playing is not None or port.caller_is_speaking:
            return []
        line = self.waiting.popleft()
        port.record.mark(rel, f"control: a waiting line from {line.source} is said ({len(line.text)} chars)")
        actions: list[Action] = [self._ask(port, line)]
        actions.append(StartTimer(SAY_NEXT_TIMER, SAY_NEXT_MAX_S) if self.waiting else CancelTimer(SAY_NEXT_TIMER))
        return actions

    def on_timer(self, port: ControlPort, name: str, rel: float) -> list[Action]:
        if name != SAY_NEXT_TIMER or not self.waiting:
            return []
        if not port.live:
            self._drop(port, rel)
            return []
        line = self.waiting.popleft()
        port.record.mark(rel, f"control: a line waited {SAY_NEXT_MAX_S:g}s: said now")
        more = [StartTimer(SAY_NEXT_TIMER, SAY_NEXT_MAX_S)] if self.waiting else []
        self.asked = None  # whatever was asked before is cut off with the rest
        return [*self._on_say(port, line, "now", rel), *more]

    def on_response_done(self, port: ControlPort, resp: ev.Response, rel: float) -> None:
        if self.asked is None or not answers(resp, self.asked_tag):
            return
        port.record.mark(rel, f"control: say line {resp.status or 'done'}")
        self.asked = self.asked_tag = self.asked_event_id = None

    def on_error(self, port: ControlPort, err: ev.ErrorDetail, rel: float) -> bool:
        """An error about the say line's request (True: it was that, and is dealt with): refused because a
        response is being made, it waits for that to be over; otherwise it is given up."""
        if self.asked is None or err.event_id is None or err.event_id != self.asked_event_id:
            return False
        line = self.asked
        self.asked = self.asked_tag = self.asked_event_id = None
        if err.code == "conversation_already_has_active_response" and port.live:
            self.waiting.appendleft(line)
            port.record.mark(rel, "control: say line refused while a response is made: waiting")
        else:
            port.record.mark(rel, f"control: say line refused by OpenAI ({err.code or err.type})")
        return True

    def _drop(self, port: ControlPort, rel: float) -> None:
        port.record.mark(rel, f"control: {len(self.waiting)} waiting line(s) dropped: the call is ending")
        self.waiting.clear()


# ---- an operator tool's answer ---------------------------------------------------------------------------


def split_tool_answer(value: Any) -> tuple[Any, tuple[Control, ...], str]:
    """An operator tool's answer (``{"result": …, "actions": [{"say": "…"}, {"context": "…"}]}``): the answer for
    the model (the object without ``actions``), the actions, and what is wrong with them ('' if nothing; then
    none is taken). Each action is one of ``{"say": text}``, ``{"context": text}``, ``{"mute": true}``,
    ``{"unmute": true}``; at most ``MAX_TOOL_ACTIONS``, one say."""
    if not isinstance(value, dict) or "actions" not in value:
        return value, (), ""
    rest = {key: item for key, item in value.items() if key != "actions"}
    raw = value["actions"]
    if not isinstance(raw, list):
        return rest, (), "actions must be a list"
    if len(raw) > MAX_TOOL_ACTIONS:
        return rest, (), f"at most {MAX_TOOL_ACTIONS} actions"
    parsed: list[Control] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or len(item) != 1:
            return rest, (), f"actions[{i}] must be an object with one key: say, context, mute or unmute"
        ((key, arg),) = item.items()
        try:
            if key == "say":
                parsed.append(OperatorSay(check_text(arg, limit=MAX_SAY_CHARS), "now", source="tool"))
            elif key == "context":
                parsed.append(OperatorContext(check_text(arg, limit=MAX_CONTEXT_CHARS), source="tool"))
            elif key in ("mute", "unmute"):
                if arg is not True:
                    raise ValueError("must be true")
                parsed.append(OperatorMute(key == "mute", source="tool"))
            else:
                return rest, (), f"actions[{i}]: unknown action {str(key)[:40]!r}"
        except ValueError as exc:
            return rest, (), f"actions[{i}].{key} {exc}"
    if sum(isinstance(p, OperatorSay) for p in parsed) > 1:
        return rest, (), "at most one say per tool answer"
    return rest, tuple(parsed), ""
