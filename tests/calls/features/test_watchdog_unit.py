"""The watchdogs on their own: a ``Watchdog`` driven through a fake port, without the call machine."""

from __future__ import annotations

from typing import Any

import pytest

from sip_controller.agent.profile import Watchdogs
from sip_controller.calls.actions import CancelTimer, StartTimer
from sip_controller.calls.features.watchdog import (
    BUDGET_GOODBYE,
    MAX_END_TIMER,
    MAX_WRAP_TIMER,
    NUDGE_INSTRUCTIONS,
    SILENCE_GOODBYE,
    SILENCE_TIMER,
    Watchdog,
)
from sip_controller.calls.states import GOODBYE_INSTRUCTIONS
from tests.calls.features.fake_port import FakePort, instructions, marks, response, sent, system_notes


def make(**config: Any) -> Watchdog:
    return Watchdog(Watchdogs.model_validate(config))


def test_start_arms_the_duration_and_silence_countdowns_and_stop_cancels_them() -> None:
    w = make(max_duration_s=300, wrap_up_before_s=45, silence_timeout_s=20)
    assert w.start() == [StartTimer(MAX_WRAP_TIMER, 255.0), StartTimer(SILENCE_TIMER, 20.0)]
    assert w.armed
    assert w.stop() == [CancelTimer(MAX_WRAP_TIMER), CancelTimer(MAX_END_TIMER), CancelTimer(SILENCE_TIMER)]
    assert not w.armed

    quiet = make(silence_timeout_s=None)
    assert quiet.start() == [StartTimer(MAX_WRAP_TIMER, 570.0)]
    assert not quiet.armed
    assert quiet.on_caller_speech(FakePort(), started=False) == []  # no silence watchdog to restart


def test_max_duration_says_the_wrap_up_then_ends_with_a_goodbye() -> None:
    w, port = make(max_duration_s=300, wrap_up_before_s=45), FakePort()
    actions = w.on_timer(port, MAX_WRAP_TIMER, 255.0)
    [wrap] = instructions(actions)
    assert "about 45 seconds" in wrap
    assert actions[-1] == StartTimer(MAX_END_TIMER, 45.0)
    assert marks(port) == ["max duration: wrap-up"]
    assert port.endings == []
    actions = w.on_timer(port, MAX_END_TIMER, 300.0)
    assert port.endings == [("max_duration", GOODBYE_INSTRUCTIONS)]
    assert instructions(actions) == [GOODBYE_INSTRUCTIONS]
    assert w.on_timer(port, MAX_END_TIMER, 301.0) == []  # the call is no longer live


def test_silence_nudges_once_then_says_goodbye() -> None:
    w, port = make(silence_timeout_s=20), FakePort()
    w.start()
    actions = w.on_timer(port, SILENCE_TIMER, 20.0)
    assert instructions(actions) == [NUDGE_INSTRUCTIONS]
    assert actions[-1] == StartTimer(SILENCE_TIMER, 20.0)  # counting again
    assert w.nudged
    actions = w.on_timer(port, SILENCE_TIMER, 40.0)
    assert port.endings == [("silence_timeout", SILENCE_GOODBYE)]
    assert instructions(actions) == [SILENCE_GOODBYE]


def test_speech_stops_the_silence_countdown_and_the_caller_speaking_forgives_the_nudge() -> None:
    w, port = make(silence_timeout_s=20), FakePort()
    w.start()
    w.on_timer(port, SILENCE_TIMER, 20.0)
    assert w.nudged
    assert w.on_caller_speech(port, started=True) == [CancelTimer(SILENCE_TIMER)]
    assert not w.nudged
    assert not w.armed
    assert w.on_timer(port, SILENCE_TIMER, 41.0) == []  # a stale timer while someone speaks
    assert w.on_assistant_audio(port, started=True) == []  # already stopped: nothing more to cancel
    assert w.on_caller_speech(port, started=False) == []  # the agent still speaks
    assert w.on_assistant_audio(port, started=False) == [StartTimer(SILENCE_TIMER, 20.0)]
    assert w.armed
    actions = w.on_timer(port, SILENCE_TIMER, 70.0)
    assert instructions(actions) == [NUDGE_INSTRUCTIONS]  # a nudge again, not the goodbye


def test_paused_silence_is_not_counted() -> None:
    w, port = make(silence_timeout_s=20), FakePort()
    w.start()
    assert w.pause_silence(port, True) == [CancelTimer(SILENCE_TIMER)]
    assert w.paused
    assert w.on_timer(port, SILENCE_TIMER, 20.0) == []
    assert w.on_caller_speech(port, started=False) == []
    assert w.pause_silence(port, False) == [StartTimer(SILENCE_TIMER, 20.0)]
    assert not w.paused


def test_silence_is_not_restarted_on_a_call_that_is_not_live() -> None:
    w, port = make(silence_timeout_s=20), FakePort()
    w.start()
    port.live = False
    assert w.on_assistant_audio(port, started=False) == [CancelTimer(SILENCE_TIMER)]
    assert w.on_timer(port, SILENCE_TIMER, 20.0) == []
    assert port.endings == []


def test_the_cost_budget_ends_the_call_once_exceeded() -> None:
    w, port = make(budget_usd=0.5), FakePort()
    port.record.cost_usd = 0.5
    assert w.on_cost(port, 10.0) == []  # at the budget is still within it
    port.record.cost_usd = 0.51
    actions = w.on_cost(port, 11.0)
    assert port.endings == [("budget_exceeded", BUDGET_GOODBYE)]
    assert instructions(actions) == [BUDGET_GOODBYE]
    assert marks(port) == ["cost budget exceeded (0.5100 > 0.5 USD)"]
    assert w.on_cost(port, 12.0) == []  # ending already
    assert make().on_cost(FakePort(), 1.0) == []  # no budget


