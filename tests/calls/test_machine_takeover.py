"""The machine's side of a takeover (#13), pure: ``resume`` re-attaches; once attached the watchdogs count from the
original attach, no greeting is asked for again; a 404 on the re-attach ends the call ``caller_hangup``, any other
failure hangs up; a call taken over while ending is hung up at once. A call taken over muted (live control) or on
hold goes on so: its turn detection is said to OpenAI again, an unmute is taken, a hold ends when a person is back
and counts from its original start."""

from __future__ import annotations

from typing import Any

import pytest

from sip_controller.agent.profile import AgentProfile, TurnDetection
from sip_controller.calls.actions import Action, Hangup, Reattach, Send
from sip_controller.calls.features import hold
from sip_controller.calls.features.hold import HOLD_MAX_TIMER
from sip_controller.calls.features.watchdog import MAX_WRAP_TIMER, SILENCE_TIMER
from sip_controller.calls.inputs import Attached, AttachFailed, OperatorMute, TimerFired
from sip_controller.calls.states import SESSION_LIMIT_TIMER, CallState
from sip_controller.calls.tags import ANSWER
from tests.callkit import (
    Call,
    cancelled,
    creates,
    finishes,
    hangups,
    heard,
    plain_answer,
    response_created,
    response_done,
    sends,
    session_updated,
    speech,
    timers,
)

META = {"sipctl": hold.PURPOSE, "n": "1"}  # a hold check's tag (calls/tags.py), as OpenAI echoes it


def answer(text: str) -> list[dict[str, Any]]:
    return [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]


def taken_over(elapsed_s: float = 100.0, *, attached_s: float | None = 2.0) -> Call:
    c = Call()
    c.record.accepted_s = 1.0
    c.record.attached_s = attached_s
    c.log.extend(c.m.resume(c.now, elapsed_s=elapsed_s))
    return c


def test_resume_re_attaches_the_sideband() -> None:
    c = taken_over()
    assert c.log == [Reattach()]
    assert c.state() == CallState.ATTACHED
    assert c.record.timeline[-1] == (100.0, "taken over: re-attaching the sideband")


def test_once_attached_the_watchdogs_count_from_the_original_attach_and_nobody_is_greeted_again() -> None:
    c = taken_over(elapsed_s=100.0)
    actions = c.feed(Attached())
    wrap = c.profile.watchdogs.max_duration_s - c.profile.watchdogs.wrap_up_before_s
    assert timers(actions)[MAX_WRAP_TIMER] == wrap - (100.0 - 2.0)
    assert SESSION_LIMIT_TIMER in timers(actions)
    assert not [a for a in actions if isinstance(a, Send)]  # no greeting, no session.update
    assert c.m.live


def test_a_404_on_the_re_attach_finishes_the_call_as_caller_hangup() -> None:
    c = taken_over()
    actions = c.feed(AttachFailed(gone=True, detail="404"))
    assert finishes(actions)
    assert c.record.ended_reason == "caller_hangup"
    assert hangups(actions) == 0


def test_any_other_failure_to_re_attach_hangs_up() -> None:
    c = taken_over()
    actions = c.feed(AttachFailed(gone=False, detail="503"))
    assert hangups(actions) == 1
    assert c.state() == CallState.ENDING


def test_a_call_taken_over_while_ending_is_hung_up_once_attached() -> None:
    c = Call()
    c.record.attached_s = 2.0
    c.m.resume(c.now, elapsed_s=30.0, ending="agent_end_call")
    actions = c.feed(Attached())
    assert [a for a in actions if isinstance(a, Hangup)] == [Hangup()]


# ---- mute and hold survive a takeover (#13, #17) ----------------------------------------------------------------
# The lost owner's record said the agent was muted, or the call waited on hold (``CallRecord.muted``,
# ``on_hold_since_s``: read back from the store by ``rebuild_record``). At OpenAI the session still has that turn
# detection; the new owner's machine must know it too, and say it again once re-attached.

