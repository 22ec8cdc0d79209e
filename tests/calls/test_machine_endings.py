"""How a call ends (issue 14: items 1, 2, 8 and 10): the goodbye matched on its tag, the goodbye fallback, the
report right after a hangup when the sideband is already gone, and hostile tool arguments."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sip_controller.agent.profile import AgentProfile, HttpTool, Transfer
from sip_controller.calls.actions import Finish, Refer, RunTool, StartTimer
from sip_controller.calls.features.watchdog import MAX_END_TIMER, MAX_WRAP_TIMER
from sip_controller.calls.inputs import AcceptOk, Attached, AttachFailed, HangupOk, SidebandClosed, Start, TimerFired
from sip_controller.calls.report import CallRecord, ToolCallRecord, TranscriptEntry, report_document
from sip_controller.calls.states import (
    CLOSE_WAIT_TIMER,
    GOODBYE_QUEUE_MAX_S,
    GOODBYE_TIMER,
    MAX_RECONNECTS,
    CallState,
)
from tests.callkit import (
    RECEIVED,
    Call,
    audio,
    creates,
    fc,
    finishes,
    hangups,
    outputs,
    response_created,
    response_done,
    said,
    sends,
    timers,
)

# ---- item 8: the report follows the hangup at once when the sideband is already gone ------------------------


def test_hangup_after_the_sideband_dropped_finishes_at_once() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert hangups(c.feed(SidebandClosed(code=1006))) == 1  # lost while ending: the owed hangup goes out
    actions = c.feed(HangupOk())
    assert finishes(actions) == [Finish("agent_end_call")]
    assert StartTimer(CLOSE_WAIT_TIMER, 3.0) not in actions


def test_hangup_without_any_sideband_finishes_at_once() -> None:
    c = Call()
    c.feed(Start())
    c.feed(AcceptOk())
    assert hangups(c.feed(AttachFailed(gone=False, detail="handshake timed out"))) == 1
    assert finishes(c.feed(HangupOk())) == [Finish("session_error")]


def test_hangup_after_the_reconnects_ran_out_finishes_at_once() -> None:
    c = Call()
    c.greeted()
    for _ in range(MAX_RECONNECTS):
        c.feed(SidebandClosed(code=1011))
        c.feed(Attached())
    assert hangups(c.feed(SidebandClosed(code=1011))) == 1
    assert finishes(c.feed(HangupOk())) == [Finish("session_error")]


def test_hangup_with_the_sideband_open_still_waits_for_its_close() -> None:
    c = Call(close_wait_s=1.25)
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(TimerFired("goodbye"))
    assert c.feed(HangupOk()) == [StartTimer(CLOSE_WAIT_TIMER, 1.25)]
    assert finishes(c.feed(SidebandClosed(code=1000))) == [Finish("agent_end_call")]


# ---- item 2: deeply nested or huge tool arguments ------------------------------------------------------------

DEEP = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"reason": ' + "[" * 5000 + "]" * 5000 + "}"


def test_deeply_nested_end_call_arguments_still_end_the_call() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(response_done("r_tool", output=[fc("call_1", arguments=DEEP_OBJECT)]))
    assert c.state() == CallState.ENDING
    assert any(e["type"] == "response.create" for e in sends(actions))  # the goodbye
    (record,) = c.record.tool_calls
    assert record.outcome == "invalid_arguments"
    assert record.result == "ending the call"
    assert "nested" in record.detail
    document = json.dumps(report_document(c.record))
    assert json.loads(document)["tool_calls"][0]["arguments"] == DEEP_OBJECT  # kept as the raw string


@pytest.mark.parametrize("raw", [DEEP, DEEP_OBJECT, '{"target": "' + "x" * 70_000 + '"}'])
def test_deeply_nested_or_huge_transfer_arguments_are_an_invalid_arguments_error(raw: str) -> None:
    profile = AgentProfile(tools=("end_call", "transfer_call"), transfer=Transfer(targets={"sales": "sip:s@x"}))
    c = Call(profile=profile)
    c.greeted()
    actions = c.feed(response_done("r_tool", output=[fc("call_1", name="transfer_call", arguments=raw)]))
    assert c.state() == CallState.ATTACHED  # the call goes on; the model is told what was wrong
    assert "error" in outputs(actions)["call_1"]
    assert c.record.tool_calls[0].outcome == "invalid_arguments"
    json.dumps(report_document(c.record))


def test_deeply_nested_operator_tool_arguments_are_an_invalid_arguments_error() -> None:
    tool = HttpTool(type="http", name="lookup", description="d", url="https://tools.example/lookup",
                    parameters={"type": "object", "properties": {"q": {}}})
    c = Call(profile=AgentProfile(tools=("end_call", tool)))
    c.greeted()
    actions = c.feed(response_done("r_tool", output=[fc("call_1", name="lookup", arguments='{"q": ' + DEEP + "}")]))
    assert not any(isinstance(a, RunTool) for a in actions)
    assert "error" in outputs(actions)["call_1"]
    assert c.record.tool_calls[0].outcome == "invalid_arguments"


def test_report_building_never_raises_on_a_hostile_record() -> None:
    record = CallRecord(call_id="rtc_h", profile="default", received_at=RECEIVED)
    for i, raw in enumerate([DEEP, DEEP_OBJECT, "{not json", "", "\ud800", '"' + "\\u0000" * 10 + '"', "1e999999"]):
        record.tool_calls.append(ToolCallRecord(f"c{i}", "end_call", raw, 1.0, "invalid_arguments", raw, raw))
    record.transcripts.append(TranscriptEntry("caller", DEEP, 1.0))
    record.errors.append(DEEP)
    document = report_document(record)
    json.dumps(document)
    assert [t["arguments"] for t in document["tool_calls"]][:3] == [DEEP, DEEP_OBJECT, "{not json"]
    json.dumps(record.to_dict())
    json.dumps(record.summary())


# ---- item 1: the goodbye is matched on its tag, never on order ------------------------------------------------


def tag_of(event: dict[str, Any]) -> dict[str, Any]:
    metadata = event["response"]["metadata"]
    assert isinstance(metadata, dict)
    return metadata


def test_a_response_created_in_between_is_not_taken_for_the_goodbye() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(response_done("r_tool", output=[fc("call_1")]))
    (goodbye,) = creates(actions)
    meta = tag_of(goodbye)
    assert meta["sipctl"] == "goodbye"
    # server VAD (or a second end_call) makes a response before the goodbye's: no tag, so not the goodbye
    assert hangups(c.feed(response_created("r_vad"))) == 0
    assert hangups(c.feed(response_done("r_vad"))) == 0  # no audio, yet not the goodbye: no hangup
    assert hangups(c.feed(response_created("r_other", metadata={"sipctl": "goodbye", "n": "999"}))) == 0
    assert hangups(c.feed(response_done("r_other", metadata={"sipctl": "goodbye", "n": "999"}))) == 0
    # the goodbye itself: hang up only once its own audio has stopped
    for inp in (response_created("r_bye", meta), audio("started", "r_bye"), said("r_bye", "Bye!"),
                response_done("r_bye", metadata=meta)):
        assert hangups(c.feed(inp)) == 0
    assert hangups(c.feed(audio("stopped", "r_bye"))) == 1


def test_every_response_the_controller_asks_for_is_tagged_uniquely() -> None:
    tool = HttpTool(type="http", name="lookup", description="d", url="https://tools.example/lookup", filler_after_s=1)
    profile = AgentProfile(greeting="Hi.", tools=("end_call", "transfer_call", tool),
                           transfer=Transfer(targets={"sales": "sip:s@x"}))
    c = Call(profile=profile)
    c.attach()
    c.feed(response_done("r_1", output=[fc("c_nope", name="nope")]))  # unknown tool: an error, then an answer
    c.feed(response_done("r_2", output=[fc("c_look", name="lookup", arguments="{}")]))
    c.feed(TimerFired("filler:c_look"))
    c.feed(TimerFired(MAX_WRAP_TIMER))
    c.feed(response_done("r_3", output=[fc("c_tr", name="transfer_call", arguments='{"target": "sales"}')]))
    requests = creates(c.log)  # a plain answer to the conversation is tagged too
    purposes = [tag_of(e)["sipctl"] for e in requests]
    assert purposes == ["greeting", "tool_result", "filler", "wrap_up", "transfer"]
    for event in requests:
        assert all(isinstance(value, str) for value in tag_of(event).values())  # metadata values are strings
    assert len({tag_of(e)["n"] for e in requests}) == len(requests)


def test_the_handoff_line_is_matched_on_its_tag() -> None:
    c = Call(profile=AgentProfile(tools=("end_call", "transfer_call"), transfer=Transfer(targets={"sales": "sip:s@x"})))
    c.greeted()
    actions = c.feed(response_done("r_t", output=[fc("c_tr", name="transfer_call", arguments='{"target": "sales"}')]))
    (line,) = creates(actions)
    c.feed(response_created("r_vad"))
    c.feed(audio("started", "r_vad"))
    assert c.feed(audio("stopped", "r_vad")) == []  # not the handoff line: no refer yet
    c.feed(response_created("r_line", tag_of(line)))
    c.feed(audio("started", "r_line"))
    assert any(isinstance(a, Refer) for a in c.feed(audio("stopped", "r_line")))


# ---- item 10: one rule for the goodbye fallback ---------------------------------------------------------------


def test_goodbye_whose_audio_never_starts_hangs_up_after_goodbye_timeout_s() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert timers(actions)[GOODBYE_TIMER] == c.profile.goodbye_timeout_s  # nothing plays: it could start now
    c.feed(response_created("r_bye", tag_of(creates(actions)[0])))
    assert hangups(c.feed(TimerFired(GOODBYE_TIMER))) == 1


def test_goodbye_queued_behind_audio_is_timed_from_when_that_audio_stops() -> None:
    c = Call()
    c.greeted()
    c.feed(TimerFired(MAX_WRAP_TIMER))
    c.feed(response_created("r_wrap"))
    c.feed(audio("started", "r_wrap"))  # the wrap-up line is still playing when the call has to end
    actions = c.feed(TimerFired(MAX_END_TIMER))
    (goodbye,) = creates(actions)
    assert timers(actions) == {GOODBYE_TIMER: GOODBYE_QUEUE_MAX_S}  # only a bound while the audio ahead plays
    c.feed(response_created("r_bye", tag_of(goodbye)))
    assert timers(c.feed(audio("stopped", "r_wrap"))) == {GOODBYE_TIMER: c.profile.goodbye_timeout_s}
    assert timers(c.feed(audio("started", "r_bye"))) == {GOODBYE_TIMER: c.profile.goodbye_timeout_s}
    assert hangups(c.feed(audio("stopped", "r_bye"))) == 1
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("max_duration")]
