"""Hold mode on its own: a ``Hold`` driven through a fake port, without the call machine."""

from __future__ import annotations

from typing import Any

from sip_controller.agent.profile import Hold as HoldConfig
from sip_controller.agent.profile import TurnDetection
from sip_controller.calls.actions import CancelTimer, StartTimer
from sip_controller.calls.features.hold import (
    CLASSIFIER_INSTRUCTIONS,
    HOLD_GIVE_UP,
    HOLD_MAX_TIMER,
    PURPOSE,
    Hold,
)
from tests.calls.features.fake_port import FakePort, instructions, marks, response, sent, tool_call

#: a hold check's tag (``calls/tags.py``) as OpenAI echoes it on the check's response
TAG = {"sipctl": PURPOSE, "n": "7"}

#: a server VAD that carries a semantic-VAD field too: the hold patch sends only what server VAD takes
VAD = TurnDetection(type="server_vad", idle_timeout_ms=6000, eagerness="high", silence_duration_ms=400)


def make(turn_detection: TurnDetection | None = VAD, **config: Any) -> Hold:
    return Hold(HoldConfig.model_validate(config), turn_detection)


def on_hold(h: Hold, port: FakePort, at: float = 10.0) -> None:
    h.on_tool(port, tool_call("wait_on_hold"), at)
    assert h.active


def test_going_on_hold_stops_automatic_answers_and_pauses_the_silence_watchdog() -> None:
    h, port = make(max_hold_s=600), FakePort()
    assert not h.active
    record = tool_call("wait_on_hold")
    actions = h.on_tool(port, record, 10.0)
    assert h.active
    assert record.result == "on hold"
    assert actions[1] == StartTimer(HOLD_MAX_TIMER, 600.0)
    assert port.pauses == [True]
    [update] = port.updates
    assert update.what == "hold mode"
    assert update.then == []
    turn_detection = update.patch["audio"]["input"]["turn_detection"]
    assert turn_detection["create_response"] is False
    assert turn_detection["type"] == "server_vad"
    assert "eagerness" not in turn_detection
    assert turn_detection["interrupt_response"] is True  # the caller may still cut a line off
    # no re-prompt by OpenAI into the hold music (its idle timeout is an answer of the agent's own)
    assert (turn_detection["idle_timeout_ms"], turn_detection["silence_duration_ms"]) == (None, 400)
    events = sent(actions)
    assert [e["type"] for e in events] == [
        "conversation.item.create",
        "fake.pause_silence",
        "session.update",
    ]
    assert "stay silent" in events[0]["item"]["output"]
    assert marks(port) == ["hold mode on (detect: classifier)"]

    again = tool_call("wait_on_hold", "call_2")
    assert sent(h.on_tool(port, again, 11.0))[0]["item"]["output"] == '{"status": "already on hold; stay silent"}'
    assert again.result == "already on hold"
    assert port.pauses == [True]


def test_the_classifier_hears_music_then_a_person_and_the_hold_ends() -> None:
    h, port = make(), FakePort()
    on_hold(h, port, 10.0)
    [check] = sent(h.on_caller_transcript(port, "please hold, your call is important", "item_music", 20.0))
    assert check["type"] == "response.create"
    assert check["response"]["conversation"] == "none"
    assert check["response"]["instructions"] == CLASSIFIER_INSTRUCTIONS
    tag = {"sipctl": PURPOSE, "n": check["event_id"].rsplit("_", 1)[1]}
    assert check["response"]["metadata"] == {**tag, "item_id": "item_music"}
    h.on_response_created(response("r_check1", metadata=TAG))
    assert h.is_classifier_response("r_check1")
    assert not h.is_classifier_response("r_other")
    assert h.on_response_done(port, response("r_check1", text="no", metadata=TAG), 21.0) == []
    assert h.active

    h.on_caller_transcript(port, "Hi, this is Dana from billing", "item_person", 30.0)
    done = response("r_check2", text="Yes.", metadata={**TAG, "item_id": "item_person"})
    actions = h.on_response_done(port, done, 31.0)
    assert actions is not None
    assert not h.active
    assert actions[0] == CancelTimer(HOLD_MAX_TIMER)
    assert port.pauses == [True, False]
    deleted = [e["item_id"] for e in sent(actions) if e["type"] == "conversation.item.delete"]
    assert deleted == ["item_music"]  # the person's first words stay
    update = port.updates[-1]
    assert update.what == "end of hold"
    assert update.patch["audio"]["input"]["turn_detection"]["create_response"] is True
    assert [e["type"] for e in sent(update.then)] == ["response.create"]
    assert port.record.hold_s == 21.0
    assert marks(port)[-1] == "hold mode off: a person is back (classifier)"


