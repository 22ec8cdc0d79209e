"""How a call ends (issue 14: items 1, 2, 8 and 10): the goodbye matched on its tag, the goodbye fallback, the
report right after a hangup when the sideband is already gone, and hostile tool arguments."""

from __future__ import annotations

import json

import pytest

from sip_controller.agent.profile import AgentProfile, HttpTool, Transfer
from sip_controller.calls.actions import Finish, RunTool, StartTimer
from sip_controller.calls.inputs import AcceptOk, Attached, AttachFailed, HangupOk, SidebandClosed, Start, TimerFired
from sip_controller.calls.report import CallRecord, ToolCallRecord, TranscriptEntry, report_document
from sip_controller.calls.states import CLOSE_WAIT_TIMER, MAX_RECONNECTS, CallState
from tests.callkit import RECEIVED, Call, fc, finishes, hangups, outputs, response_done, sends

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
