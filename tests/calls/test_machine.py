"""Tests for sip_controller.calls.machine: the pure per-call state machine (inputs in, actions out)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.agent import session
from sip_controller.calls.actions import (
    Accept,
    Action,
    Attach,
    CancelTimer,
    Finish,
    HangingUp,
    Hangup,
    Reattach,
    Reject,
    Send,
    StartTimer,
)
from sip_controller.calls.features.watchdog import MAX_WRAP_TIMER
from sip_controller.calls.inputs import (
    AcceptFailed,
    AcceptOk,
    Attached,
    AttachFailed,
    HangupFailed,
    HangupOk,
    Input,
    Shutdown,
    SidebandClosed,
    SidebandEvent,
    Start,
    TimerFired,
)
from sip_controller.calls.report import report_document
from sip_controller.calls.states import (
    BENIGN_ERROR_CODES,
    CLOSE_WAIT_TIMER,
    GOODBYE_AGAIN_TIMER,
    GOODBYE_INSTRUCTIONS,
    GOODBYE_TIMER,
    HANGUP_RETRY_TIMER,
    MAX_RECONNECTS,
    SESSION_ACK_TIMER,
    SESSION_LIMIT_TIMER,
    SHUTDOWN_INSTRUCTIONS,
    CallState,
    EndedReason,
)
from sip_controller.config import AgentProfile, TurnDetection
from sip_controller.realtime import events as ev
from sip_controller.realtime.events import parse_server_event
from tests.callkit import (  # the shared machine-test kit
    Call,
    audio,
    barged,
    failed,
    fc,
    finishes,
    function_output,
    hangups,
    heard,
    plain_answer,
    response_created,
    response_done,
    said,
    sb,
    sends,
    usage,
)

ENDED_REASONS = set(get_args(EndedReason))
FINISH_TAIL: list[Action] = []  # Finish alone: the supervisor cancels every timer of a finished call


# ---- builders ----------------------------------------------------------------------------------------------


def error(code: str | None, *, event_id: str | None = None, message: str = "boom") -> SidebandEvent:
    err: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
    if event_id is not None:
        err["event_id"] = event_id
    return sb({"type": "error", "error": err})


def is_goodbye_request(event: dict[str, Any], instructions: str = GOODBYE_INSTRUCTIONS) -> bool:
    response = event.get("response") or {}
    return bool(
        event["type"] == "response.create"
        and response.get("instructions") == instructions
        and response.get("tool_choice") == "none"
    )


# ---- accept and attach -------------------------------------------------------------------------------------


def test_start_accepts_with_the_profile_body() -> None:
    profile = AgentProfile(voice="cedar", codec="pcma")
    c = Call(profile=profile)
    assert c.feed(Start()) == [Accept(session.accept_body(profile))]
    assert c.state() == CallState.ACCEPTING
    assert c.record.state == "accepting"
    assert c.feed(AcceptOk()) == [Attach()]
    assert c.state() == CallState.ACCEPTED
    assert c.record.state == "accepted"


def test_attached_requests_the_greeting() -> None:
    c = Call(profile=AgentProfile(greeting="Hi, Example Dental."))
    actions = c.attach()
    assert c.state() == CallState.ATTACHED
    (event,) = sends(actions)
    # the max-duration watchdog, the guard before OpenAI's session limit (from the accept, 0.5 s earlier), greeting
    assert actions == [StartTimer(MAX_WRAP_TIMER, 570.0), StartTimer(SESSION_LIMIT_TIMER, 3584.5), Send(event)]
    assert event["type"] == "response.create"
    assert event["event_id"]
    assert event["response"]["instructions"].endswith('"Hi, Example Dental."')
    assert event["response"]["tool_choice"] == "none"


def test_attached_without_greeting_waits_for_the_caller() -> None:
    c = Call(profile=AgentProfile(greeting=None))
    assert c.attach() == [StartTimer(MAX_WRAP_TIMER, 570.0), StartTimer(SESSION_LIMIT_TIMER, 3584.5)]
    assert c.state() == CallState.ATTACHED


def test_attached_sends_deferred_vad_tuning_and_greets_only_once_it_is_confirmed() -> None:
    profile = AgentProfile(turn_detection=TurnDetection(silence_duration_ms=700, threshold=0.6))
    c = Call(profile=profile)
    actions = c.attach()
    (update,) = sends(actions)
    assert StartTimer(SESSION_ACK_TIMER, profile.session_ack_timeout_s) in actions
    assert update["type"] == "session.update"
    assert update["session"]["type"] == "realtime"
    td = update["session"]["audio"]["input"]["turn_detection"]
    assert (td["silence_duration_ms"], td["threshold"]) == (700, 0.6)
    assert td["create_response"] is True  # the accept body held automatic answers until now
    assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert update["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert c.feed(sb({"type": "session.created", "session": {}})) == []
    after = c.feed(sb({"type": "session.updated", "session": {}}))
    assert after[0] == CancelTimer(SESSION_ACK_TIMER)
    (greeting,) = sends(after)
    assert greeting["type"] == "response.create"
    assert update["event_id"] != greeting["event_id"]


def test_caller_turn_held_during_the_update_is_answered_once_it_applies() -> None:
    profile = AgentProfile(greeting=None, turn_detection=TurnDetection(silence_duration_ms=700))
    c = Call(profile=profile)
    c.attach()
    assert c.feed(sb({"type": "input_audio_buffer.speech_started"})) == []
    assert c.feed(sb({"type": "input_audio_buffer.speech_stopped"})) == []
    (answer,) = sends(c.feed(sb({"type": "session.updated", "session": {}})))
    assert plain_answer(answer) == "held_turn"  # a plain turn: the model answers what the caller said


def test_unconfirmed_update_ends_the_call_as_a_session_error() -> None:
    c = Call(profile=AgentProfile(turn_detection=TurnDetection(threshold=0.7)))
    c.attach()
    assert hangups(c.feed(TimerFired(SESSION_ACK_TIMER))) == 1
    assert any("not confirmed" in e for e in c.record.errors)
    c.feed(HangupOk())
    assert c.feed(SidebandClosed(code=1000))[-1] == Finish("session_error")


# ---- the happy path ----------------------------------------------------------------------------------------


def test_happy_path_agent_ends_the_call() -> None:
    c = Call()
    assert c.feed(Start()) == [Accept(session.accept_body(AgentProfile()))]
    assert c.feed(AcceptOk()) == [Attach()]
    (greeting,) = sends(c.feed(Attached()))
    assert greeting["type"] == "response.create"

    # the greeting plays
    assert c.feed(response_created("r_greet")) == []
    assert c.feed(audio("started", "r_greet")) == []
    assert c.feed(said("r_greet", "  Hello! Thanks for calling.  ")) == []
    assert c.feed(response_done("r_greet", usage=usage(text_in=100, audio_out=50))) == []
    assert c.feed(audio("stopped", "r_greet")) == []
    assert c.feed(heard("That's all, thanks. Bye!")) == []

    # the model calls end_call without speaking first
    assert c.feed(response_created("r_tool")) == []
    actions = c.feed(response_done("r_tool", output=[fc("call_1")], usage=usage(text_in=200, text_out=10)))
    out, goodbye = sends(actions)
    assert function_output(out) == ("call_1", {"status": "ending the call"})
    assert is_goodbye_request(goodbye)
    # nothing plays: the goodbye could start now, so goodbye_timeout_s counts from here (and again once it plays)
    assert actions[-1] == StartTimer(GOODBYE_TIMER, AgentProfile().goodbye_timeout_s)
    assert CancelTimer(MAX_WRAP_TIMER) in actions  # ending: the watchdogs stand down
    assert hangups(actions) == 0
    assert c.state() == CallState.ENDING

    # the goodbye plays; no hangup until its audio has stopped
    assert c.feed(response_created("r_bye", c.tag("goodbye"))) == []
    assert c.feed(audio("started", "r_bye")) == [StartTimer(GOODBYE_TIMER, 5.0)]
    assert c.feed(said("r_bye", "Goodbye, have a nice day!")) == []
    assert c.feed(response_done("r_bye", usage=usage(text_in=300, audio_out=40))) == []
    assert c.feed(audio("stopped", "r_bye")) == [CancelTimer(GOODBYE_TIMER), Hangup()]

    assert c.feed(HangupOk()) == [StartTimer(CLOSE_WAIT_TIMER, 3.0)]
    assert c.feed(SidebandClosed(code=1000)) == [*FINISH_TAIL, Finish("agent_end_call")]

    assert c.m.finished
    assert c.m.ended_reason == "agent_end_call"
    assert c.state() == CallState.ENDED
    assert c.record.state == "ended"
    assert c.record.ended_reason == "agent_end_call"
    assert c.record.duration_s is not None
    assert c.record.duration_s > 0
    assert [(t.role, t.text) for t in c.record.transcripts] == [
        ("assistant", "Hello! Thanks for calling."),
        ("caller", "That's all, thanks. Bye!"),
        ("assistant", "Goodbye, have a nice day!"),
    ]
    assert [(t.call_id, t.name, t.outcome) for t in c.record.tool_calls] == [("call_1", "end_call", "ok")]
    assert c.record.tool_calls[0].arguments == '{"reason": "caller said goodbye"}'
    assert c.record.usage.responses == 3
    assert c.record.usage.input_text_tokens == 600
    assert c.record.usage.output_audio_tokens == 90
    assert c.record.usage.output_text_tokens == 10
    assert c.record.errors == []
    assert hangups(c.log) == 1
    assert len(finishes(c.log)) == 1
    # after Finish nothing else happens
    assert c.feed(audio("stopped", "r_bye")) == []


def test_no_hangup_before_the_goodbye_audio_stops() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert c.feed(response_created("r_bye", c.tag("goodbye"))) == []
    assert c.feed(audio("started", "r_bye")) == [StartTimer(GOODBYE_TIMER, 5.0)]  # now bounded by its own length
    # stopped of other responses (the greeting again, the tool response, an unknown one, none)
    assert c.feed(audio("stopped", "r_greet")) == []
    assert c.feed(audio("stopped", "r_tool")) == []
    assert c.feed(audio("stopped", "r_other")) == []
    assert c.feed(audio("stopped", None)) == []
    # the goodbye finished generating but is still playing
    assert c.feed(response_done("r_bye")) == []
    assert c.feed(sb({"type": "input_audio_buffer.speech_started"})) == []
    assert hangups(c.log) == 0
    assert c.feed(audio("stopped", "r_bye")) == [CancelTimer(GOODBYE_TIMER), Hangup()]


def test_stopped_before_response_done_hangs_up_once() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(response_created("r_bye", c.tag("goodbye")))
    c.feed(audio("started", "r_bye"))
    assert c.feed(audio("stopped", "r_bye")) == [CancelTimer(GOODBYE_TIMER), Hangup()]
    assert c.feed(response_done("r_bye")) == []
    assert c.feed(TimerFired(GOODBYE_TIMER)) == []
    assert hangups(c.log) == 1


def test_goodbye_cleared_by_barge_in_gives_the_call_back_to_the_caller() -> None:
    """The caller talked over the agent's goodbye: the call is not over (test_machine_barge_in.py has the rules)."""
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(response_created("r_bye", c.tag("goodbye")))
    c.feed(audio("started", "r_bye"))
    actions = c.feed(audio("cleared", "r_bye"))
    assert hangups(actions) == 0
    assert CancelTimer(GOODBYE_TIMER) in actions
    assert c.state() == CallState.ATTACHED


