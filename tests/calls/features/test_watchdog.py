"""Tests for sip_controller.calls.features.watchdog: max duration, silence and the cost budget, through the
call machine."""

from __future__ import annotations

from typing import Any

import pytest

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.actions import Finish
from sip_controller.calls.features import watchdog
from sip_controller.calls.features.watchdog import MAX_END_TIMER, MAX_WRAP_TIMER, SILENCE_TIMER
from sip_controller.calls.inputs import TimerFired
from sip_controller.calls.pricing import DEFAULT_MODEL_PRICES, response_cost
from sip_controller.calls.report import UsageTotals
from sip_controller.calls.states import GOODBYE_INSTRUCTIONS, CallState
from tests.callkit import (  # the shared machine-test kit
    Call,
    audio,
    cancelled,
    creates,
    end_after_goodbye,
    fc,
    finishes,
    hangups,
    heard,
    response_created,
    response_done,
    sb,
    sends,
    session_updated,
    speech,
    timers,
    usage,
)


def wd_profile(**watchdogs: Any) -> AgentProfile:
    return AgentProfile.model_validate({"tools": ["end_call", "wait_on_hold"], "watchdogs": watchdogs})


def test_max_duration_wrap_up_then_goodbye_then_hangup() -> None:
    c = Call(profile=wd_profile(max_duration_s=300, wrap_up_before_s=45))
    assert timers(c.attach())[MAX_WRAP_TIMER] == 255.0
    actions = c.feed(TimerFired(MAX_WRAP_TIMER))
    [wrap] = creates(actions)
    assert "45 seconds" in wrap["response"]["instructions"]
    assert wrap["response"]["tool_choice"] == "none"
    assert timers(actions) == {MAX_END_TIMER: 45.0}
    assert c.m.live
    c.play("r_wrap", "We need to wrap up in about 45 seconds.")
    actions = c.feed(TimerFired(MAX_END_TIMER))
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == GOODBYE_INSTRUCTIONS
    assert {MAX_WRAP_TIMER, MAX_END_TIMER, SILENCE_TIMER} <= cancelled(actions)
    assert hangups(actions) == 0
    assert finishes(end_after_goodbye(c)) == [Finish("max_duration")]
    assert c.record.ended_reason == "max_duration"


def test_silence_one_nudge_then_silence_timeout() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=10), silence_watchdog=True)
    assert timers(c.attach())[SILENCE_TIMER] == 10.0
    actions = c.feed(TimerFired(SILENCE_TIMER))
    [nudge] = creates(actions)
    assert nudge["response"]["instructions"] == watchdog.NUDGE_INSTRUCTIONS
    assert timers(actions) == {SILENCE_TIMER: 10.0}
    # the nudge's own audio pauses and restarts the countdown but does not reset the nudge
    assert SILENCE_TIMER in cancelled(c.feed(audio("started", "r_nudge")))
    assert timers(c.feed(audio("stopped", "r_nudge"))) == {SILENCE_TIMER: 10.0}
    actions = c.feed(TimerFired(SILENCE_TIMER))
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == watchdog.SILENCE_GOODBYE
    assert c.m.state == CallState.ENDING
    assert finishes(end_after_goodbye(c)) == [Finish("silence_timeout")]


def test_caller_speech_stops_restarts_the_countdown_and_resets_the_nudge() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=12), silence_watchdog=True)
    c.attach()
    c.feed(TimerFired(SILENCE_TIMER))  # nudged
    assert cancelled(c.feed(speech("started"))) == {SILENCE_TIMER}
    assert timers(c.feed(speech("stopped"))) == {SILENCE_TIMER: 12.0}
    actions = c.feed(TimerFired(SILENCE_TIMER))
    assert [e["response"]["instructions"] for e in creates(actions)] == [watchdog.NUDGE_INSTRUCTIONS]
    assert c.m.live


def test_assistant_audio_stops_and_restarts_the_countdown() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=15), silence_watchdog=True)
    c.attach()
    assert cancelled(c.feed(audio("started", "r_greet"))) == {SILENCE_TIMER}
    assert timers(c.feed(audio("stopped", "r_greet"))) == {SILENCE_TIMER: 15.0}


def test_no_silence_countdown_during_hold() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=10), silence_watchdog=True)
    c.attach()
    actions = c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    assert SILENCE_TIMER in cancelled(actions)
    c.feed(session_updated())
    for inp in (speech("started"), speech("stopped"), audio("started", "x"), audio("stopped", "x")):
        assert SILENCE_TIMER not in timers(c.feed(inp))
    assert c.feed(TimerFired(SILENCE_TIMER)) == []
    assert c.m.live
    assert c.m.hold.active


