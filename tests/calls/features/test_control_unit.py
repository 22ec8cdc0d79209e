"""Live control on its own: a ``LiveControl`` driven through a fake ``ControlPort``, without the call machine.

``test_control.py`` drives the same feature through the machine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sip_controller.agent.profile import TurnDetection
from sip_controller.calls.actions import CancelTimer, StartTimer
from sip_controller.calls.features.control import (
    MAX_SAY_CHARS,
    MAX_WAITING_LINES,
    PURPOSE,
    SAY_NEXT_MAX_S,
    SAY_NEXT_TIMER,
    ControlPort,
    Kind,
    LiveControl,
    check_text,
    kind_of,
    say_instructions,
)
from sip_controller.calls.inputs import OperatorContext, OperatorMute, OperatorSay
from sip_controller.realtime import events as ev
from tests.calls.features.fake_port import FakePort, instructions, marks, response, sent, system_notes

VAD = TurnDetection(type="server_vad", idle_timeout_ms=6000, eagerness="high", silence_duration_ms=400)


@dataclass
class FakeControlPort(FakePort):
    """A ``FakePort`` that also says what the model and the caller are doing (``ControlPort``)."""

    ending_or_over: bool = False
    responding: bool = False
    now_playing: str | None = None
    caller_is_speaking: bool = False
    transferring: bool = False
    on_hold: bool = False


def make(turn_detection: TurnDetection | None = VAD) -> LiveControl:
    return LiveControl(turn_detection)


def test_the_fake_is_a_control_port() -> None:
    port: ControlPort = FakeControlPort()
    assert port.live


# ---- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "kind", "why"),
    [
        (FakeControlPort(ending_or_over=True), "context", "the call is ending"),
        (FakeControlPort(ending_or_over=True, live=False), "say", "the call is ending"),
        (FakeControlPort(live=False), "say", "the call is not answered yet"),
        (FakeControlPort(transferring=True), "say", "a transfer is under way"),
        (FakeControlPort(transferring=True), "mute", "a transfer is under way"),
    ],
)
def test_refusal_says_why(port: FakeControlPort, kind: Kind, why: str) -> None:
    assert make().refusal(port, kind) == why


@pytest.mark.parametrize(
    ("port", "kind"),
    [
        (FakeControlPort(), "say"),
        (FakeControlPort(), "mute"),
        (FakeControlPort(transferring=True), "context"),
        (FakeControlPort(on_hold=True), "say"),
        (FakeControlPort(on_hold=True), "context"),
        (FakeControlPort(on_hold=True), "mute"),  # hold and mute compose (features/turns.py)
        (FakeControlPort(on_hold=True), "unmute"),
    ],
)
def test_what_is_allowed(port: FakeControlPort, kind: Kind) -> None:
    assert make().refusal(port, kind) is None


def test_mute_without_turn_detection_is_refused() -> None:
    assert make(None).refusal(FakeControlPort(), "mute") == (
        "the profile has no turn detection: the agent answers only when asked"
    )


def test_a_refused_input_does_nothing_and_is_marked_without_its_text() -> None:
    port = FakeControlPort(ending_or_over=True)
    c = make()
    assert c.on_input(port, OperatorSay("secret words", "now"), 1.0) == []
    assert c.on_input(port, OperatorMute(True, source="tool"), 1.0) == []
    assert marks(port) == [
        "control: say from operator refused (the call is ending)",
        "control: mute from tool refused (the call is ending)",
    ]
    assert not c.muted
    assert not c.waiting


def test_too_many_waiting_lines_are_refused() -> None:
    port = FakeControlPort(responding=True)
    c = make()
    for n in range(MAX_WAITING_LINES):
        c.on_input(port, OperatorSay(f"line {n}", "next"), 1.0)
    assert len(c.waiting) == MAX_WAITING_LINES
    assert c.on_input(port, OperatorSay("one more", "next"), 1.0) == []
    full = f"{MAX_WAITING_LINES} lines are already waiting to be said"
    assert marks(port)[-1] == f"control: say from operator refused ({full})"


# ---- say ------------------------------------------------------------------------------------------------


def test_say_now_on_an_idle_call_asks_for_the_line_and_nothing_else() -> None:
    port = FakeControlPort()
    c = make()
    actions = c.on_input(port, OperatorSay("Hello there.", "now"), 2.0)
    assert instructions(actions) == [say_instructions("Hello there.")]
    (create,) = sent(actions)
    assert create["response"]["metadata"]["sipctl"] == PURPOSE
    assert c.asked is not None
    assert c.asked_event_id == create["event_id"]
    assert marks(port) == ["control: say now from operator (12 chars)"]


def test_say_now_cuts_off_the_response_and_the_audio_first() -> None:
    port = FakeControlPort(responding=True, now_playing="r_talk")
    actions = make().on_input(port, OperatorSay("Correction.", "now"), 2.0)
    assert [e["type"] for e in sent(actions)] == ["response.cancel", "output_audio_buffer.clear", "response.create"]


def test_say_now_while_a_line_is_asked_for_follows_it() -> None:
    port = FakeControlPort()
    c = make()
    c.on_input(port, OperatorSay("First.", "now"), 1.0)
    actions = c.on_input(port, OperatorSay("Second.", "now"), 1.5)
    assert actions == [StartTimer(SAY_NEXT_TIMER, SAY_NEXT_MAX_S)]
    assert [w.text for w in c.waiting] == ["Second."]


def test_say_next_waits_until_the_call_is_idle() -> None:
    port = FakeControlPort(responding=True)
    c = make()
    actions = c.on_input(port, OperatorSay("Next line.", "next"), 1.0)
    assert actions == [StartTimer(SAY_NEXT_TIMER, SAY_NEXT_MAX_S)]
    assert marks(port) == ["control: say next from operator (10 chars): waiting"]
    port.responding, port.now_playing = False, "r_talk"
    assert c.when_idle(port, 2.0) == []  # its audio still plays
    port.now_playing, port.caller_is_speaking = None, True
    assert c.when_idle(port, 3.0) == []  # the caller talks
    port.caller_is_speaking = False
    actions = c.when_idle(port, 4.0)
    assert instructions(actions) == [say_instructions("Next line.")]
    assert actions[-1] == CancelTimer(SAY_NEXT_TIMER)  # nothing else waits
    assert marks(port)[-1] == "control: a waiting line from operator is said (10 chars)"


def test_the_bound_says_a_waiting_line_now_and_keeps_the_timer_for_the_rest() -> None:
    port = FakeControlPort(responding=True)
    c = make()
    c.on_input(port, OperatorSay("A.", "next"), 1.0)
    c.on_input(port, OperatorSay("B.", "next"), 1.0)
    actions = c.on_timer(port, SAY_NEXT_TIMER, 31.0)
    assert [e["type"] for e in sent(actions)] == ["response.cancel", "response.create"]
    assert instructions(actions) == [say_instructions("A.")]
    assert actions[-1] == StartTimer(SAY_NEXT_TIMER, SAY_NEXT_MAX_S)
    assert f"control: a line waited {SAY_NEXT_MAX_S:g}s: said now" in marks(port)
    assert c.on_timer(port, "someone_elses_timer", 32.0) == []


def test_waiting_lines_are_dropped_once_the_call_is_not_live() -> None:
    port = FakeControlPort(responding=True)
    c = make()
    c.on_input(port, OperatorSay("A.", "next"), 1.0)
    c.on_input(port, OperatorSay("B.", "next"), 1.0)
    port.live = False
    assert c.when_idle(port, 2.0) == [CancelTimer(SAY_NEXT_TIMER)]
    assert not c.waiting
    assert marks(port)[-1] == "control: 2 waiting line(s) dropped: the call is ending"
    assert c.on_timer(port, SAY_NEXT_TIMER, 31.0) == []


def test_the_line_s_response_done_clears_it_and_others_do_not() -> None:
    port = FakeControlPort()
    c = make()
    (create,) = sent(c.on_input(port, OperatorSay("Done soon.", "now"), 1.0))
    c.on_response_done(port, response("r_other"), 2.0)
    assert c.asked is not None
    c.on_response_done(port, response("r_say", metadata=create["response"]["metadata"]), 3.0)
    assert c.asked is None
    assert c.asked_tag is None
    assert c.asked_event_id is None
    assert marks(port)[-1] == "control: say line completed"


def _error(event_id: str | None, code: str) -> ev.ErrorDetail:
    return ev.ErrorDetail(type="invalid_request_error", code=code, message="m", event_id=event_id)


def test_a_line_refused_while_a_response_is_made_waits_and_another_refusal_gives_it_up() -> None:
    port = FakeControlPort()
    c = make()
    (create,) = sent(c.on_input(port, OperatorSay("Again.", "now"), 1.0))
    assert not c.on_error(port, _error("someone_else", "conversation_already_has_active_response"), 2.0)
    assert c.on_error(port, _error(create["event_id"], "conversation_already_has_active_response"), 2.0)
    assert [w.text for w in c.waiting] == ["Again."]
    assert marks(port)[-1] == "control: say line refused while a response is made: waiting"
    (again,) = sent(c.when_idle(port, 3.0)[:1])
    assert c.on_error(port, _error(again["event_id"], "invalid_value"), 4.0)
    assert not c.waiting
    assert c.asked is None
    assert marks(port)[-1] == "control: say line refused by OpenAI (invalid_value)"


# ---- context, mute, unmute ------------------------------------------------------------------------------


def test_context_is_a_system_note_marked_by_its_length() -> None:
    port = FakeControlPort(transferring=True)
    actions = make().on_input(port, OperatorContext("VIP caller.", source="tool"), 1.0)
    assert system_notes(actions) == ["VIP caller."]
    assert marks(port) == ["control: context from tool added (11 chars)"]


def test_mute_patches_the_turn_detection_off_and_unmute_restores_the_profile_s() -> None:
    port = FakeControlPort()
    c = make()
    c.on_input(port, OperatorMute(True), 1.0)
    assert c.muted
    mute = port.updates[-1]
    assert mute.what == "mute"
    td = mute.patch["audio"]["input"]["turn_detection"]
    assert td["type"] == "server_vad"
    assert td["create_response"] is False
    assert td["interrupt_response"] is False
    assert "eagerness" not in td  # server VAD takes no eagerness
    assert td["idle_timeout_ms"] is None  # nor does OpenAI re-prompt a silent caller on the agent's behalf
    assert port.pauses == [True]  # the caller's silence is not counted: no nudge, no silence goodbye
    assert c.on_input(port, OperatorMute(True), 2.0) == []  # already muted: no second update
    assert marks(port)[-1] == "control: mute from operator: already muted"
    c.on_input(port, OperatorMute(False), 3.0)
    assert not c.muted
    restored = port.updates[-1].patch["audio"]["input"]["turn_detection"]
    assert restored == VAD.model_dump(exclude_none=True, exclude={"eagerness"})
    assert port.pauses == [True, False]
    assert marks(port) == [
        "control: mute from operator",
        "control: mute from operator: already muted",
        "control: unmute from operator",
    ]


def test_semantic_vad_keeps_its_eagerness_and_drops_the_idle_timeout() -> None:
    semantic = TurnDetection(type="semantic_vad", eagerness="low", idle_timeout_ms=6000)
    port = FakeControlPort()
    make(semantic).on_input(port, OperatorMute(True), 1.0)
    td = port.updates[-1].patch["audio"]["input"]["turn_detection"]
    assert td["eagerness"] == "low"
    assert "idle_timeout_ms" not in td


# ---- helpers --------------------------------------------------------------------------------------------


def test_kind_of_and_check_text() -> None:
    assert [kind_of(i) for i in (OperatorSay("a"), OperatorContext("b"), OperatorMute(True), OperatorMute(False))] == [
        "say",
        "context",
        "mute",
        "unmute",
    ]
    assert check_text("  hi \n", limit=10) == "hi"
    for value, why in [(3, "must be a string"), ("   ", "must not be empty"), ("a\x00b", "control characters")]:
        with pytest.raises(ValueError, match=why):
            check_text(value, limit=10)
    with pytest.raises(ValueError, match=f"at most {MAX_SAY_CHARS} characters"):
        check_text("x" * (MAX_SAY_CHARS + 1), limit=MAX_SAY_CHARS)


def test_mute_and_unmute_on_hold_leave_the_answers_off_and_say_so() -> None:
    port = FakeControlPort(on_hold=True)
    c = make()
    c.on_input(port, OperatorMute(True), 1.0)
    td = port.updates[-1].patch["audio"]["input"]["turn_detection"]
    assert (td["create_response"], td["interrupt_response"], td["idle_timeout_ms"]) == (False, False, None)
    c.on_input(port, OperatorMute(False), 2.0)
    assert not c.muted
    td = port.updates[-1].patch["audio"]["input"]["turn_detection"]
    # still on hold: no answers of its own (nor OpenAI's re-prompt), but the caller may cut a line off again
    assert (td["create_response"], td["interrupt_response"], td["idle_timeout_ms"]) == (False, True, None)
    assert marks(port) == [
        "control: mute from operator (on hold: kept when the hold ends)",
        "control: unmute from operator (on hold: no answers until it ends)",
    ]