def test_goodbye_timer_fallback_hangs_up() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(response_created("r_bye", c.tag("goodbye")))
    c.feed(audio("started", "r_bye"))
    # output_audio_buffer.stopped never arrives
    assert c.feed(TimerFired(GOODBYE_TIMER)) == [CancelTimer(GOODBYE_TIMER), Hangup()]
    assert c.feed(audio("stopped", "r_bye")) == []
    assert c.feed(HangupOk()) == [StartTimer(CLOSE_WAIT_TIMER, 3.0)]
    assert c.feed(SidebandClosed(code=1000)) == [*FINISH_TAIL, Finish("agent_end_call")]
    assert hangups(c.log) == 1


def test_goodbye_timer_fallback_when_response_created_never_arrives() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert c.feed(TimerFired(GOODBYE_TIMER)) == [CancelTimer(GOODBYE_TIMER), Hangup()]


@pytest.mark.parametrize("details", [None, {"reason": "client_cancelled"}])
def test_goodbye_response_cancelled_without_a_barge_in_hangs_up(details: dict[str, Any] | None) -> None:
    """(A failed goodbye is asked for again, and the caller talking over it is a barge-in: see
    test_machine_failed_responses.py and test_machine_barge_in.py.)"""
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(response_created("r_bye", c.tag("goodbye")))
    actions = c.feed(response_done("r_bye", status="cancelled", details=details))
    assert actions == [CancelTimer(GOODBYE_TIMER), Hangup()]