HOLD_MAX_S = 300.0


def quiet_profile(**update: Any) -> AgentProfile:
    """Hold mode on, OpenAI's idle timeout set (it must be off while the agent does not answer)."""
    td = TurnDetection(type="server_vad", idle_timeout_ms=8000)
    profile = AgentProfile.model_validate(
        {"tools": ["end_call", "wait_on_hold"], "hold": {"max_hold_s": HOLD_MAX_S}}
    ).model_copy(update={"turn_detection": td})
    return profile.model_copy(update=update) if update else profile


def resumed(
    *, muted: bool = False, on_hold_since_s: float | None = None, hold_s: float = 0.0, elapsed_s: float = 100.0,
    silence_watchdog: bool = False, profile: AgentProfile | None = None,
) -> tuple[Call, list[Action]]:  # fmt: skip
    """A call taken over with the record the store kept (attached at 2 s); the actions of its re-attach."""
    c = Call(profile=profile or quiet_profile(), silence_watchdog=silence_watchdog)
    c.record.accepted_s, c.record.attached_s = 1.0, 2.0
    c.record.state = "attached"
    c.record.muted, c.record.on_hold_since_s, c.record.hold_s = muted, on_hold_since_s, hold_s
    c.log.extend(c.m.resume(c.now, elapsed_s=elapsed_s))
    return c, c.feed(Attached())


def turn_updates(actions: list[Action]) -> list[dict[str, Any]]:
    """The turn detection of each session.update in ``actions``."""
    return [
        e["session"]["audio"]["input"]["turn_detection"] for e in sends(actions) if e["type"] == "session.update"
    ]


def test_a_muted_call_taken_over_stays_muted_and_its_turn_detection_is_said_again() -> None:
    c, actions = resumed(muted=True)
    assert c.m.muted
    (td,) = turn_updates(actions)
    assert td["create_response"] is False
    assert td["interrupt_response"] is False
    assert td["idle_timeout_ms"] is None
    assert not creates(actions)  # no answer, no greeting
    assert "taken over: muted" in [what for _, what in c.record.timeline]


def test_the_operators_unmute_after_a_takeover_is_taken_and_answers_come_back() -> None:
    c, _ = resumed(muted=True)
    c.feed(session_updated())
    actions = c.feed(OperatorMute(False, source="api"))
    (td,) = turn_updates(actions)
    assert td["create_response"] is True
    assert td["interrupt_response"] is True
    assert td["idle_timeout_ms"] == 8000
    assert not c.m.muted
    assert c.record.muted is False
    assert not any("already answering" in what for _, what in c.record.timeline)


def test_the_silence_watchdog_is_quiet_while_a_call_taken_over_is_muted() -> None:
    c, actions = resumed(muted=True, silence_watchdog=True)
    assert SILENCE_TIMER not in timers(actions) or SILENCE_TIMER in cancelled(actions)
    assert not c.m.watchdog.armed
    c.feed(session_updated())
    assert SILENCE_TIMER not in timers(c.feed(speech("stopped")))
    assert SILENCE_TIMER in timers(c.feed(OperatorMute(False, source="api")))  # counted again once unmuted


def test_a_call_taken_over_on_hold_goes_on_waiting_with_the_original_deadline() -> None:
    c, actions = resumed(on_hold_since_s=40.0, elapsed_s=100.0)
    assert c.m.hold.active
    assert timers(actions)[HOLD_MAX_TIMER] == pytest.approx(40.0 + HOLD_MAX_S - 100.0)
    (td,) = turn_updates(actions)
    assert td["create_response"] is False
    assert td["interrupt_response"] is True  # on hold the caller may still cut a line off
    assert td["idle_timeout_ms"] is None
    assert not creates(actions)