# ---- the wrap-up line as OpenAI really treats it, and an ending that gave way (issue 15) ----------------------


def _wrap_tag(w: Watchdog) -> dict[str, str]:
    assert w.wrap_tag is not None
    return dict(w.wrap_tag)


def test_the_caller_talking_over_the_wrap_up_tells_the_model_to_say_it_in_its_answer() -> None:
    w, port = make(max_duration_s=300, wrap_up_before_s=45), FakePort()
    w.start(0.0)
    w.on_timer(port, MAX_WRAP_TIMER, 255.0)
    w.on_response_created(response("r_wrap", metadata=_wrap_tag(w)))
    actions = w.on_audio_cleared(port, "r_wrap", 260.0)
    [note] = system_notes(actions)
    assert "about 40 seconds" in note  # what is left, not what was
    assert instructions(actions) == []  # the model's answer says it; nothing else is asked
    assert [(b.line, b.then) for b in port.record.barge_ins] == [("wrap_up", "noted")]
    # the cancelled response of the same line is the same barge-in
    assert w.on_response_done(port, response("r_wrap", status="cancelled", reason="turn_detected"), 260.1) == []
    assert w.on_audio_cleared(port, "r_other", 261.0) == []
    # the end does not move
    w.on_timer(port, MAX_END_TIMER, 300.0)
    assert port.endings == [("max_duration", GOODBYE_INSTRUCTIONS)]


def test_a_failed_wrap_up_is_asked_once_more_then_the_call_ends_as_a_model_error() -> None:
    w, port = make(max_duration_s=300, wrap_up_before_s=45), FakePort()
    w.start(0.0)
    w.on_timer(port, MAX_WRAP_TIMER, 255.0)
    w.on_response_created(response("r_wrap", metadata=_wrap_tag(w)))
    again = w.on_response_done(port, response("r_wrap", status="failed", error_code="server_error"), 256.0)
    [line] = instructions(again)
    assert "about 44 seconds" in line
    actions = w.on_response_done(port, response("r_wrap2", status="failed", metadata=_wrap_tag(w)), 257.0)
    assert port.model_failures == ["the wrap-up failed 2 times"]
    assert sent(actions) == [{"type": "fake.hangup", "why": "the wrap-up failed 2 times"}]


def test_a_wrap_up_heard_is_done_with() -> None:
    w, port = make(max_duration_s=300, wrap_up_before_s=45), FakePort()
    w.start(0.0)
    w.on_timer(port, MAX_WRAP_TIMER, 255.0)
    port.audio_started.add("r_wrap")
    port.audio_stopped.add("r_wrap")
    assert w.on_response_done(port, response("r_wrap", metadata=_wrap_tag(w)), 258.0) == []
    assert w.wrap_tag is None
    assert port.model_failures == []


def test_resume_goes_on_with_the_time_that_was_left() -> None:
    w, port = make(max_duration_s=300, wrap_up_before_s=45, silence_timeout_s=20), FakePort()
    w.start(10.0)
    w.stop()
    assert w.resume(port, 100.0) == [StartTimer(MAX_WRAP_TIMER, 165.0), StartTimer(SILENCE_TIMER, 20.0)]
    w.on_timer(port, MAX_WRAP_TIMER, 265.0)
    w.stop()
    assert w.resume(port, 290.0)[0] == StartTimer(MAX_END_TIMER, 20.0)


# ---- OpenAI's own idle timeout (turn_detection.idle_timeout_ms) ----------------------------------------------


def test_openais_idle_timeout_is_the_nudge_and_a_second_one_ends_the_call() -> None:
    w, port = make(silence_timeout_s=30), FakePort()
    w.start(0.0)
    assert w.on_idle_timeout(port, 10.0) == []  # OpenAI re-prompts by itself: no nudge of ours on top
    assert w.nudged
    actions = w.on_idle_timeout(port, 25.0)
    assert port.endings == [("silence_timeout", SILENCE_GOODBYE)]
    assert instructions(actions) == [SILENCE_GOODBYE]
    assert "silence: OpenAI's idle timeout re-prompted the caller" in marks(port)


def test_the_caller_speaking_between_idle_timeouts_starts_over() -> None:
    w, port = make(silence_timeout_s=30), FakePort()
    w.start(0.0)
    w.on_idle_timeout(port, 10.0)
    w.on_caller_speech(port, started=True)
    w.on_caller_speech(port, started=False)
    assert w.on_idle_timeout(port, 40.0) == []
    assert port.endings == []


def test_after_openais_re_prompt_our_own_timer_does_not_nudge_again() -> None:
    w, port = make(silence_timeout_s=20), FakePort()
    w.start(0.0)
    w.on_idle_timeout(port, 10.0)
    w.on_timer(port, SILENCE_TIMER, 30.0)
    assert port.endings == [("silence_timeout", SILENCE_GOODBYE)]


@pytest.mark.parametrize("why", ["off", "paused", "not live"])
def test_idle_timeouts_are_only_recorded_when_silence_is_not_watched(why: str) -> None:
    w, port = make(silence_timeout_s=None if why == "off" else 20), FakePort()
    w.start(0.0)
    if why == "paused":
        w.pause_silence(port, True)
    port.live = why != "not live"
    assert w.on_idle_timeout(port, 10.0) == []
    assert w.on_idle_timeout(port, 20.0) == []
    assert port.endings == []
    assert marks(port).count("idle timeout: OpenAI re-prompts (silence not watched now)") == 2