def test_goodbye_response_without_any_audio_hangs_up() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(response_created("r_bye", c.tag("goodbye")))
    assert c.feed(response_done("r_bye")) == [CancelTimer(GOODBYE_TIMER), Hangup()]


def test_end_call_after_speaking_waits_for_that_audio_not_a_new_goodbye() -> None:
    c = Call()
    c.greeted()
    c.feed(response_created("r_tool"))
    c.feed(audio("started", "r_tool"))
    c.feed(said("r_tool", "Goodbye then!"))
    actions = c.feed(response_done("r_tool", output=[fc("call_1")]))
    (out,) = sends(actions)
    assert function_output(out)[0] == "call_1"
    assert StartTimer(GOODBYE_TIMER, 5.0) in actions
    assert hangups(actions) == 0
    assert c.feed(audio("stopped", "r_tool")) == [CancelTimer(GOODBYE_TIMER), Hangup()]


def test_end_call_after_speaking_whose_audio_already_stopped_hangs_up_at_once() -> None:
    c = Call()
    c.greeted()
    c.feed(response_created("r_tool"))
    c.feed(audio("started", "r_tool"))
    c.feed(said("r_tool", "Bye!"))
    c.feed(audio("stopped", "r_tool"))
    actions = c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert not any(is_goodbye_request(e) for e in sends(actions))
    assert hangups(actions) == 1
    assert actions[-1] == Hangup()


# ---- tools -------------------------------------------------------------------------------------------------


def test_duplicated_response_done_runs_the_tool_once() -> None:
    c = Call()
    c.greeted()
    first = c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert len(sends(first)) == 2
    assert c.feed(response_done("r_tool", output=[fc("call_1")])) == []
    assert len(c.record.tool_calls) == 1
    outputs = [e for e in sends(c.log) if e["type"] == "conversation.item.create"]
    assert len(outputs) == 1
    assert sum(1 for e in sends(c.log) if is_goodbye_request(e)) == 1


def test_duplicated_response_done_counts_usage_once() -> None:
    """A redelivered response.done (same response id) is the same response: it is billed once."""
    c = Call()
    c.attach()
    c.feed(response_done("r_1", usage=usage(text_in=100, audio_out=50)))
    c.feed(response_done("r_1", usage=usage(text_in=100, audio_out=50)))
    assert c.record.usage.responses == 1
    assert c.record.usage.input_text_tokens == 100
    assert c.record.usage.output_audio_tokens == 50


@pytest.mark.parametrize("status", ["cancelled", "failed", "incomplete"])
def test_tool_call_in_an_unfinished_response_is_not_executed(status: str) -> None:
    c = Call()
    c.greeted()
    # function_call_arguments.done arrives even for an interrupted response
    assert (
        c.feed(
            sb(
                {
                    "type": "response.function_call_arguments.done",
                    "call_id": "call_1",
                    "name": "end_call",
                    "arguments": "{}",
                    "response_id": "r_tool",
                }
            )
        )
        == []
    )
    assert c.feed(response_done("r_tool", status=status, output=[fc("call_1")])) == []
    assert c.state() == CallState.ATTACHED
    assert [(t.call_id, t.outcome) for t in c.record.tool_calls] == [("call_1", "interrupted")]
    assert status in c.record.tool_calls[0].detail
    # the call goes on: a later completed end_call ends it
    actions = c.feed(response_done("r_tool2", output=[fc("call_2")]))
    assert any(is_goodbye_request(e) for e in sends(actions))


def test_unknown_tool_gets_an_error_output_and_a_new_response() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(response_done("r_tool", output=[fc("call_9", name="web_search", arguments='{"q": "x"}')]))
    assert len(actions) == 2
    out, follow_up = sends(actions)
    call_id, payload = function_output(out)
    assert call_id == "call_9"
    assert "web_search" in payload["error"]
    assert "end_call" in payload["error"]
    assert follow_up["type"] == "response.create"
    assert "response" not in follow_up or "tool_choice" not in follow_up["response"]
    assert c.state() == CallState.ATTACHED
    assert [(t.name, t.outcome) for t in c.record.tool_calls] == [("web_search", "unknown_tool")]
    assert hangups(c.log) == 0