def test_phrases_end_the_hold_without_asking_a_classifier() -> None:
    h, port = make(detect="phrases"), FakePort()
    on_hold(h, port, 0.0)
    assert h.on_caller_transcript(port, "Your call is important to us", "item_1", 5.0) == []
    actions = h.on_caller_transcript(port, "Thanks for holding, how can I help?", "item_2", 65.0)
    assert not h.active
    assert [e["item_id"] for e in sent(actions) if e["type"] == "conversation.item.delete"] == ["item_1"]
    assert port.record.hold_s == 65.0
    assert marks(port)[-1] == "hold mode off: a resume phrase was heard"


def test_without_turn_detection_the_model_is_simply_asked_to_answer() -> None:
    h, port = make(turn_detection=None, detect="phrases"), FakePort()
    actions = h.on_tool(port, tool_call("wait_on_hold"), 0.0)
    assert port.updates == []
    assert [e["type"] for e in sent(actions)] == ["conversation.item.create", "fake.pause_silence"]
    actions = h.on_caller_transcript(port, "are you there?", None, 3.0)
    assert sent(actions)[-1]["type"] == "response.create"
    assert sent(actions)[-1]["response"]["metadata"]["sipctl"] == "answer"
    assert port.updates == []


def test_too_long_on_hold_ends_the_call() -> None:
    h, port = make(), FakePort()
    assert h.on_timer(port, HOLD_MAX_TIMER, 1.0) == []  # not on hold
    on_hold(h, port)
    actions = h.on_timer(port, HOLD_MAX_TIMER, 2410.0)
    assert port.endings == [("max_duration", HOLD_GIVE_UP)]
    assert instructions(actions) == [HOLD_GIVE_UP]
    assert h.on_timer(port, HOLD_MAX_TIMER, 2411.0) == []  # no longer live


def test_settle_adds_the_time_so_far_once() -> None:
    h, port = make(), FakePort()
    h.settle(port, 5.0)
    assert port.record.hold_s == 0.0
    on_hold(h, port, 10.0)
    h.settle(port, 25.5)
    h.settle(port, 30.0)
    assert port.record.hold_s == 20.0


def test_responses_that_are_not_checks_are_left_to_the_call() -> None:
    h, port = make(), FakePort()
    assert h.on_response_done(port, response("r_1", text="yes"), 1.0) is None
    on_hold(h, port)
    assert h.on_response_done(port, response("r_2", text="yes"), 11.0) is None
    assert h.active
    # a check answered after the call stopped being live changes nothing
    port.live = False
    assert h.on_response_done(port, response("r_3", text="yes", metadata=TAG), 12.0) == []
    assert h.active
    assert h.on_caller_transcript(port, "hello?", "item_x", 13.0) == []


def test_muted_the_hold_keeps_the_mute_and_its_end_asks_for_no_answer() -> None:
    h, port = make(detect="phrases"), FakePort(muted=True)
    on_hold(h, port, 0.0)
    td = port.updates[-1].patch["audio"]["input"]["turn_detection"]
    assert (td["create_response"], td["interrupt_response"]) == (False, False)
    h.on_caller_transcript(port, "Thanks for holding, how can I help?", "item_2", 65.0)
    assert not h.active
    end = port.updates[-1]
    assert end.what == "end of hold"
    td = end.patch["audio"]["input"]["turn_detection"]
    assert (td["create_response"], td["interrupt_response"], td["idle_timeout_ms"]) == (False, False, None)
    assert end.then == []  # no answer of its own: the operator has the call
    assert marks(port)[-1] == "hold mode off: a resume phrase was heard; muted: the agent waits for the operator"


def test_unmuted_the_end_of_the_hold_restores_the_profile_s_turn_detection() -> None:
    h, port = make(detect="phrases"), FakePort()
    on_hold(h, port, 0.0)
    h.on_caller_transcript(port, "Thanks for holding, how can I help?", "item_2", 65.0)
    restored = port.updates[-1].patch["audio"]["input"]["turn_detection"]
    assert restored == VAD.model_dump(exclude_none=True, exclude={"eagerness"})
