"""Voicemail on calls we place (#16), on the pure machine: Twilio's answering-machine verdict as an input, the
profile's outbound.voicemail policy (hang up at once, or leave a message after the beep), ended as voicemail."""

from __future__ import annotations

import pydantic
import pytest

from sip_controller.agent.profile import AgentProfile, Outbound, Voicemail
from sip_controller.calls import voicemail
from sip_controller.calls.actions import Action, CancelTimer, EndTwilioCall, Send
from sip_controller.calls.inputs import (
    AcceptOk,
    Attached,
    HangupOk,
    MachineDetection,
    SidebandClosed,
    Start,
    TimerFired,
)
from sip_controller.calls.report import report_document
from sip_controller.calls.states import GOODBYE_TIMER, CallState
from sip_controller.telephony.callbacks import answered
from tests.callkit import (
    Call,
    audio,
    barged,
    creates,
    finishes,
    hangups,
    response_created,
    response_done,
    said,
    sends,
    timers,
)


def placed(voicemail: Voicemail | None, *, detection: str = "DetectMessageEnd", greeting: str | None = None) -> Call:
    profile = AgentProfile(
        instructions="Remind {{ var:first_name }} of the appointment.", variables=("first_name",), greeting=greeting,
        outbound=Outbound.model_validate({"machine_detection": detection, "voicemail": voicemail}),
    )  # fmt: skip
    c = Call(profile=profile)
    c.record.twilio = {"id": "out_1", "direction": "outbound", "call_sid": "CA1", "answered_by": None}
    c.record.outbound = {"id": "out_1", "variables": {"first_name": "Ada"}}
    return c


def twilio_hangups(actions: list[Action]) -> int:
    return sum(1 for a in actions if isinstance(a, EndTwilioCall))


LEAVE_FIXED = Voicemail(action="leave_message", message="Hi {{ var:first_name }}, your appointment is tomorrow.")


def test_a_machine_is_hung_up_on_at_once_on_twilio_and_openai() -> None:
    c = placed(Voicemail(action="hangup"), detection="Enable")
    c.attach()
    actions = c.feed(MachineDetection("machine_start"))
    assert (twilio_hangups(actions), hangups(actions)) == (1, 1)
    assert c.state() == CallState.ENDING
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000)))[0].reason == "voicemail"
    report = report_document(c.record)
    assert (report["ended_reason"], report["answered_by"]) == ("voicemail", "machine")
    assert report["twilio"]["answered_by"] == "machine_start"
    assert any(event == "twilio: answered by machine_start" for _, event in c.record.timeline)


@pytest.mark.parametrize("verdict", ["human", "unknown"])
def test_a_person_or_an_unknown_verdict_goes_on_as_an_ordinary_call(verdict: str) -> None:
    c = placed(Voicemail(action="hangup"), detection="Enable")
    c.attach()
    assert c.feed(MachineDetection(verdict)) == []
    assert c.state() == CallState.ATTACHED
    assert report_document(c.record)["answered_by"] == verdict


def test_without_a_voicemail_policy_the_verdict_is_only_reported() -> None:
    c = placed(None)
    c.attach()
    assert c.feed(MachineDetection("machine_end_beep")) == []
    assert c.state() == CallState.ATTACHED
    assert report_document(c.record)["answered_by"] == "machine"


def test_a_fax_is_hung_up_on_even_when_a_message_would_be_left() -> None:
    c = placed(LEAVE_FIXED)
    c.attach()
    actions = c.feed(MachineDetection("fax"))
    assert (twilio_hangups(actions), hangups(actions), creates(actions)) == (1, 1, [])
    assert report_document(c.record)["answered_by"] == "fax"


def test_the_fixed_message_is_said_after_the_beep_then_the_call_hangs_up() -> None:
    c = placed(LEAVE_FIXED)
    c.attach()
    assert c.feed(MachineDetection("machine_start")) == []  # not the beep yet: nothing changes
    actions = c.feed(MachineDetection("machine_end_beep"))
    [request] = creates(actions)
    response = request["response"]
    assert response["metadata"]["sipctl"] == "voicemail"
    assert 'Say exactly this message and nothing else, then stop: "Hi Ada, your appointment is tomorrow."' in (
        response["instructions"]
    )
    assert response["tool_choice"] == "none"
    assert timers(actions)[GOODBYE_TIMER] == LEAVE_FIXED.max_message_s
    assert twilio_hangups(actions) == 0
    meta = c.tag("voicemail")
    for inp in (response_created("r_vm", meta), audio("started", "r_vm"), said("r_vm", "Hi Ada..."),
                response_done("r_vm", metadata=meta)):  # fmt: skip
        assert hangups(c.feed(inp)) == 0
    assert hangups(c.feed(audio("stopped", "r_vm"))) == 1  # after the message's audio
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000)))[0].reason == "voicemail"
    assert report_document(c.record)["transcript"] == [{"role": "assistant", "text": "Hi Ada...", "at_s": 3.5}]


def test_a_message_from_the_model_cuts_off_what_it_was_saying_to_the_greeting() -> None:
    c = placed(Voicemail(action="leave_message", message_from_model=True), greeting="Hello, this is Example Dental.")
    c.attach()
    c.feed(TimerFired(voicemail.GREETING_WAIT_TIMER))  # a long machine greeting: no verdict yet, the greeting goes
    c.feed(response_created("r_greet", c.tag("greeting")))
    c.feed(audio("started", "r_greet"))
    actions = c.feed(MachineDetection("machine_end_silence"))
    kinds = [event["type"] for event in sends(actions)]
    assert kinds == ["response.cancel", "output_audio_buffer.clear", "response.create"]
    assert "you are recording a voicemail message now" in creates(actions)[0]["response"]["instructions"]
    # the greeting's audio is cleared: the message's clock starts, and its audio is awaited as before
    assert timers(c.feed(audio("cleared", "r_greet")))[GOODBYE_TIMER] == 60.0
    c.feed(barged("r_greet", c.tag("greeting")))
    assert c.state() == CallState.ENDING
    meta = c.tag("voicemail")
    c.feed(response_created("r_vm", meta))
    c.feed(audio("started", "r_vm"))
    # a message longer than max_message_s is cut off
    actions = c.feed(TimerFired(GOODBYE_TIMER))
    assert hangups(actions) == 1