def test_end_call_not_enabled_for_the_profile_is_unknown() -> None:
    c = Call(profile=AgentProfile(tools=()))
    c.greeted()
    actions = c.feed(response_done("r_tool", output=[fc("call_1")]))
    out, follow_up = sends(actions)
    assert "error" in function_output(out)[1]
    assert follow_up["type"] == "response.create"
    assert c.state() == CallState.ATTACHED


def test_end_call_with_bad_arguments_still_ends_the_call() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(response_done("r_tool", output=[fc("call_1", arguments="{not json")]))
    assert any(is_goodbye_request(e) for e in sends(actions))
    # recorded as what happened: the arguments were invalid, and the call was ended anyway
    assert c.record.tool_calls[0].outcome == "invalid_arguments"
    assert c.record.tool_calls[0].result == "ending the call"
    assert "not valid JSON" in c.record.tool_calls[0].detail


def test_non_function_items_and_items_without_call_id_are_ignored() -> None:
    c = Call()
    c.greeted()
    output = [
        {"type": "message", "id": "m1", "role": "assistant"},
        {"type": "function_call", "id": "f1", "name": "end_call", "arguments": "{}"},
    ]
    assert c.feed(response_done("r_x", output=output)) == []
    assert c.record.tool_calls == []


def test_event_ids_are_unique() -> None:
    c = Call(profile=AgentProfile(turn_detection=TurnDetection(threshold=0.4)))
    c.attach()
    c.feed(sb({"type": "session.updated", "session": {}}))
    c.feed(response_done("r_1", output=[fc("c1", name="nope")]))
    c.feed(response_done("r_2", output=[fc("c2")]))
    ids = [e["event_id"] for e in sends(c.log)]
    assert len(ids) == 6  # session.update, greeting, 2 x function_call_output, follow-up, goodbye
    assert len(set(ids)) == len(ids)


# ---- caller hangup and failures ----------------------------------------------------------------------------


def test_caller_hangup() -> None:
    c = Call()
    c.greeted()
    c.feed(heard("wait what"))
    assert c.feed(SidebandClosed(code=1000, reason="call ended")) == [*FINISH_TAIL, Finish("caller_hangup")]
    assert c.record.ended_reason == "caller_hangup"
    assert c.state() == CallState.ENDED
    assert hangups(c.log) == 0
    assert c.record.transcripts[-1].text == "wait what"  # recorded as it arrived


def test_caller_hangup_before_attach() -> None:
    c = Call()
    c.feed(Start())
    c.feed(AcceptOk())
    assert finishes(c.feed(SidebandClosed(code=None))) == [Finish("caller_hangup")]


def test_accept_failed_because_the_call_is_gone() -> None:
    c = Call()
    c.feed(Start())
    actions = c.feed(AcceptFailed(gone=True, detail="accept: HTTP 404 call_id_not_found"))
    assert actions == [*FINISH_TAIL, Finish("accept_failed")]  # nothing left to reject
    assert c.state() == CallState.FAILED
    assert c.record.state == "failed"
    assert c.record.ended_reason == "accept_failed"
    assert any("call_id_not_found" in e for e in c.record.errors)
    assert hangups(c.log) == 0


@pytest.mark.parametrize("status", [503, 480])
def test_an_accept_given_up_rejects_the_call_with_the_configured_status(status: int) -> None:
    c = Call()
    c.m.accept_give_up_status = status
    c.feed(Start())
    why = "the ring budget (8s) ran out while retrying"
    actions = c.feed(AcceptFailed(gone=False, detail="accept: HTTP 500 server_error", why=why))
    assert actions == [Reject(status), *FINISH_TAIL, Finish("accept_failed")]  # the caller stops ringing
    assert c.state() == CallState.FAILED
    assert c.record.ended_reason == "accept_failed"
    assert hangups(c.log) == 0
    assert any("HTTP 500" in e and why in e for e in c.record.errors)
    assert (0.5, f"accept given up: {why}; rejecting the call with SIP {status}") in c.record.timeline


def test_the_accept_give_up_status_defaults_to_503() -> None:
    c = Call()
    c.feed(Start())
    assert c.feed(AcceptFailed(gone=False, detail="accept: HTTP 401"))[0] == Reject(503)


def test_attach_failed_call_gone_is_caller_hangup() -> None:
    c = Call()
    c.feed(Start())
    c.feed(AcceptOk())
    actions = c.feed(AttachFailed(gone=True, detail="404"))
    assert actions == [*FINISH_TAIL, Finish("caller_hangup")]
    assert hangups(c.log) == 0
    assert c.record.errors


def test_attach_failed_otherwise_hangs_up_then_session_error() -> None:
    c = Call()
    c.feed(Start())
    c.feed(AcceptOk())
    assert c.feed(AttachFailed(gone=False, detail="handshake timed out")) == [CancelTimer(GOODBYE_TIMER), Hangup()]
    assert c.state() == CallState.ENDING
    # no sideband to close: the call ends with the hangup's answer, without waiting for a close
    assert c.feed(HangupOk()) == [*FINISH_TAIL, Finish("session_error")]
    assert c.record.ended_reason == "session_error"


def test_error_before_any_completed_response_is_fatal() -> None:
    c = Call()
    c.attach()
    actions = c.feed(error("invalid_value", message="Invalid value: 'audio/pcmx'"))
    assert actions == [CancelTimer(GOODBYE_TIMER), Hangup()]
    assert c.state() == CallState.ENDING
    assert any("invalid_value" in e and "audio/pcmx" in e for e in c.record.errors)
    assert c.feed(HangupOk()) == [StartTimer(CLOSE_WAIT_TIMER, 3.0)]
    assert c.feed(SidebandClosed(code=1000)) == [*FINISH_TAIL, Finish("session_error")]