def test_budget_exceeded_ends_the_call_politely() -> None:
    prices = DEFAULT_MODEL_PRICES["gpt-realtime-2.1"]
    c = Call(profile=wd_profile(budget_usd=0.05), prices=prices)
    c.greeted()  # 100 text in + 50 audio out: well under budget
    assert c.m.live
    u = usage(text_in=2000, audio_in=500, audio_out=700)
    actions = c.feed(response_done("r1", usage=u))
    expected = UsageTotals(responses=2, input_text_tokens=2100, input_audio_tokens=500, output_audio_tokens=750)
    assert c.record.cost_usd == pytest.approx(response_cost(expected, prices))
    assert c.record.cost_usd > 0.05
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == watchdog.BUDGET_GOODBYE
    assert bye["response"]["tool_choice"] == "none"
    assert hangups(actions) == 0
    assert finishes(end_after_goodbye(c)) == [Finish("budget_exceeded")]
    assert c.record.ended_reason == "budget_exceeded"


def test_budget_not_exceeded_keeps_the_call() -> None:
    c = Call(profile=wd_profile(budget_usd=1.0), prices=DEFAULT_MODEL_PRICES["gpt-realtime-2.1"])
    c.greeted()
    assert creates(c.feed(response_done("r1", usage=usage(text_in=1000, audio_out=1000)))) == []
    assert c.m.live
    assert 0 < c.record.cost_usd < 1.0


def test_watchdog_timers_after_ending_do_nothing() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=10), silence_watchdog=True)
    c.attach()
    c.feed(TimerFired(MAX_WRAP_TIMER))
    c.feed(TimerFired(MAX_END_TIMER))
    assert c.m.state == CallState.ENDING
    for name in (MAX_WRAP_TIMER, MAX_END_TIMER, SILENCE_TIMER):
        assert c.feed(TimerFired(name)) == []
    assert len(creates(c.log)) == 3  # the greeting, the wrap-up and one goodbye


def test_budget_is_enforced_while_on_hold() -> None:
    c = Call(profile=wd_profile(budget_usd=0.05), prices=DEFAULT_MODEL_PRICES["gpt-realtime-2.1"])
    c.greeted()
    c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    c.feed(session_updated())
    c.feed(heard("la la la hold music"))
    meta = {"purpose": "sipctl_hold_check"}
    c.feed(response_created("r_chk", metadata=meta))
    no = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "no"}]}]
    actions = c.feed(response_done("r_chk", output=no, usage=usage(text_in=20000), metadata=meta))
    assert c.record.cost_usd > 0.05
    assert c.m.state == CallState.ENDING
    assert creates(actions)[0]["response"]["instructions"] == watchdog.BUDGET_GOODBYE


@pytest.mark.parametrize("edge", ["caller", "agent"])
def test_a_stale_silence_timer_while_someone_speaks_does_nothing(edge: str) -> None:
    c = Call(profile=wd_profile(silence_timeout_s=10), silence_watchdog=True)
    c.attach()
    c.feed(speech("started") if edge == "caller" else audio("started", "r_greet"))
    assert c.feed(TimerFired(SILENCE_TIMER)) == []


def test_the_caller_talking_over_the_wrap_up_leaves_the_end_where_it_was() -> None:
    c = Call(profile=wd_profile(max_duration_s=300, wrap_up_before_s=45))
    c.attach()
    c.feed(TimerFired(MAX_WRAP_TIMER))
    tag = c.tag("wrap_up")
    c.feed(response_created("r_wrap", tag))
    c.feed(audio("started", "r_wrap"))
    c.feed(speech("started"))
    actions = c.feed(audio("cleared", "r_wrap"))
    [note] = [e["item"]["content"][0]["text"] for e in sends(actions) if e["type"] == "conversation.item.create"]
    assert "has to end in about" in note
    assert creates(actions) == []
    assert c.m.live
    assert [b.then for b in c.record.barge_ins] == ["noted"]
    actions = c.feed(TimerFired(MAX_END_TIMER))
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == GOODBYE_INSTRUCTIONS
    assert finishes(end_after_goodbye(c)) == [Finish("max_duration")]


def test_openais_idle_timeout_ends_a_silent_call_it_would_re_prompt_forever() -> None:
    profile = AgentProfile.model_validate(
        {"turn_detection": {"idle_timeout_ms": 8000}, "watchdogs": {"silence_timeout_s": 30}}
    )
    c = Call(profile=profile, silence_watchdog=True)
    c.greeted()
    idle = sb({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": 0, "audio_end_ms": 8000,
               "item_id": "item_1"})
    assert creates(c.feed(idle)) == []  # OpenAI re-prompts by itself
    # the re-prompt plays; its audio does not reset the count of idle timeouts
    c.feed(response_created("r_re"))
    c.feed(audio("started", "r_re"))
    c.feed(response_done("r_re"))
    c.feed(audio("stopped", "r_re"))
    [bye] = creates(c.feed(idle))
    assert bye["response"]["instructions"] == watchdog.SILENCE_GOODBYE
    assert finishes(end_after_goodbye(c)) == [Finish("silence_timeout")]
