"""Tests for sip_controller.calls.features.keypad: DTMF digits through the call machine."""

from __future__ import annotations

from typing import Any

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.actions import Finish, Refer, StartTimer
from sip_controller.calls.features.keypad import DTMF_FLUSH_TIMER
from sip_controller.calls.inputs import AcceptOk, ReferOk, SidebandClosed, Start, TimerFired
from sip_controller.calls.report import report_document
from sip_controller.calls.states import GOODBYE_INSTRUCTIONS, CallState
from tests.callkit import (  # the shared machine-test kit
    Call,
    cancelled,
    creates,
    dtmf,
    end_after_goodbye,
    fc,
    finishes,
    heard,
    plain_answer,
    refers,
    response_done,
    sends,
)


def keypad_profile(forward: bool = True, actions: dict[str, Any] | None = None) -> AgentProfile:
    return AgentProfile.model_validate(
        {
            "tools": ["end_call", "transfer_call"],
            "transfer": {"targets": {"operator": "sip:operator@pbx.example.com"}},
            "dtmf": {"forward": forward, "flush_after_s": 2.0, "actions": actions or {}},
        }
    )


def keypad_message(event: dict[str, Any]) -> str:
    assert event["type"] == "conversation.item.create"
    item = event["item"]
    assert (item["type"], item["role"]) == ("message", "user")
    [part] = item["content"]
    assert part["type"] == "input_text"
    text = part["text"]
    assert isinstance(text, str)
    return text


def test_digits_gathered_until_hash() -> None:
    c = Call(profile=keypad_profile())
    c.greeted()
    for d in "123":
        assert c.feed(dtmf(d)) == [StartTimer(DTMF_FLUSH_TIMER, 2.0)]
    actions = c.feed(dtmf("#"))
    assert DTMF_FLUSH_TIMER in cancelled(actions)
    message, create = sends(actions)
    assert keypad_message(message).startswith("[keypad] The caller pressed: 123")
    assert plain_answer(create) == "keypad"
    assert c.m.keypad.digits == ""


def test_digits_flushed_by_the_timer() -> None:
    c = Call(profile=keypad_profile())
    c.greeted()
    c.feed(dtmf("4"))
    c.feed(dtmf("2"))
    actions = c.feed(TimerFired(DTMF_FLUSH_TIMER))
    message, create = sends(actions)
    assert keypad_message(message) == "[keypad] The caller pressed: 42"
    assert create["type"] == "response.create"
    assert c.feed(TimerFired(DTMF_FLUSH_TIMER)) == []  # nothing left to send


def test_mapped_digit_transfers_to_its_target() -> None:
    c = Call(profile=keypad_profile(actions={"0": {"action": "transfer", "target": "operator"}}))
    c.greeted()
    c.feed(dtmf("5"))
    actions = c.feed(dtmf("0"))
    assert DTMF_FLUSH_TIMER in cancelled(actions)
    [line] = creates(actions)
    assert "operator" in line["response"]["instructions"]
    assert c.m.keypad.digits == ""  # the pending digit is dropped
    assert refers(c.play("r_ann")) == [Refer("sip:operator@pbx.example.com")]
    c.feed(ReferOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("transferred")]


def test_mapped_digit_ends_the_call() -> None:
    c = Call(profile=keypad_profile(actions={"9": {"action": "end_call"}}))
    c.greeted()
    actions = c.feed(dtmf("9"))
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == GOODBYE_INSTRUCTIONS
    assert c.m.state == CallState.ENDING
    assert finishes(end_after_goodbye(c)) == [Finish("agent_end_call")]


def test_forward_false_ignores_unmapped_digits() -> None:
    c = Call(profile=keypad_profile(forward=False, actions={"9": {"action": "end_call"}}))
    c.greeted()
    for d in "12#":
        assert c.feed(dtmf(d)) == []
    assert c.feed(TimerFired(DTMF_FLUSH_TIMER)) == []
    assert c.m.live
    assert c.m.state == CallState.ATTACHED
    assert c.feed(dtmf("9")) != []  # mapped digits still act