def test_error_for_our_session_update_is_fatal_even_later() -> None:
    c = Call(profile=AgentProfile(turn_detection=TurnDetection(threshold=0.4)))
    update = sends(c.attach())[0]
    c.feed(response_done("r_greet"))
    assert c.feed(error("unknown_parameter", event_id=update["event_id"])) == [CancelTimer(GOODBYE_TIMER), Hangup()]


def test_session_expired_is_fatal() -> None:
    c = Call()
    c.greeted()
    assert hangups(c.feed(error("session_expired"))) == 1


@pytest.mark.parametrize("code", sorted(BENIGN_ERROR_CODES))
def test_benign_error_codes_never_end_the_call(code: str) -> None:
    c = Call()
    c.attach()
    assert c.feed(error(code)) == []
    c.feed(response_done("r_greet"))
    assert c.feed(error(code)) == []
    assert c.state() == CallState.ATTACHED
    assert len(c.record.errors) == 2


def test_ordinary_error_after_the_early_window_is_not_fatal() -> None:
    c = Call()
    c.greeted()
    c.now += AgentProfile().early_error_window_s + 1
    assert c.feed(error("invalid_value", event_id="evt_from_someone_else")) == []
    assert c.state() == CallState.ATTACHED
    assert len(c.record.errors) == 1


def test_a_hangup_of_a_call_already_gone_counts_as_done() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(TimerFired(GOODBYE_TIMER))
    assert c.feed(HangupFailed(gone=True, detail="hangup: HTTP 404")) == [*FINISH_TAIL, Finish("agent_end_call")]
    assert c.record.errors == []


def test_a_failed_hangup_is_tried_again_until_the_call_really_ends() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(TimerFired(GOODBYE_TIMER))
    assert c.feed(HangupFailed(gone=False, detail="hangup: HTTP 500")) == [
        HangingUp(0.25, 1), StartTimer(HANGUP_RETRY_TIMER, 0.25)
    ]
    assert not c.m.finished  # still supervising: the call may well be up
    assert hangups(c.feed(TimerFired(HANGUP_RETRY_TIMER))) == 1
    assert c.feed(HangupOk()) == [StartTimer(CLOSE_WAIT_TIMER, 3.0)]
    assert finishes(c.feed(SidebandClosed(code=1000))) == [Finish("agent_end_call")]


def test_close_wait_timer_finishes_when_the_sideband_stays_open() -> None:
    c = Call(close_wait_s=1.25)
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(TimerFired(GOODBYE_TIMER))
    assert c.feed(HangupOk()) == [StartTimer(CLOSE_WAIT_TIMER, 1.25)]
    assert c.feed(TimerFired(CLOSE_WAIT_TIMER)) == [*FINISH_TAIL, Finish("agent_end_call")]


def test_stray_timers_while_attached_do_nothing() -> None:
    c = Call()
    c.greeted()
    assert c.feed(TimerFired(GOODBYE_TIMER)) == []
    assert c.feed(TimerFired(CLOSE_WAIT_TIMER)) == []
    assert c.feed(TimerFired("something_else")) == []
    assert c.state() == CallState.ATTACHED


# ---- shutdown ----------------------------------------------------------------------------------------------


def test_shutdown_while_attached_says_goodbye_then_hangs_up() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(Shutdown())
    (goodbye,) = sends(actions)
    assert is_goodbye_request(goodbye, SHUTDOWN_INSTRUCTIONS)
    assert actions[-1] == StartTimer(GOODBYE_TIMER, 5.0)  # nothing else plays: the goodbye could start now
    assert c.state() == CallState.ENDING
    assert c.feed(Shutdown()) == []  # a second drain request changes nothing
    assert c.feed(response_created("r_bye", c.tag("goodbye"))) == []
    assert c.feed(audio("started", "r_bye")) == [StartTimer(GOODBYE_TIMER, 5.0)]
    assert c.feed(response_done("r_bye")) == []
    assert c.feed(audio("stopped", "r_bye")) == [CancelTimer(GOODBYE_TIMER), Hangup()]
    assert c.feed(HangupOk()) == [StartTimer(CLOSE_WAIT_TIMER, 3.0)]
    assert c.feed(SidebandClosed(code=1000)) == [*FINISH_TAIL, Finish("shutdown")]
    assert c.record.ended_reason == "shutdown"


def test_shutdown_while_ending_keeps_the_original_reason() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert c.feed(Shutdown()) == []
    c.feed(TimerFired(GOODBYE_TIMER))
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(code=1000))) == [Finish("agent_end_call")]


def test_shutdown_before_start_finishes() -> None:
    c = Call()
    assert c.feed(Shutdown()) == [*FINISH_TAIL, Finish("shutdown")]
    assert c.feed(Start()) == []


def drive(c: Call, first: Input, limit: int = 40) -> None:
    """Play a cooperative OpenAI side without audio: attach works, hangups succeed, timers fire in order."""
    pending: list[Input] = [first]
    timers: list[str] = []
    for _ in range(limit):
        if not pending and timers:
            pending.append(TimerFired(timers.pop(0)))
        if not pending or c.m.finished:
            return
        for action in c.feed(pending.pop(0)):
            match action:
                case Accept():
                    pending.append(AcceptOk())
                case Attach():
                    pending.append(Attached())
                case Hangup():
                    pending.append(HangupOk())
                case StartTimer(name=name):
                    timers.append(name)
                case CancelTimer(name=name):
                    timers = [t for t in timers if t != name]
                case _:
                    pass


