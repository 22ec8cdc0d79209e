"""Tests for sip_controller.calls.features.control: live call control (#17) through the pure call machine: say
(now / next), context, mute and unmute, from an operator or a tool's answer; refusals while ending, and ordering
with a goodbye or a transfer. ``test_control_unit.py`` drives ``LiveControl`` alone, through a fake port."""

from __future__ import annotations

from typing import Any

from sip_controller.agent.profile import AgentProfile, HttpTool, Transfer, TurnDetection
from sip_controller.calls.actions import Action
from sip_controller.calls.features import control, hold
from sip_controller.calls.features.control import SAY_NEXT_MAX_S, SAY_NEXT_TIMER, split_tool_answer
from sip_controller.calls.features.watchdog import SILENCE_TIMER
from sip_controller.calls.inputs import (
    OperatorContext,
    OperatorHangup,
    OperatorMute,
    OperatorSay,
    OperatorTransfer,
    TimerFired,
    ToolDone,
)
from sip_controller.calls.states import CallState
from tests.callkit import (
    Call,
    audio,
    cancelled,
    creates,
    end_after_goodbye,
    fc,
    heard,
    response_created,
    response_done,
    said,
    sb,
    sends,
    session_updated,
    speech,
    timers,
)


def marks(c: Call) -> list[str]:
    return [what for _, what in c.record.timeline if what.startswith("control:")]


def tool_called(name: str) -> Call:
    """A greeted call whose agent has an HTTP tool ``name``, which the model has just called (``call_1``)."""
    tool = HttpTool(
        type="http",
        name=name,
        description="d",
        url="http://127.0.0.1:9/x",
        parameters={"type": "object", "properties": {}},
    )
    c = Call(profile=AgentProfile(tools=("end_call", tool)))
    c.greeted()
    c.feed(response_created("r_tool"))
    c.feed(response_done("r_tool", output=[fc("call_1", name, "{}")]))
    return c


def test_say_now_on_an_idle_call_asks_for_exactly_that_line_tagged_say() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(OperatorSay("Your parcel arrives tomorrow.", "now"))
    (create,) = creates(actions)
    assert [e["type"] for e in sends(actions)] == ["response.create"]  # nothing to cut off
    assert create["response"]["metadata"]["sipctl"] == "say"
    assert create["response"]["tool_choice"] == "none"
    assert '"Your parcel arrives tomorrow."' in create["response"]["instructions"]
    c.play("r_say", "Your parcel arrives tomorrow.")
    assert marks(c) == ["control: say now from operator (29 chars)", "control: say line completed"]
    assert "parcel" not in " ".join(marks(c))  # the timeline never holds the text


def test_say_now_cuts_off_the_answer_in_progress() -> None:
    c = Call()
    c.greeted()
    c.feed(response_created("r_talk"))
    c.feed(audio("started", "r_talk"))
    actions = c.feed(OperatorSay("Sorry, one correction.", "now"))
    assert [e["type"] for e in sends(actions)] == ["response.cancel", "output_audio_buffer.clear", "response.create"]


def test_say_next_waits_for_the_answer_in_progress_and_its_audio() -> None:
    c = Call()
    c.greeted()
    c.feed(response_created("r_talk"))
    c.feed(audio("started", "r_talk"))
    actions = c.feed(OperatorSay("We also have a discount.", "next"))
    assert creates(actions) == []
    assert timers(actions) == {SAY_NEXT_TIMER: SAY_NEXT_MAX_S}
    assert creates(c.feed(said("r_talk", "Sure."))) == []
    assert creates(c.feed(response_done("r_talk"))) == []  # its audio still plays
    after = c.feed(audio("stopped", "r_talk"))
    (create,) = creates(after)
    assert create["response"]["metadata"]["sipctl"] == "say"
    assert "response.cancel" not in [e["type"] for e in sends(after)]


def test_say_next_waits_for_the_caller_to_finish_and_is_said_anyway_after_its_bound() -> None:
    c = Call()
    c.greeted()
    c.feed(speech("started"))
    assert creates(c.feed(OperatorSay("Hold on.", "next"))) == []
    c.feed(response_created("r_answer"))  # the model answers the caller
    c.feed(audio("started", "r_answer"))
    actions = c.feed(TimerFired(SAY_NEXT_TIMER))  # the bound: said now, cutting off what plays
    assert [e["type"] for e in sends(actions)] == ["response.cancel", "output_audio_buffer.clear", "response.create"]