def test_nothing_before_attach() -> None:
    c = Call(profile=keypad_profile(actions={"9": {"action": "end_call"}}))
    c.feed(Start())
    c.feed(AcceptOk())
    assert c.feed(dtmf("9")) == []
    assert c.feed(dtmf("1")) == []
    assert c.m.keypad.digits == ""


def test_nothing_while_ending() -> None:
    c = Call(profile=keypad_profile(actions={"0": {"action": "transfer", "target": "operator"}}))
    c.greeted()
    c.feed(dtmf("1"))
    c.feed(response_done("r1", output=[fc("c_end")]))  # end_call: the goodbye is on its way
    assert c.m.state == CallState.ENDING
    for d in "20#":
        assert c.feed(dtmf(d)) == []
    assert c.feed(TimerFired(DTMF_FLUSH_TIMER)) == []
    assert c.m.transfer.attempt is None
    assert not any(e["type"] == "conversation.item.create" and e["item"]["type"] == "message" for e in sends(c.log))


def keypad_lines(c: Call) -> list[tuple[str, str]]:
    return [(t.role, t.text) for t in c.record.transcripts if t.role == "keypad"]


def test_digits_before_an_action_digit_are_recorded_and_their_drop_is_on_record() -> None:
    c = Call(profile=keypad_profile(actions={"0": {"action": "transfer", "target": "operator"}}))
    c.greeted()
    c.feed(dtmf("1"))
    actions = c.feed(dtmf("0"))
    assert refers(c.play("r_ann")) == [Refer("sip:operator@pbx.example.com")]
    assert keypad_lines(c) == [("keypad", "1"), ("keypad", "0")]  # both digits, in the transcript
    # the "1" was not passed to the model: said so in the record, not lost silently
    assert not any(e["type"] == "conversation.item.create" for e in sends(actions))
    assert "keypad: 1 digit gathered before action digit 0 (transfer) dropped, not passed to the model" in [
        what for _, what in c.record.timeline
    ]
    document = report_document(c.record)
    assert [line["text"] for line in document["transcript"] if line["role"] == "keypad"] == ["1", "0"]


def test_forwarded_digits_are_in_the_transcript_in_order_with_speech() -> None:
    c = Call(profile=keypad_profile())
    c.greeted()
    c.feed(heard("my account number is"))
    for d in "42#":
        c.feed(dtmf(d))
    roles = [(t.role, t.text) for t in c.record.transcripts]
    assert roles[-4:] == [("caller", "my account number is"), ("keypad", "4"), ("keypad", "2"), ("keypad", "#")]
    assert [t.at_s for t in c.record.transcripts] == sorted(t.at_s for t in c.record.transcripts)


def test_digits_pressed_while_ending_or_with_forwarding_off_are_still_recorded() -> None:
    c = Call(profile=keypad_profile(forward=False, actions={"9": {"action": "end_call"}}))
    c.greeted()
    c.feed(dtmf("3"))  # not forwarded: nothing is passed to the model
    c.feed(dtmf("9"))
    c.feed(dtmf("5"))  # the goodbye is playing
    assert keypad_lines(c) == [("keypad", "3"), ("keypad", "9"), ("keypad", "5")]


def test_digits_still_gathered_when_the_call_ends_are_dropped_on_record() -> None:
    c = Call(profile=keypad_profile())
    c.greeted()
    c.feed(dtmf("7"))
    c.feed(response_done("r1", output=[fc("c_end")]))  # end_call before the pause flushed the "7"
    assert c.feed(TimerFired(DTMF_FLUSH_TIMER)) == []
    assert keypad_lines(c) == [("keypad", "7")]
    assert any(what == "keypad: 1 digit dropped, not passed to the model (the call is ending)"
               for _, what in c.record.timeline)


def test_digits_still_gathered_when_the_call_is_over_are_dropped_on_record() -> None:
    c = Call(profile=keypad_profile())
    c.greeted()
    c.feed(dtmf("8"))
    c.feed(dtmf("8"))
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("caller_hangup")]
    assert keypad_lines(c) == [("keypad", "8"), ("keypad", "8")]
    events = [what for _, what in c.record.timeline]
    assert events[-2:] == ["keypad: 2 digits dropped, not passed to the model (the call ended)", "ended: caller_hangup"]