def test_a_person_back_after_a_takeover_on_hold_ends_the_hold_and_is_answered() -> None:
    c, _ = resumed(on_hold_since_s=40.0, hold_s=15.0, elapsed_s=100.0)
    c.feed(session_updated())
    c.now = 130.0  # 30 s after the takeover, 90 s after the hold began
    out = c.feed(heard("Hi, this is Anna from billing, how can I help?"))
    (check,) = creates(out)
    assert check["response"]["metadata"]["sipctl"] == hold.PURPOSE  # the hold checks go on
    out = c.feed(response_created("r_chk", metadata=META))
    out += c.feed(response_done("r_chk", output=answer("yes"), metadata=META))
    assert not c.m.hold.active
    assert c.record.on_hold_since_s is None
    assert HOLD_MAX_TIMER in cancelled(out)
    (td,) = turn_updates(out)
    assert td["create_response"] is True
    after = c.feed(session_updated())
    assert [plain_answer(e) for e in creates(after)] == [ANSWER]  # the person is answered
    # the earlier holds' 15 s, and this one from its original start (40 s) to its end (131 s)
    assert c.record.hold_s == pytest.approx(15.0 + 131.0 - 40.0)


def test_hold_max_fires_at_the_original_deadline_after_a_takeover() -> None:
    c, actions = resumed(on_hold_since_s=40.0, elapsed_s=100.0)
    c.feed(session_updated())
    assert timers(actions)[HOLD_MAX_TIMER] == pytest.approx(240.0)
    c.now = 340.0
    out = c.feed(TimerFired(HOLD_MAX_TIMER))
    assert creates(out)[-1]["response"]["instructions"] == hold.HOLD_GIVE_UP
    assert c.state() == CallState.ENDING


def test_a_hold_past_its_maximum_when_taken_over_ends_at_once() -> None:
    _, actions = resumed(on_hold_since_s=10.0, elapsed_s=HOLD_MAX_S + 50.0)
    assert timers(actions)[HOLD_MAX_TIMER] == 0.0


def test_the_silence_watchdog_is_quiet_on_hold_after_a_takeover() -> None:
    c, _ = resumed(on_hold_since_s=40.0, silence_watchdog=True)
    assert not c.m.watchdog.armed
    c.feed(session_updated())
    assert SILENCE_TIMER not in timers(c.feed(speech("stopped")))


def test_on_hold_and_muted_both_come_back_and_the_hold_ending_leaves_the_agent_muted() -> None:
    c, actions = resumed(muted=True, on_hold_since_s=40.0)
    (td,) = turn_updates(actions)
    assert (td["create_response"], td["interrupt_response"]) == (False, False)
    c.feed(session_updated())
    out = c.feed(heard("Thank you for holding, how can I help?"))
    out += c.feed(response_created("r_chk", metadata=META))
    out += c.feed(response_done("r_chk", output=answer("yes"), metadata=META))
    assert not c.m.hold.active
    assert c.m.muted
    (td,) = turn_updates(out)
    assert td["create_response"] is False
    assert not [e for e in creates(c.feed(session_updated())) if plain_answer(e)]  # the operator has the call


def test_a_call_taken_over_answering_normally_sends_no_session_update() -> None:
    _, actions = resumed()
    assert turn_updates(actions) == []


def test_a_call_taken_over_muted_while_ending_is_only_hung_up() -> None:
    c = Call(profile=quiet_profile())
    c.record.attached_s = 2.0
    c.record.muted, c.record.on_hold_since_s = True, 20.0
    c.m.resume(c.now, elapsed_s=30.0, ending="agent_end_call")
    actions = c.feed(Attached())
    assert hangups(actions) == 1
    assert turn_updates(actions) == []
    assert HOLD_MAX_TIMER not in timers(actions)


def test_a_stored_mute_is_ignored_by_a_profile_without_turn_detection() -> None:
    c, actions = resumed(muted=True, profile=quiet_profile(turn_detection=None))
    assert not c.m.muted
    assert turn_updates(actions) == []