def test_lines_are_said_one_at_a_time_in_order() -> None:
    c = Call()
    c.greeted()
    first = creates(c.feed(OperatorSay("One.", "now")))
    assert len(first) == 1
    assert creates(c.feed(OperatorSay("Two.", "next"))) == []  # the first is asked for, not made yet
    c.play("r_one", "One.")
    assert "Two." in creates(c.log)[-1]["response"]["instructions"]


def test_a_line_refused_while_a_response_is_made_waits_for_it() -> None:
    c = Call()
    c.greeted()
    (create,) = creates(c.feed(OperatorSay("Hello again.", "now")))
    error = {
        "type": "error",
        "event_id": "e1",
        "error": {
            "type": "invalid_request_error",
            "code": "conversation_already_has_active_response",
            "message": "busy",
            "event_id": create["event_id"],
        },
    }
    assert creates(c.feed(sb(error))) == []
    assert c.state() == CallState.ATTACHED  # not a session error
    c.feed(response_created("r_vad"))
    assert "Hello again." in creates(c.feed(response_done("r_vad")))[0]["response"]["instructions"]


def test_context_adds_a_system_message() -> None:
    c = Call()
    c.greeted()
    (event,) = sends(c.feed(OperatorContext("The parcel is two days late.")))
    assert event["type"] == "conversation.item.create"
    assert event["item"]["role"] == "system"
    assert event["item"]["content"] == [{"type": "input_text", "text": "The parcel is two days late."}]
    assert marks(c) == ["control: context from operator added (28 chars)"]