def test_shutdown_while_accepting_does_not_abandon_the_call() -> None:
    """Finishing while /accept is in flight cancels the request; if OpenAI accepted it, nobody hangs up."""
    c = Call()
    c.feed(Start())
    assert finishes(c.feed(Shutdown())) == []
    drive(c, AcceptOk())
    assert c.m.finished
    assert hangups(c.log) == 1
    assert c.record.ended_reason == "shutdown"


def test_shutdown_between_accept_and_attach_is_not_forgotten() -> None:
    c = Call()
    c.feed(Start())
    c.feed(AcceptOk())
    c.feed(Shutdown())
    drive(c, Attached())
    assert c.m.finished, "the drain request was lost: the call carries on after attaching"
    assert hangups(c.log) == 1
    assert c.record.ended_reason == "shutdown"


# ---- bookkeeping -------------------------------------------------------------------------------------------


def test_usage_is_summed_over_all_responses() -> None:
    c = Call()
    c.attach()
    c.feed(response_done("r_1", usage=usage(text_in=10, audio_in=20, text_out=1, audio_out=100)))
    c.feed(response_done("r_2", status="cancelled", usage=usage(text_in=5, audio_out=3)))
    c.feed(response_done("r_3"))  # no usage reported
    c.feed(
        response_done(
            "r_4",
            usage={
                "input_token_details": {
                    "text_tokens": 7,
                    "audio_tokens": 9,
                    "cached_tokens_details": {"text_tokens": 4, "audio_tokens": 8},
                },
            },
        )
    )
    u = c.record.usage
    assert u.responses == 3
    assert (u.input_text_tokens, u.input_audio_tokens) == (22, 29)
    assert (u.cached_text_tokens, u.cached_audio_tokens) == (4, 8)
    assert (u.output_text_tokens, u.output_audio_tokens) == (1, 103)


def test_transcripts_are_stripped_and_blank_ones_dropped() -> None:
    c = Call()
    c.attach()
    c.feed(heard("   "))
    c.feed(said("r_1", ""))
    c.feed(heard("  hello there \n"))
    c.feed(sb({"type": "conversation.item.input_audio_transcription.failed", "item_id": "i"}))
    assert [(t.role, t.text) for t in c.record.transcripts] == [("caller", "hello there")]
    assert any("transcription failed" in what for _, what in c.record.timeline)


def test_unknown_and_malformed_events_are_counted_and_ignored() -> None:
    c = Call()
    c.attach()
    assert c.feed(sb({"type": "response.audio.delta", "delta": "AAAA"})) == []  # beta: unknown in GA
    assert c.feed(sb({"type": "response.output_audio.delta", "delta": "AAAA"})) == []  # GA, passive: not counted
    assert c.feed(SidebandEvent(parse_server_event("not json"))) == []
    assert c.feed(sb({"type": "response.done"})) == []  # malformed: no response object
    for data in (
        {"type": "session.created", "session": {}},
        {"type": "input_audio_buffer.speech_started"},
    ):
        assert c.feed(sb(data)) == []
    assert c.record.ignored_events == 3
    assert c.state() == CallState.ATTACHED


def test_rate_limits_keep_the_latest_value_of_each_limit() -> None:
    c = Call()
    c.greeted()

    def limits(requests: int, tokens: int) -> SidebandEvent:
        entries = [
            {"name": "requests", "limit": 1000, "remaining": requests, "reset_seconds": 0.06},
            {"name": "tokens", "limit": 40000, "remaining": tokens, "reset_seconds": 2.5},
            {"limit": 1, "remaining": 0},  # no name: nothing to keep it under
            {"name": "Not A Name!", "remaining": 0},
        ]
        return sb({"type": "rate_limits.updated", "event_id": "e", "rate_limits": entries})

    assert c.feed(limits(999, 38000)) == []
    assert c.feed(limits(998, 31000)) == []
    document = report_document(c.record)["rate_limits"]
    assert document == {
        "requests": {"limit": 1000, "remaining": 998, "reset_seconds": 0.06, "at_s": document["requests"]["at_s"]},
        "tokens": {"limit": 40000, "remaining": 31000, "reset_seconds": 2.5, "at_s": document["tokens"]["at_s"]},
    }
    assert c.record.ignored_events == 0  # a typed event, not an unknown one


def test_timeline_uses_time_relative_to_start() -> None:
    c = Call()
    c.feed(Start())
    c.feed(AcceptOk())
    assert c.record.timeline[0] == (0.0, "accepting")
    assert c.record.timeline[1] == (0.5, "accepted")


ALL_INPUTS: list[Input] = [
    Start(),
    AcceptOk(),
    AcceptFailed(gone=False, detail="x"),
    Attached(),
    AttachFailed(gone=False, detail="x"),
    response_done("r_9", output=[fc("call_9")], usage=usage(text_in=5)),
    error("invalid_value"),
    heard("late words"),
    SidebandClosed(code=1000),
    TimerFired(GOODBYE_TIMER),
    TimerFired(CLOSE_WAIT_TIMER),
    HangupOk(),
    HangupFailed(gone=False, detail="x"),
    Shutdown(),
]


@pytest.mark.parametrize("late", ALL_INPUTS, ids=lambda i: type(i).__name__)
def test_inputs_after_finish_yield_no_actions(late: Input) -> None:
    c = Call()
    c.greeted()
    c.feed(SidebandClosed(code=1000))
    before = (c.record.ended_reason, c.record.duration_s, len(c.record.transcripts), c.record.usage.responses)
    assert c.feed(late) == []
    after = (c.record.ended_reason, c.record.duration_s, len(c.record.transcripts), c.record.usage.responses)
    assert after == before
    assert c.state() == CallState.ENDED


