"""Tests for parking a long hold on Twilio (#16), through the call machine: when ``wait_on_hold`` asks for a
``Park``, what ``ParkOk`` and ``ParkFailed`` do, and how the leg ends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.actions import Action, Hangup, Park, Send
from sip_controller.calls.features.hold import HOLD_MAX_TIMER
from sip_controller.calls.inputs import HangupOk, ParkFailed, ParkOk, SidebandClosed
from sip_controller.calls.states import CallState
from tests.callkit import Call, creates, fc, finishes, outputs, response_done, session_updated, timers

TWILIO = {"id": "out_1", "direction": "outbound", "call_sid": "CA" + "1" * 32}


def parking_profile(**park: Any) -> AgentProfile:
    return AgentProfile.model_validate(
        {"tools": ["end_call", "wait_on_hold"], "hold": {"max_hold_s": 900, "park": {"after_min": 10, **park}}}
    )


def hold(c: Call, arguments: dict[str, Any], *, twilio: bool = True) -> list[Action]:
    if twilio:
        c.record.twilio = dict(TWILIO)
    c.greeted()
    actions = c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", json.dumps(arguments))]))
    c.feed(session_updated())
    return actions


def parks(actions: list[Action]) -> list[Park]:
    return [a for a in actions if isinstance(a, Park)]


def test_a_long_expected_hold_on_a_twilio_call_is_parked_after_hold_mode_is_on() -> None:
    c = Call(profile=parking_profile())
    actions = hold(c, {"expected_minutes": 40, "reason": "claim 4471 status"})
    assert parks(actions) == [Park(expected_min=40, reason="claim 4471 status")]
    # hold mode first: the session stays quiet while Twilio is asked, and if Twilio refuses
    assert "on hold" in outputs(actions)["c1"]["status"]
    assert HOLD_MAX_TIMER in timers(actions)
    assert actions.index(parks(actions)[0]) == len(actions) - 1
    assert any("parking the line on Twilio (expected wait 40 min)" in e for _, e in c.record.timeline)


def test_a_short_or_unsaid_wait_stays_on_hold_mode() -> None:
    assert parks(hold(Call(profile=parking_profile()), {"expected_minutes": 5})) == []
    assert parks(hold(Call(profile=parking_profile()), {"reason": "no estimate"})) == []


def test_a_call_twilio_did_not_bridge_is_never_parked() -> None:
    assert parks(hold(Call(profile=parking_profile()), {"expected_minutes": 40}, twilio=False)) == []


def test_a_profile_without_park_never_parks() -> None:
    profile = AgentProfile.model_validate({"tools": ["end_call", "wait_on_hold"]})
    assert parks(hold(Call(profile=profile), {"expected_minutes": 40})) == []


def test_park_ok_ends_the_openai_leg_without_a_goodbye() -> None:
    c = Call(profile=parking_profile())
    hold(c, {"expected_minutes": 40})
    actions = c.feed(ParkOk())
    assert c.state() == CallState.ENDING
    assert any(isinstance(a, Hangup) for a in actions)
    assert creates(actions) == []  # no goodbye: the other side is hold music
    c.feed(HangupOk(attempts=1))
    done = c.feed(SidebandClosed(code=1000))
    assert [f.reason for f in finishes(done)] == ["parked"]
    assert c.record.ended_reason == "parked"
    assert c.record.hold_s > 0  # the hold time of this leg is counted


def test_the_leg_closing_before_twilio_answers_waits_for_the_answer_and_is_parked() -> None:
    """Twilio's redirect ends the OpenAI leg, maybe before the Calls API's answer is back: that answer decides."""
    c = Call(profile=parking_profile())
    hold(c, {"expected_minutes": 40})
    assert finishes(c.feed(SidebandClosed(code=1000))) == []
    assert c.state() == CallState.ATTACHED
    done = c.feed(ParkOk())
    assert [f.reason for f in finishes(done)] == ["parked"]
    assert not any(isinstance(a, Hangup) for a in done)  # the leg is gone already


def test_the_leg_closing_and_twilio_refusing_is_the_far_side_hanging_up() -> None:
    c = Call(profile=parking_profile())
    hold(c, {"expected_minutes": 40})
    c.feed(SidebandClosed(code=1000))
    done = c.feed(ParkFailed("Twilio: HTTP 400 (21220): Call is not in-progress"))
    assert [f.reason for f in finishes(done)] == ["caller_hangup"]


def test_a_later_legs_context_goes_in_as_user_messages_before_the_opening() -> None:
    c = Call(profile=parking_profile())
    c.m.opening = "A person has just come back on the line after the hold."
    c.m.context = ("Earlier in this call: ...", "What the person who came back said: Hi, Dana here.")
    actions = c.attach()
    sent = [a.event for a in actions if isinstance(a, Send)]
    items = [e for e in sent if e["type"] == "conversation.item.create"]
    assert [i["item"]["role"] for i in items] == ["user", "user"]
    assert items[1]["item"]["content"] == [{"type": "input_text", "text": c.m.context[1]}]
    assert sent.index(items[-1]) < sent.index(creates(actions)[0])  # before the opening is asked for


def test_park_failed_stays_on_hold_mode_and_says_why() -> None:
    c = Call(profile=parking_profile())
    hold(c, {"expected_minutes": 40})
    assert c.feed(ParkFailed("Twilio: 404 the call is over")) == []
    assert c.state() == CallState.ATTACHED
    assert c.m.hold.active
    assert any("parking failed: Twilio: 404" in e for e in c.record.errors)
    # and a close now is the far side hanging up, not a park
    done = c.feed(SidebandClosed(code=1000))
    assert [f.reason for f in finishes(done)] == ["caller_hangup"]


def test_the_opening_replaces_the_greeting_on_a_later_leg() -> None:
    c = Call(profile=parking_profile())
    c.m.opening = "A person has just come back on the line after the hold."
    actions = c.attach()
    [create] = creates(actions)
    assert create["response"]["instructions"].startswith("A person has just come back")


def test_park_config_requires_the_tool() -> None:
    with pytest.raises(ValidationError, match="add wait_on_hold to tools"):
        AgentProfile.model_validate({"tools": ["end_call"], "hold": {"park": {}}})
