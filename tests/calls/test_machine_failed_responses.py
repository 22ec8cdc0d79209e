"""Responses that end ``failed`` or ``incomplete`` (issue 15): every one is on the report with OpenAI's
``status_details``; a line the controller asked for (greeting, goodbye) that fails is asked for once more, and a
second failure ends the call as ``model_error`` instead of leaving the caller in silence."""

from __future__ import annotations

from typing import get_args

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.actions import Finish, Hangup
from sip_controller.calls.inputs import HangupOk, SidebandClosed
from sip_controller.calls.lines import MAX_FAILED_IN_A_ROW
from sip_controller.calls.report import MAX_FAILED_RESPONSES_KEPT, report_document
from sip_controller.calls.states import GOODBYE_INSTRUCTIONS, GOODBYE_TIMER, CallState, EndedReason
from tests.callkit import (
    Call,
    audio,
    creates,
    failed,
    fc,
    finishes,
    hangups,
    response_created,
    response_done,
    said,
    timers,
    usage,
)


def _greeting_requests(c: Call) -> list[str]:
    return [e["response"]["instructions"] for e in creates(c.log) if e["response"]["metadata"]["sipctl"] == "greeting"]


def test_model_error_is_an_ended_reason() -> None:
    assert "model_error" in get_args(EndedReason)


# ---- the greeting ---------------------------------------------------------------------------------------------


def test_a_failed_greeting_is_asked_for_once_more() -> None:
    c = Call()
    c.attach()
    first = c.tag("greeting")
    c.feed(response_created("r_g1", first))
    actions = c.feed(failed("r_g1", first))
    (again,) = creates(actions)
    assert again["response"]["metadata"]["sipctl"] == "greeting"
    assert again["response"]["metadata"] != first  # a new request, recognised by its own tag
    assert len(set(_greeting_requests(c))) == 1  # the same line
    assert c.state() == CallState.ATTACHED
    # the second try plays: the call goes on, one failure on the report
    assert c.play("r_g2", "Hello! Thanks for calling.") == []
    assert c.state() == CallState.ATTACHED
    (entry,) = report_document(c.record)["failed_responses"]
    assert entry == {
        "id": "r_g1",
        "status": "failed",
        "reason": None,
        "error": {"type": "server_error", "code": "server_error", "message": "The model failed (server_error)."},
        "purpose": "greeting",
        "at_s": entry["at_s"],
    }


def test_a_greeting_that_fails_twice_ends_the_call_as_model_error() -> None:
    c = Call()
    c.attach()
    c.feed(failed("r_g1", c.tag("greeting"), code="insufficient_quota"))
    actions = c.feed(failed("r_g2", c.tag("greeting"), code="insufficient_quota"))
    assert creates(actions) == []  # no third try: the model cannot speak
    assert Hangup() in actions
    assert c.state() == CallState.ENDING
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("model_error")]
    document = report_document(c.record)
    assert document["ended_reason"] == "model_error"
    assert [f["error"]["code"] for f in document["failed_responses"]] == ["insufficient_quota"] * 2
    assert any("insufficient_quota" in e for e in document["errors"])


def test_an_incomplete_greeting_the_caller_heard_is_not_asked_again() -> None:
    c = Call()
    c.attach()
    tag = c.tag("greeting")
    c.feed(response_created("r_g1", tag))
    c.feed(audio("started", "r_g1"))
    c.feed(said("r_g1", "Hello! Thanks for"))
    actions = c.feed(response_done("r_g1", "incomplete", metadata=tag, details={"reason": "max_output_tokens"}))
    assert creates(actions) == []
    (entry,) = report_document(c.record)["failed_responses"]
    assert (entry["status"], entry["reason"], entry["error"]) == ("incomplete", "max_output_tokens", None)


def test_an_incomplete_greeting_without_audio_is_asked_again() -> None:
    c = Call()
    c.attach()
    tag = c.tag("greeting")
    actions = c.feed(response_done("r_g1", "incomplete", metadata=tag, details={"reason": "content_filter"}))
    assert [e["response"]["metadata"]["sipctl"] for e in creates(actions)] == ["greeting"]


# ---- the goodbye ----------------------------------------------------------------------------------------------


def _ending(c: Call) -> None:
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert c.state() == CallState.ENDING


def test_a_failed_goodbye_is_asked_for_once_more_and_then_heard() -> None:
    c = Call()
    _ending(c)
    first = c.tag("goodbye")
    c.feed(response_created("r_bye1", first))
    actions = c.feed(failed("r_bye1", first))
    assert hangups(actions) == 0
    (again,) = creates(actions)
    assert again["response"]["instructions"] == GOODBYE_INSTRUCTIONS
    assert again["response"]["metadata"]["sipctl"] == "goodbye"
    assert timers(actions) == {GOODBYE_TIMER: c.profile.goodbye_timeout_s}  # its own fallback, from now
    assert c.play("r_bye2", "Goodbye!")[-1] == Hangup()
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("agent_end_call")]


def test_a_goodbye_that_fails_twice_hangs_up_as_model_error() -> None:
    c = Call()
    _ending(c)
    c.feed(failed("r_bye1", c.tag("goodbye")))
    actions = c.feed(failed("r_bye2", c.tag("goodbye")))
    assert hangups(actions) == 1
    assert creates(actions) == []
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("model_error")]
    assert any("agent_end_call" in what for _, what in c.record.timeline)  # what the call was ending for


# ---- the model's own answers ----------------------------------------------------------------------------------


def test_the_models_own_answers_failing_again_and_again_end_the_call() -> None:
    c = Call()
    c.greeted()
    for i in range(MAX_FAILED_IN_A_ROW - 1):
        assert c.feed(failed(f"r_{i}")) == []
    actions = c.feed(failed("r_last"))
    assert Hangup() in actions
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("model_error")]
    assert len(c.record.failed_responses) == MAX_FAILED_IN_A_ROW


def test_a_completed_answer_in_between_resets_the_count() -> None:
    c = Call()
    c.greeted()
    for i in range(3 * MAX_FAILED_IN_A_ROW):
        c.feed(failed(f"r_f{i}"))
        if i % (MAX_FAILED_IN_A_ROW - 1) == MAX_FAILED_IN_A_ROW - 2:
            c.feed(response_done(f"r_ok{i}", usage=usage(text_in=10)))
    assert hangups(c.log) == 0
    assert c.state() == CallState.ATTACHED


def test_failed_responses_on_the_report_are_bounded() -> None:
    c = Call(profile=AgentProfile(greeting=None))
    c.attach()
    for i in range(MAX_FAILED_RESPONSES_KEPT + 20):
        c.feed(failed(f"r_f{i}"))
        c.feed(response_done(f"r_ok{i}"))
    document = report_document(c.record)
    assert len(document["failed_responses"]) == MAX_FAILED_RESPONSES_KEPT
    assert document["failed_responses"][0]["id"] == "r_f0"
    assert document["failed_responses_total"] == MAX_FAILED_RESPONSES_KEPT + 20