# ---- properties over random input sequences -----------------------------------------------------------------

_rids = st.sampled_from(["r_1", "r_2", "r_3"])
_sideband = st.one_of(
    _rids.map(response_created),
    st.builds(
        lambda rid, status, calls, n: response_done(
            rid, status, [fc(cid, name) for cid, name in calls], usage(text_in=n, audio_out=n)
        ),
        _rids,
        st.sampled_from(["completed", "completed", "cancelled", "failed", "incomplete"]),
        st.lists(st.tuples(st.sampled_from(["c_1", "c_2", "c_3"]), st.sampled_from(["end_call", "nope"])), max_size=2),
        st.integers(0, 50),
    ),
    st.builds(audio, st.sampled_from(["started", "stopped", "cleared"]), _rids | st.none()),
    st.builds(barged, _rids),
    st.builds(failed, _rids),
    st.builds(said, _rids, st.sampled_from(["", "Bye!", "Sure."])),
    st.sampled_from(["", "hello", "bye"]).map(heard),
    st.builds(
        error,
        st.sampled_from([None, "invalid_value", "session_expired", *sorted(BENIGN_ERROR_CODES)]),
        event_id=st.none() | st.sampled_from(["ctl_session_1", "ctl_response_2", "x"]),
    ),
    st.sampled_from(
        [
            sb({"type": "input_audio_buffer.speech_started"}),
            sb({"type": "input_audio_buffer.speech_stopped"}),
            sb({"type": "rate_limits.updated"}),
            SidebandEvent(parse_server_event(b"\xff")),
        ]
    ),
)
_after_attach: st.SearchStrategy[Input] = st.one_of(
    _sideband,
    _sideband,
    _sideband,
    st.sampled_from(
        [
            TimerFired(GOODBYE_TIMER),
            TimerFired(GOODBYE_AGAIN_TIMER),
            TimerFired(CLOSE_WAIT_TIMER),
            TimerFired("other"),
        ]
    ),
    st.just(HangupOk()),
    st.builds(HangupFailed, gone=st.booleans(), detail=st.just("x")),
    st.just(Shutdown()),
)

#: inputs that may legitimately trigger a hangup
_HANGUP_TRIGGERS = (TimerFired, AttachFailed, Shutdown)


def _may_trigger_hangup(inp: Input) -> bool:
    if isinstance(inp, _HANGUP_TRIGGERS):
        return True
    if isinstance(inp, SidebandClosed):
        return inp.code != 1000  # a dropped socket while ending: the owed hangup goes out at once
    if isinstance(inp, SidebandEvent):
        return inp.event.type in {
            "error",
            "response.done",
            "output_audio_buffer.stopped",
            "output_audio_buffer.cleared",
        }
    return False


@settings(max_examples=150, deadline=None)
@given(
    profile=st.sampled_from(
        [AgentProfile(), AgentProfile(greeting=None), AgentProfile(turn_detection=TurnDetection(threshold=0.5))]
    ),
    greeted=st.booleans(),
    inputs=st.lists(_after_attach, max_size=25),
    terminal=st.sampled_from(
        [
            # a hangup that failed before is confirmed by OpenAI's answer only: the 404 ends it
            [SidebandClosed(code=1000), HangupFailed(True, "gone")],
            # a dropped socket: reconnect (or hang up, when ending); the call turns out to be gone
            [SidebandClosed(code=None), AttachFailed(gone=True, detail="404"), HangupFailed(True, "gone")],
            [HangupFailed(True, "gone")],
        ]
    ),
)
def test_every_call_ends_exactly_once(
    profile: AgentProfile, greeted: bool, inputs: list[Input], terminal: list[Input]
) -> None:
    c = Call(profile=profile)
    if greeted:
        c.greeted()
    else:
        c.attach()
    finished_at: int | None = None
    output_call_ids: list[str] = []
    for i, inp in enumerate([*inputs, *terminal]):
        actions = c.feed(inp)
        if finished_at is not None:
            assert actions == [], "no actions after Finish"
        if hangups(actions):
            assert _may_trigger_hangup(inp), f"hangup on {inp!r}"
        if finishes(actions):
            assert actions[-1] == finishes(actions)[0], "Finish is the last action"
            finished_at = i
        output_call_ids += [e["item"]["call_id"] for e in sends(actions) if e["type"] == "conversation.item.create"]
    (finish,) = finishes(c.log)
    assert finish.reason in ENDED_REASONS
    assert c.m.finished
    assert c.m.ended_reason == finish.reason == c.record.ended_reason
    assert c.state() in (CallState.ENDED, CallState.FAILED)
    assert c.record.duration_s is not None
    assert hangups(c.log) <= 1 + sum(isinstance(i, HangupFailed) and not i.gone for i in [*inputs, *terminal])
    assert len(output_call_ids) == len(set(output_call_ids)), "each tool call answered once"
    assert len(c.record.tool_calls) == len({t.call_id for t in c.record.tool_calls})


_any_input: st.SearchStrategy[Input] = st.one_of(
    _after_attach,
    st.sampled_from(
        [
            Start(),
            AcceptOk(),
            Attached(),
            AcceptFailed(gone=True, detail="x"),
            AttachFailed(gone=True, detail="x"),
            AttachFailed(gone=False, detail="x"),
        ]
    ),
)


@settings(max_examples=150, deadline=None)
@given(inputs=st.lists(_any_input, max_size=30))
def test_never_finishes_twice_on_any_input_order(inputs: list[Input]) -> None:
    c = Call()
    for inp in [*inputs, SidebandClosed(code=1000), HangupFailed(True, "gone")]:  # the 404: an unconfirmed hangup
        c.feed(inp)
    (finish,) = finishes(c.log)
    assert finish.reason in ENDED_REASONS
    assert c.log[-1] == finish
    assert c.record.ended_reason == finish.reason


