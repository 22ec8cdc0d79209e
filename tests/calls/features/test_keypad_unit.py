"""The keypad on its own: a ``Keypad`` driven through a fake port, without the call machine."""

from __future__ import annotations

from typing import Any

from sip_controller.agent.profile import Dtmf
from sip_controller.calls.actions import CancelTimer, Send, StartTimer
from sip_controller.calls.features.keypad import DTMF_FLUSH_TIMER, MAX_DIGITS, Keypad
from sip_controller.calls.states import GOODBYE_INSTRUCTIONS
from tests.calls.features.fake_port import FakePort, instructions, marks, sent


def make(**config: Any) -> Keypad:
    return Keypad(Dtmf.model_validate(config))


def typed(actions: list[Any]) -> list[str]:
    return [e["item"]["content"][0]["text"] for e in sent(actions) if e.get("item", {}).get("type") == "message"]


def test_digits_are_gathered_until_hash_then_passed_to_the_model() -> None:
    k, port = make(flush_after_s=2.0), FakePort()
    assert k.on_digit(port, "4", 1.0) == [StartTimer(DTMF_FLUSH_TIMER, 2.0)]
    assert k.on_digit(port, "2", 1.5) == [StartTimer(DTMF_FLUSH_TIMER, 2.0)]
    assert k.digits == "42"
    actions = k.on_digit(port, "#", 2.0)
    assert actions[0] == CancelTimer(DTMF_FLUSH_TIMER)
    assert typed(actions) == ["[keypad] The caller pressed: 42#"]
    assert sent(actions)[-1]["type"] == "response.create"
    assert k.digits == ""
    assert marks(port) == ["keypad digit"] * 3


def test_a_pause_flushes_the_digits_once() -> None:
    k, port = make(), FakePort()
    k.on_digit(port, "7", 1.0)
    assert k.on_timer(port, "silence", 2.0) == []  # not its timer
    assert typed(k.on_timer(port, DTMF_FLUSH_TIMER, 2.5)) == ["[keypad] The caller pressed: 7"]
    assert k.on_timer(port, DTMF_FLUSH_TIMER, 3.0) == []  # nothing left


def test_only_the_latest_digits_are_kept() -> None:
    k, port = make(), FakePort()
    for _ in range(MAX_DIGITS + 10):
        k.on_digit(port, "1", 1.0)
    assert k.digits == "1" * MAX_DIGITS


def test_a_mapped_digit_transfers_through_the_call_and_drops_the_pending_digits() -> None:
    k = make(actions={"0": {"action": "transfer", "target": "operator"}})
    port = FakePort()
    k.on_digit(port, "5", 1.0)
    actions = k.on_digit(port, "0", 1.5)
    assert actions == [CancelTimer(DTMF_FLUSH_TIMER), Send({"type": "fake.transfer", "target": "operator"})]
    assert port.transfers == ["operator"]
    assert k.digits == ""
    assert port.endings == []


def test_a_mapped_digit_ends_the_call_politely() -> None:
    k, port = make(actions={"9": {"action": "end_call"}}), FakePort()
    actions = k.on_digit(port, "9", 1.0)
    assert actions[0] == CancelTimer(DTMF_FLUSH_TIMER)
    assert port.endings == [("agent_end_call", GOODBYE_INSTRUCTIONS)]
    assert instructions(actions) == [GOODBYE_INSTRUCTIONS]
    assert k.on_digit(port, "9", 2.0) == []  # the call is no longer live


def test_unmapped_digits_are_dropped_when_forwarding_is_off_and_nothing_happens_off_a_live_call() -> None:
    k, port = make(forward=False), FakePort()
    assert k.on_digit(port, "3", 1.0) == []
    assert k.digits == ""
    assert marks(port) == ["keypad digit"]
    k, port = make(), FakePort(live=False)
    assert k.on_digit(port, "3", 1.0) == []
    assert marks(port) == []
    k.digits = "12"
    assert k.on_timer(port, DTMF_FLUSH_TIMER, 2.0) == []
    assert k.digits == ""


def keypad_lines(port: FakePort) -> list[tuple[str, str, float]]:
    return [(t.role, t.text, t.at_s) for t in port.record.transcripts]


def test_every_digit_is_a_keypad_line_of_the_transcript_live_or_not() -> None:
    k, port = make(actions={"0": {"action": "end_call"}}), FakePort()
    k.on_digit(port, "1", 1.0)
    k.on_digit(port, "0", 1.25)
    k.on_digit(port, "2", 1.5)  # the call is ending now: nothing happens, but the digit is on record
    assert keypad_lines(port) == [("keypad", "1", 1.0), ("keypad", "0", 1.25), ("keypad", "2", 1.5)]
    k, port = make(forward=False), FakePort()
    k.on_digit(port, "3", 2.0)
    assert keypad_lines(port) == [("keypad", "3", 2.0)]


def test_pending_digits_dropped_by_an_action_digit_are_marked_and_never_typed() -> None:
    k, port = make(actions={"0": {"action": "transfer", "target": "operator"}}), FakePort()
    k.on_digit(port, "1", 1.0)
    k.on_digit(port, "2", 1.1)
    actions = k.on_digit(port, "0", 1.5)
    assert typed(actions) == []
    dropped = "keypad: 2 digits gathered before action digit 0 (transfer) dropped, not passed to the model"
    assert marks(port)[-1] == dropped
    k, port = make(actions={"9": {"action": "end_call"}}), FakePort()
    k.on_digit(port, "9", 1.0)
    assert marks(port) == ["keypad digit"]  # nothing was pending: nothing dropped


def test_digits_left_when_the_call_stops_being_live_are_marked_dropped() -> None:
    k, port = make(), FakePort()
    k.on_digit(port, "5", 1.0)
    port.live = False
    assert k.on_timer(port, DTMF_FLUSH_TIMER, 3.0) == []
    assert marks(port)[-1] == "keypad: 1 digit dropped, not passed to the model (the call is ending)"
    assert k.digits == ""


def test_settle_drops_what_is_left_on_record_once() -> None:
    k, port = make(), FakePort()
    k.settle(port, 1.0)
    assert marks(port) == []  # nothing gathered: nothing to say
    k.on_digit(port, "4", 2.0)
    k.settle(port, 3.0)
    k.settle(port, 3.5)
    assert marks(port) == ["keypad digit", "keypad: 1 digit dropped, not passed to the model (the call ended)"]