def test_mute_turns_off_automatic_answers_in_a_full_session_update_and_unmute_restores() -> None:
    c = Call()
    c.greeted()
    (update,) = sends(c.feed(OperatorMute(True)))
    assert update["type"] == "session.update"
    session = update["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    td = session["audio"]["input"]["turn_detection"]
    assert td["create_response"] is False
    assert td["interrupt_response"] is False
    assert c.m.control.muted
    c.feed(session_updated())
    # the caller spoke while muted: no answer is asked for, their words are still transcribed
    c.feed(speech("started"))
    assert creates(c.feed(speech("stopped"))) == []
    assert sends(c.feed(OperatorMute(True))) == []  # already muted
    (restore,) = sends(c.feed(OperatorMute(False)))
    td = restore["session"]["audio"]["input"]["turn_detection"]
    assert td["create_response"] is True
    assert td["interrupt_response"] is True
    assert "control: unmute from operator" in marks(c)


def test_a_caller_turn_during_the_mute_update_is_not_answered_once_it_is_in_force() -> None:
    c = Call()
    c.greeted()
    c.feed(OperatorMute(True))
    c.feed(speech("started"))
    c.feed(speech("stopped"))
    assert creates(c.feed(session_updated())) == []


def test_everything_is_refused_while_the_call_is_ending_and_a_goodbye_is_never_cut_off() -> None:
    c = Call()
    c.greeted()
    c.feed(OperatorHangup())
    assert c.state() == CallState.ENDING
    for inp in (OperatorSay("x", "now"), OperatorSay("x", "next"), OperatorContext("x"), OperatorMute(True)):
        assert c.feed(inp) == []
    assert c.m.control.refusal(c.m, "say") == "the call is ending"
    assert all("refused (the call is ending)" in m for m in marks(c))
    end_after_goodbye(c)
    assert c.record.ended_reason == "operator_hangup"


def test_a_waiting_line_is_dropped_when_a_goodbye_comes_first() -> None:
    c = Call()
    c.greeted()
    c.feed(response_created("r_talk"))
    c.feed(OperatorSay("Later line.", "next"))
    c.feed(OperatorHangup())  # the goodbye is asked for; the line must not follow it
    c.feed(response_done("r_talk"))
    assert [e["response"]["metadata"]["sipctl"] for e in creates(c.log)[1:]] == ["goodbye"]
    assert any("dropped" in m for m in marks(c))
    assert c.feed(TimerFired(SAY_NEXT_TIMER)) == []


def test_say_and_mute_wait_for_no_transfer_but_are_refused_during_one_context_is_not() -> None:
    c = Call(
        profile=AgentProfile(
            tools=("end_call", "transfer_call"), transfer=Transfer(targets={"sales": "tel:+14155550199"})
        )
    )
    c.greeted()
    c.feed(OperatorTransfer("sales"))
    assert c.m.transferring
    assert c.feed(OperatorSay("x", "now")) == []
    assert c.feed(OperatorMute(True)) == []
    assert len(sends(c.feed(OperatorContext("VIP caller")))) == 1
    assert c.m.control.refusal(c.m, "say") == "a transfer is under way"


def test_mute_is_refused_without_turn_detection() -> None:
    c = Call(profile=AgentProfile(turn_detection=None))
    c.greeted()
    assert c.feed(OperatorMute(True)) == []
    assert "no turn detection" in (c.m.control.refusal(c.m, "mute") or "")


def test_nothing_is_done_before_the_call_is_answered() -> None:
    c = Call()
    assert c.m.control.refusal(c.m, "context") == "the call is not answered yet"


# ---- a tool's answer ------------------------------------------------------------------------------------


def test_a_tool_answer_s_say_is_its_answer_and_its_context_comes_first() -> None:
    c = tool_called("order_status")
    answer, actions, problem = split_tool_answer(
        {"result": {"late": True}, "actions": [{"context": "Offer 10% off."}, {"say": "It is late, sorry."}]}
    )
    assert problem == ""
    assert answer == {"result": {"late": True}}
    out = sends(c.feed(ToolDone("call_1", True, '{"result": {"late": true}}', 0.1, actions=actions)))
    assert [e["type"] for e in out] == ["conversation.item.create", "conversation.item.create", "response.create"]
    assert out[0]["item"]["type"] == "function_call_output"
    assert out[1]["item"]["role"] == "system"
    assert out[2]["response"]["metadata"]["sipctl"] == "say"
    assert '"It is late, sorry."' in out[2]["response"]["instructions"]


def test_malformed_tool_actions_are_refused_whole_and_the_model_answers_on_its_own() -> None:
    bad = [
        ({"actions": "say hi"}, "actions must be a list"),
        ({"actions": [{"say": ""}]}, "actions[0].say must not be empty"),
        ({"actions": [{"say": "a", "context": "b"}]}, "one key"),
        ({"actions": [{"shout": "a"}]}, "unknown action"),
        ({"actions": [{"mute": "yes"}]}, "must be true"),
        ({"actions": [{"say": "a"}, {"say": "b"}]}, "at most one say"),
        ({"actions": [{"context": "x"}] * 6}, "at most 5"),
        ({"actions": [{"say": "x" * (control.MAX_SAY_CHARS + 1)}]}, "at most 1000 characters"),
    ]
    for value, why in bad:
        _, actions, problem = split_tool_answer(value)
        assert actions == (), value
        assert why in problem, (value, problem)
    assert split_tool_answer("plain text") == ("plain text", (), "")
    assert split_tool_answer({"result": 1}) == ({"result": 1}, (), "")
    _, actions, _ = split_tool_answer({"actions": [{"mute": True}, {"unmute": True}]})
    assert actions == (OperatorMute(True, source="tool"), OperatorMute(False, source="tool"))


# ---- the timeline ---------------------------------------------------------------------------------------


def test_every_control_is_on_the_timeline_by_kind_source_and_length_never_by_its_text() -> None:
    secret_line, secret_note = "Your PIN is 4321.", "Caller owes 99 dollars."
    c = Call()
    c.greeted()
    c.feed(response_created("r_talk"))
    c.feed(OperatorSay(secret_line, "next"))
    c.feed(OperatorContext(secret_note))
    c.feed(OperatorMute(True))
    c.feed(session_updated())
    c.feed(OperatorMute(False))
    c.feed(session_updated())
    c.feed(response_done("r_talk"))  # the answer in progress is over: the waiting line is said
    assert marks(c) == [
        "control: say next from operator (17 chars): waiting",
        "control: context from operator added (23 chars)",
        "control: mute from operator",
        "control: unmute from operator",
        "control: a waiting line from operator is said (17 chars)",
    ]
    timeline = " ".join(what for _, what in c.record.timeline)
    assert "4321" not in timeline
    assert "99 dollars" not in timeline
    assert secret_line in creates(c.log)[-1]["response"]["instructions"]  # said, all the same


def test_a_refused_control_is_marked_with_why_before_the_call_is_answered() -> None:
    c = Call()
    assert c.feed(OperatorSay("Too early.", "now")) == []
    assert c.feed(OperatorContext("Too early.")) == []
    assert marks(c) == [
        "control: say from operator refused (the call is not answered yet)",
        "control: context from operator refused (the call is not answered yet)",
    ]
    assert c.state() == CallState.RECEIVED


def on_hold(c: Call) -> None:
    """A greeted call whose model asked to wait on hold; the hold's session.update in force."""
    c.greeted()
    c.feed(response_done("r_hold", output=[fc("c_hold", "wait_on_hold", "{}")]))
    c.feed(session_updated())
    assert c.m.hold.active


def hold_check(c: Call, rid: str, heard_text: str, verdict: str) -> list[Action]:
    """A caller transcript on hold, its out-of-band check and the classifier's verdict; all actions."""
    answer = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": verdict}]}]
    out = c.feed(heard(heard_text))
    meta = c.tag()  # the check's metadata, as OpenAI echoes it
    assert hold.PURPOSE in meta.values()
    out += c.feed(response_created(rid, metadata=meta))
    return out + c.feed(response_done(rid, output=answer, metadata=meta))


def turn_detection(actions: list[Action]) -> dict[str, Any]:
    (update,) = [e for e in sends(actions) if e["type"] == "session.update"]
    td: dict[str, Any] = update["session"]["audio"]["input"]["turn_detection"]
    return td


HOLD = {"tools": ["end_call", "wait_on_hold"], "hold": {}}


def test_mute_on_hold_is_taken_and_the_agent_stays_muted_when_the_hold_ends() -> None:
    c = Call(profile=AgentProfile.model_validate(HOLD))
    on_hold(c)
    muted = c.feed(OperatorMute(True))
    assert c.m.control.muted
    td = turn_detection(muted)
    assert (td["create_response"], td["interrupt_response"]) == (False, False)
    c.feed(session_updated())
    assert c.m.hold.active  # the mute does not end the hold
    assert [e["type"] for e in sends(c.feed(OperatorContext("Still on hold.")))] == ["conversation.item.create"]
    # a person is back: the hold ends, but the agent stays muted: no answers of its own, none asked for now
    resumed = hold_check(c, "r_chk", "Hi, this is Dana. Are you there?", "yes")
    assert not c.m.hold.active
    td = turn_detection(resumed)
    assert (td["create_response"], td["interrupt_response"]) == (False, False)
    assert creates(c.feed(session_updated())) == []
    assert "hold mode off: a person is back (classifier); muted: the agent waits for the operator" in [
        what for _, what in c.record.timeline
    ]
    c.feed(speech("started"))
    assert creates(c.feed(speech("stopped"))) == []  # heard, not answered
    # unmute: the profile's answers come back
    td = turn_detection(c.feed(OperatorMute(False)))
    assert (td["create_response"], td["interrupt_response"]) == (True, True)
    assert marks(c) == [
        "control: mute from operator (on hold: kept when the hold ends)",
        "control: context from operator added (14 chars)",
        "control: unmute from operator",
    ]


def test_unmute_on_hold_keeps_the_hold_s_answers_off_until_a_person_is_back() -> None:
    c = Call(profile=AgentProfile.model_validate(HOLD))
    c.greeted()
    c.feed(OperatorMute(True))
    c.feed(session_updated())
    # a response already under way asks to wait on hold while the agent is muted: the hold keeps the mute
    went = c.feed(response_done("r_hold", output=[fc("c_hold", "wait_on_hold", "{}")]))
    td = turn_detection(went)
    assert (td["create_response"], td["interrupt_response"]) == (False, False)
    c.feed(session_updated())
    assert c.m.hold.active
    # unmute on hold: taken (no longer muted), but still on hold: the agent does not answer hold music
    unmuted = c.feed(OperatorMute(False))
    assert not c.m.control.muted
    td = turn_detection(unmuted)
    assert (td["create_response"], td["interrupt_response"]) == (False, True)
    assert creates(unmuted) == []
    c.feed(session_updated())
    assert c.m.hold.active
    c.feed(speech("started"))
    assert creates(c.feed(speech("stopped"))) == []
    (check,) = creates(hold_check(c, "r_m", "la la la", "no"))  # the check only
    assert hold.PURPOSE in check["response"]["metadata"].values()
    # the hold ends: answers back on, and the model answers the person
    resumed = hold_check(c, "r_chk", "Hello, thanks for holding.", "yes")
    td = turn_detection(resumed)
    assert (td["create_response"], td["interrupt_response"]) == (True, True)
    (answer,) = creates(c.feed(session_updated()))
    assert "instructions" not in (answer.get("response") or {})  # a plain answer to the conversation
    assert "control: unmute from operator (on hold: no answers until it ends)" in marks(c)


def test_muted_the_silence_watchdog_never_nudges_and_counts_again_on_unmute() -> None:
    profile = AgentProfile.model_validate({"watchdogs": {"silence_timeout_s": 20}})
    c = Call(profile=profile, silence_watchdog=True)
    c.greeted()
    muted = c.feed(OperatorMute(True))
    assert SILENCE_TIMER in cancelled(muted)
    assert c.m.watchdog.paused
    c.feed(session_updated())
    assert c.feed(TimerFired(SILENCE_TIMER)) == []  # a timer already on its way: no nudge, no goodbye
    c.feed(speech("started"))
    assert SILENCE_TIMER not in timers(c.feed(speech("stopped")))  # still not counted
    unmuted = c.feed(OperatorMute(False))
    assert timers(unmuted)[SILENCE_TIMER] == 20
    assert not c.m.watchdog.paused
    (nudge,) = creates(c.feed(TimerFired(SILENCE_TIMER)))
    assert nudge["response"]["metadata"]["sipctl"] == "nudge"


def test_silence_stays_paused_while_either_hold_or_mute_is_in_force() -> None:
    profile = AgentProfile.model_validate({**HOLD, "watchdogs": {"silence_timeout_s": 20}})
    c = Call(profile=profile, silence_watchdog=True)
    on_hold(c)
    c.feed(OperatorMute(True))
    c.feed(session_updated())
    hold_check(c, "r_chk", "Hi, Dana here.", "yes")  # the hold ends while muted
    assert c.m.watchdog.paused
    assert c.feed(TimerFired(SILENCE_TIMER)) == []
    c.feed(session_updated())
    assert SILENCE_TIMER in timers(c.feed(OperatorMute(False)))
    assert not c.m.watchdog.paused


def test_mute_turns_off_openai_s_idle_timeout_re_prompt_and_unmute_restores_it() -> None:
    vad = TurnDetection(type="server_vad", idle_timeout_ms=6000)
    c = Call(profile=AgentProfile(turn_detection=vad))
    c.greeted()
    td = turn_detection(c.feed(OperatorMute(True)))
    assert td["idle_timeout_ms"] is None  # OpenAI's own re-prompt is an answer of the agent's own too
    c.feed(session_updated())
    assert turn_detection(c.feed(OperatorMute(False)))["idle_timeout_ms"] == 6000


def test_the_say_next_bound_with_nothing_waiting_does_nothing() -> None:
    c = Call()
    c.greeted()
    c.play("r_one", "One.")
    assert c.feed(TimerFired(SAY_NEXT_TIMER)) == []
    assert marks(c) == []


def test_a_tool_answer_can_mute_the_agent() -> None:
    c = tool_called("escalate")
    _, actions, problem = split_tool_answer({"result": "ok", "actions": [{"mute": True}]})
    assert problem == ""
    out = sends(c.feed(ToolDone("call_1", True, '{"result": "ok"}', 0.1, actions=actions)))
    assert [e["type"] for e in out] == ["conversation.item.create", "session.update", "response.create"]
    assert out[1]["session"]["audio"]["input"]["turn_detection"]["create_response"] is False
    assert c.m.control.muted
    assert "control: mute from tool" in marks(c)