def test_a_verdict_before_the_sideband_is_acted_on_once_attached_without_a_greeting() -> None:
    c = placed(Voicemail(action="hangup"), detection="Enable", greeting="Hello!")
    c.feed(Start())
    assert c.feed(MachineDetection("machine_start")) == []
    c.feed(AcceptOk())
    actions = c.feed(Attached())
    assert (twilio_hangups(actions), hangups(actions), creates(actions)) == (1, 1, [])


def test_a_voicemail_message_talked_over_is_not_said_twice() -> None:
    c = placed(LEAVE_FIXED)
    c.attach()
    c.feed(MachineDetection("machine_end_beep"))
    meta = c.tag("voicemail")
    c.feed(response_created("r_vm", meta))
    c.feed(audio("started", "r_vm"))
    actions = c.feed(audio("cleared", "r_vm"))
    assert hangups(actions) == 1
    assert creates(actions) == []


def test_later_verdicts_change_nothing_once_acted_on() -> None:
    c = placed(LEAVE_FIXED)
    c.attach()
    c.feed(MachineDetection("machine_end_beep"))
    assert [a for a in c.feed(MachineDetection("machine_end_other")) if isinstance(a, Send)] == []
    assert len(creates(c.log)) == 1


@pytest.mark.parametrize(
    ("verdict", "category"),
    [("human", "human"), ("machine_start", "machine"), ("machine_end_beep", "machine"),
     ("machine_end_silence", "machine"), ("machine_end_other", "machine"), ("fax", "fax"), ("unknown", "unknown"),
     (None, None)],
)  # fmt: skip
def test_answered_by_in_the_reports_words(verdict: str | None, category: str | None) -> None:
    assert answered(verdict) == category


@pytest.mark.parametrize(
    ("outbound", "message"),
    [
        ({"voicemail": {"action": "hangup"}}, "voicemail needs answering-machine detection"),
        ({"machine_detection": "Enable", "voicemail": {"action": "leave_message", "message": "Hi"}},
         "leave_message needs machine_detection: DetectMessageEnd"),
        ({"machine_detection": "DetectMessageEnd", "voicemail": {"action": "leave_message"}},
         "exactly one of message"),
        ({"machine_detection": "DetectMessageEnd",
          "voicemail": {"action": "leave_message", "message": "Hi", "message_from_model": True}},
         "exactly one of message"),
        ({"machine_detection": "Enable", "voicemail": {"action": "hangup", "message": "Hi"}},
         "message and message_from_model are for action: leave_message"),
    ],
)  # fmt: skip
def test_a_voicemail_policy_that_cannot_work_is_refused(outbound: dict[str, object], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        Outbound.model_validate(outbound)


def test_the_greeting_of_a_call_placed_with_detection_waits_for_a_person() -> None:
    c = placed(Voicemail(action="hangup"), detection="Enable", greeting="Hello, this is Example Dental.")
    actions = c.attach()
    assert creates(actions) == []
    assert timers(actions)[voicemail.GREETING_WAIT_TIMER] == voicemail.GREETING_WAIT_S
    actions = c.feed(MachineDetection("human"))
    assert CancelTimer(voicemail.GREETING_WAIT_TIMER) in actions
    [greeting] = creates(actions)
    assert "Hello, this is Example Dental." in greeting["response"]["instructions"]
    assert c.feed(TimerFired(voicemail.GREETING_WAIT_TIMER)) == []  # said once


def test_a_fax_is_hung_up_on_without_a_word_whatever_the_voicemail_action() -> None:
    c = placed(LEAVE_FIXED, greeting="Hello, this is Example Dental.")
    assert creates(c.attach()) == []
    actions = c.feed(MachineDetection("fax"))
    assert (twilio_hangups(actions), hangups(actions), creates(actions)) == (1, 1, [])
    assert CancelTimer(voicemail.GREETING_WAIT_TIMER) in actions
    assert creates(c.feed(TimerFired(voicemail.GREETING_WAIT_TIMER))) == []
    c.feed(HangupOk())
    c.feed(SidebandClosed(1000))
    assert c.record.ended_reason == "voicemail"
    report = report_document(c.record)
    assert (report["answered_by"], report["ended_reason"]) == ("fax", "voicemail")
    assert creates(c.log) == []  # the model never spoke


def test_a_greeting_that_waited_is_dropped_when_the_model_already_answered_the_hello() -> None:
    c = placed(Voicemail(action="hangup"), detection="Enable", greeting="Hello, this is Example Dental.")
    c.attach()
    c.feed(response_created("r_auto"))  # the person said hello; the model answers on its own
    c.feed(audio("started", "r_auto"))
    actions = c.feed(MachineDetection("human"))
    assert creates(actions) == []
    assert any("greeting: not said" in event for _, event in c.record.timeline)


def test_no_verdict_in_time_the_greeting_is_said_anyway() -> None:
    c = placed(Voicemail(action="hangup"), detection="Enable", greeting="Hello!")
    c.attach()
    [greeting] = creates(c.feed(TimerFired(voicemail.GREETING_WAIT_TIMER)))
    assert "Hello!" in greeting["response"]["instructions"]