_goodbye_noise: st.SearchStrategy[Input] = st.one_of(
    st.builds(audio, st.sampled_from(["started", "stopped", "cleared"]), st.sampled_from(["r_greet", "r_x"])),
    st.builds(audio, st.just("started"), st.just("r_bye")),
    st.builds(said, st.sampled_from(["r_x", "r_bye"]), st.just("Goodbye!")),
    st.builds(response_done, st.sampled_from(["r_x", "r_greet"]), st.sampled_from(["completed", "cancelled"])),
    st.sampled_from(["hello?", "bye"]).map(heard),
    st.just(sb({"type": "input_audio_buffer.speech_started"})),
    st.just(sb({"type": "input_audio_buffer.speech_stopped"})),
    st.just(response_done("r_tool", output=[fc("call_1")])),  # a duplicate of the end_call response
)
_goodbye_end: st.SearchStrategy[Input] = st.builds(audio, st.just("stopped"), st.just("r_bye"))


@settings(max_examples=150, deadline=None)
@given(
    before=st.lists(_goodbye_noise, max_size=8),
    after=st.lists(_goodbye_noise | _goodbye_end, max_size=8),
)
def test_hangup_waits_for_the_goodbye_audio(before: list[Input], after: list[Input]) -> None:
    """After end_call, only the goodbye's own audio end may trigger the hangup (timers aside). (Its audio cleared
    is the caller talking over it, which gives the call back to them: test_machine_barge_in.py.)"""
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    c.feed(response_created("r_bye", c.tag("goodbye")))
    c.feed(audio("started", "r_bye"))
    for inp in [*before, said("r_bye", "Goodbye!"), response_done("r_bye"), *after]:
        actions = c.feed(inp)
        if hangups(actions):
            assert isinstance(inp, SidebandEvent)
            assert isinstance(inp.event, ev.OutputAudioBuffer), f"hung up on {inp!r}"
            assert inp.event.type == "output_audio_buffer.stopped"
            assert inp.event.response_id == "r_bye"
    c.feed(audio("stopped", "r_bye"))
    assert hangups(c.log) == 1


# ---- reliability: dropped sockets and refused bodies --------------------------------------------------------


def test_an_abnormal_close_reconnects_and_a_restored_sideband_does_not_greet_again() -> None:
    c = Call()
    c.greeted()
    assert c.feed(SidebandClosed(code=1006)) == [Reattach()]
    assert c.state() == CallState.ATTACHED
    assert c.feed(Attached()) == []
    assert any("sideband restored" in what for _, what in c.record.timeline)
    assert finishes(c.feed(SidebandClosed(code=1000))) == [Finish("caller_hangup")]


def test_reconnects_are_bounded_then_the_call_is_hung_up_through_rest() -> None:
    c = Call()
    c.greeted()
    for _ in range(MAX_RECONNECTS):
        assert c.feed(SidebandClosed(code=1011)) == [Reattach()]
        c.feed(Attached())
    assert hangups(c.feed(SidebandClosed(code=1011))) == 1
    assert finishes(c.feed(HangupOk())) == [Finish("session_error")]


def test_a_reattach_that_finds_the_call_gone_ends_it_as_a_caller_hangup() -> None:
    c = Call()
    c.greeted()
    c.feed(SidebandClosed(code=1006))
    assert finishes(c.feed(AttachFailed(gone=True, detail="404"))) == [Finish("caller_hangup")]
    assert hangups(c.log) == 0


def test_a_dropped_socket_during_the_goodbye_sends_the_owed_hangup_at_once() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert hangups(c.feed(SidebandClosed(code=1006))) == 1
    assert finishes(c.feed(HangupOk())) == [Finish("agent_end_call")]


def test_a_refused_accept_body_rejects_the_call_before_finishing() -> None:
    c = Call()
    c.feed(Start())
    actions = c.feed(AcceptFailed(gone=False, detail="400 unknown_parameter", invalid=True))
    assert actions[0] == Reject(603)
    assert actions[-1] == Finish("accept_failed")
    assert c.state() == CallState.FAILED


def test_a_goodbye_that_cannot_be_created_hangs_up_at_once() -> None:
    c = Call()
    c.greeted()
    c.now += 60  # past the early-error window: only the goodbye's own failure matters here
    (_, goodbye) = sends(c.feed(response_done("r_tool", output=[fc("call_1")])))
    error = {"type": "invalid_request_error", "code": "invalid_value", "message": "bad",
             "event_id": goodbye["event_id"]}
    assert hangups(c.feed(sb({"type": "error", "error": error}))) == 1


def test_a_goodbye_refused_while_a_response_is_active_is_asked_again_when_it_is_done() -> None:
    c = Call()
    c.greeted()
    c.now += 60
    c.feed(response_created("r_answer"))  # an answer is being made when the call has to end
    c.feed(audio("started", "r_answer"))
    (goodbye,) = sends(c.feed(Shutdown()))
    error = {"type": "invalid_request_error", "code": "conversation_already_has_active_response", "message": "busy",
             "event_id": goodbye["event_id"]}
    assert c.feed(sb({"type": "error", "error": error})) == []  # no hangup over the answer
    (again,) = sends(c.feed(response_done("r_answer")))
    assert again["type"] == "response.create"
    assert again["event_id"] != goodbye["event_id"]
    assert c.feed(response_created("r_bye", c.tag("goodbye"))) == []
    c.feed(audio("stopped", "r_answer"))
    c.feed(audio("started", "r_bye"))
    assert hangups(c.feed(audio("stopped", "r_bye"))) == 1
