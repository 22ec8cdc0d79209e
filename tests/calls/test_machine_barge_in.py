"""The caller talking over a goodbye (issue 15): OpenAI cancels the goodbye's response (``turn_detected``) and
clears its audio (``output_audio_buffer.cleared``). An ending the agent chose (``agent_end_call``,
``silence_timeout``) gives way: the conversation goes on. An ending the call must come to (``max_duration``,
``shutdown``, an operator's hangup, …) lets the model answer the caller, then asks for the goodbye again. Both are
bounded: past ``MAX_BARGE_INS`` the hangup follows at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.actions import Action, CancelTimer, Finish, Hangup, StartTimer
from sip_controller.calls.features.hold import HOLD_MAX_TIMER
from sip_controller.calls.features.watchdog import MAX_WRAP_TIMER, SILENCE_TIMER
from sip_controller.calls.inputs import HangupOk, Input, OperatorHangup, Shutdown, SidebandClosed, TimerFired
from sip_controller.calls.lines import ANSWER_WAIT_MAX_S, LINE_RETRIES, MAX_BARGE_INS
from sip_controller.calls.report import BargeIn, report_document
from sip_controller.calls.states import (
    GOODBYE_AGAIN_TIMER,
    GOODBYE_INSTRUCTIONS,
    GOODBYE_TIMER,
    SHUTDOWN_INSTRUCTIONS,
    CallState,
)
from tests.callkit import (
    Call,
    audio,
    barged,
    cancelled,
    creates,
    end_after_goodbye,
    failed,
    fc,
    finishes,
    hangups,
    response_created,
    response_done,
    said,
    sends,
    speech,
    timers,
)


def notes(actions: list[Action]) -> list[str]:
    """The system messages the machine added to the conversation."""
    return [
        e["item"]["content"][0]["text"]
        for e in sends(actions)
        if e["type"] == "conversation.item.create" and e["item"].get("role") == "system"
    ]


def goodbye_starts(c: Call, rid: str, *, done: bool = True) -> dict[str, Any]:
    """The goodbye asked for last is created and its audio starts; with ``done``, the response is also done
    (generating is faster than playing: the usual case when the caller talks over it). Returns its tag."""
    tag = c.tag("goodbye")
    c.feed(response_created(rid, tag))
    c.feed(audio("started", rid))
    if done:
        c.feed(said(rid, "Goodbye!"))
        assert hangups(c.feed(response_done(rid, metadata=tag))) == 0
    return tag


def talk_over(c: Call, rid: str) -> list[Action]:
    """The caller starts speaking over ``rid``: OpenAI clears its audio (and cancels it, below). All actions."""
    out = c.feed(speech("started"))
    return out + c.feed(audio("cleared", rid))


def answer(c: Call, rid: str, text: str = "Sure, your balance is 20 dollars.") -> list[Action]:
    """The caller stops; server VAD makes the model's answer (untagged), which plays to the end. All actions."""
    out = c.feed(speech("stopped"))
    for inp in (response_created(rid), audio("started", rid), said(rid, text), response_done(rid)):
        out += c.feed(inp)
    return out + c.feed(audio("stopped", rid))


# ---- an ending the agent chose gives way ----------------------------------------------------------------------


def test_talking_over_the_goodbye_after_end_call_resumes_the_conversation() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    tag = goodbye_starts(c, "r_bye", done=False)
    actions = talk_over(c, "r_bye")
    assert hangups(actions) == 0
    assert creates(actions) == []  # server VAD makes the answer once the caller stops
    assert c.state() == CallState.ATTACHED
    assert c.m.live
    assert GOODBYE_TIMER in cancelled(actions)
    (note,) = notes(actions)
    assert "not over" in note
    assert MAX_WRAP_TIMER in timers(actions)  # the duration watchdog goes on with the time that was left
    assert timers(actions)[MAX_WRAP_TIMER] < 570.0
    assert [(b.line, b.then) for b in c.record.barge_ins] == [("goodbye", "resumed")]
    # the cancelled goodbye's response.done changes nothing
    assert c.feed(barged("r_bye", tag)) == []
    # the conversation goes on; the model ends it again later, and this goodbye is heard
    answer(c, "r_ans")
    c.feed(response_done("r_tool2", output=[fc("call_2")]))
    assert c.state() == CallState.ENDING
    assert finishes(end_after_goodbye(c, "r_bye2")) == [Finish("agent_end_call")]
    assert report_document(c.record)["barge_ins"] == [
        {"line": "goodbye", "at_s": c.record.barge_ins[0].at_s, "then": "resumed"}
    ]


def test_a_goodbye_cancelled_for_the_caller_before_its_audio_started_also_resumes() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    tag = c.tag("goodbye")
    c.feed(response_created("r_bye", tag))
    c.feed(speech("started"))
    actions = c.feed(barged("r_bye", tag))
    assert hangups(actions) == 0
    assert c.state() == CallState.ATTACHED
    assert c.record.barge_ins == [BargeIn("goodbye", c.record.barge_ins[0].at_s, "resumed")]


def test_the_caller_talking_over_a_goodbye_is_bounded() -> None:
    c = Call()
    c.greeted()
    for n in range(MAX_BARGE_INS):
        c.feed(response_done(f"r_tool{n}", output=[fc(f"call_{n}")]))
        goodbye_starts(c, f"r_bye{n}")
        assert hangups(talk_over(c, f"r_bye{n}")) == 0
        answer(c, f"r_ans{n}")
    c.feed(response_done("r_tool_last", output=[fc("call_last")]))
    goodbye_starts(c, "r_bye_last")
    actions = talk_over(c, "r_bye_last")
    assert actions[-1] == Hangup()
    assert [b.then for b in c.record.barge_ins] == ["resumed"] * MAX_BARGE_INS + ["hung_up"]
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("agent_end_call")]


def test_a_silent_caller_who_speaks_over_the_silence_goodbye_is_back() -> None:
    profile = AgentProfile.model_validate({"watchdogs": {"silence_timeout_s": 10}})
    c = Call(profile=profile, silence_watchdog=True)
    c.greeted()
    c.feed(TimerFired(SILENCE_TIMER))  # the nudge
    c.feed(TimerFired(SILENCE_TIMER))  # then the goodbye
    assert c.state() == CallState.ENDING
    goodbye_starts(c, "r_bye")
    actions = talk_over(c, "r_bye")
    assert c.state() == CallState.ATTACHED
    assert c.record.barge_ins[0].then == "resumed"
    assert SILENCE_TIMER not in timers(actions)  # the caller is speaking: silence is not counted
    assert timers(c.feed(speech("stopped")))[SILENCE_TIMER] == 10


# ---- an ending the call must come to: answer, then goodbye again ----------------------------------------------


def test_talking_over_the_shutdown_goodbye_is_answered_then_the_goodbye_is_asked_again() -> None:
    c = Call()
    c.greeted()
    c.feed(Shutdown())
    tag = goodbye_starts(c, "r_bye", done=False)
    actions = talk_over(c, "r_bye")
    assert hangups(actions) == 0
    assert creates(actions) == []
    assert GOODBYE_TIMER in cancelled(actions)
    assert timers(actions) == {GOODBYE_AGAIN_TIMER: ANSWER_WAIT_MAX_S}  # a bound on waiting for the answer
    (note,) = notes(actions)
    assert "Do not say goodbye yet" in note
    assert c.state() == CallState.ENDING
    assert c.feed(barged("r_bye", tag)) == []
    # the model answers the caller; nothing is asked before its audio is over
    out = c.feed(speech("stopped"))
    for inp in (response_created("r_ans"), audio("started", "r_ans"), response_done("r_ans")):
        out += c.feed(inp)
    assert creates(out) == []
    actions = c.feed(audio("stopped", "r_ans"))
    assert CancelTimer(GOODBYE_AGAIN_TIMER) in actions
    (again,) = creates(actions)
    assert again["response"]["instructions"] == SHUTDOWN_INSTRUCTIONS
    assert timers(actions) == {GOODBYE_TIMER: c.profile.goodbye_timeout_s}
    assert finishes(end_after_goodbye(c, "r_bye2")) == [Finish("shutdown")]
    assert [b.then for b in c.record.barge_ins] == ["answered"]


def test_an_answer_the_caller_talked_over_does_not_count() -> None:
    c = Call()
    c.greeted()
    c.feed(OperatorHangup(now=False))
    goodbye_starts(c, "r_bye")
    talk_over(c, "r_bye")
    c.feed(speech("stopped"))
    c.feed(response_created("r_ans1"))
    c.feed(audio("started", "r_ans1"))
    c.feed(speech("started"))  # the caller goes on: OpenAI cuts the answer
    out = c.feed(audio("cleared", "r_ans1")) + c.feed(barged("r_ans1"))
    assert creates(out) == []
    (again,) = creates(answer(c, "r_ans2"))  # the answer to what they said last
    assert again["response"]["instructions"] == GOODBYE_INSTRUCTIONS
    assert finishes(end_after_goodbye(c, "r_bye2")) == [Finish("operator_hangup")]


def test_without_an_answer_the_goodbye_is_asked_again_after_the_bound() -> None:
    c = Call()
    c.greeted()
    c.feed(Shutdown())
    goodbye_starts(c, "r_bye")
    talk_over(c, "r_bye")
    assert c.feed(speech("stopped")) == []
    assert c.feed(TimerFired(GOODBYE_TIMER)) == []  # a late goodbye fallback does not hang up meanwhile
    (again,) = creates(c.feed(TimerFired(GOODBYE_AGAIN_TIMER)))
    assert again["response"]["metadata"]["sipctl"] == "goodbye"


def test_talking_over_an_imposed_goodbye_is_bounded_then_the_call_hangs_up() -> None:
    c = Call()
    c.greeted()
    c.feed(Shutdown())
    for n in range(MAX_BARGE_INS):
        goodbye_starts(c, f"r_bye{n}")
        talk_over(c, f"r_bye{n}")
        assert len(creates(answer(c, f"r_ans{n}"))) == 1  # the goodbye again
    goodbye_starts(c, "r_bye_last")
    assert talk_over(c, "r_bye_last")[-1] == Hangup()
    assert [b.then for b in c.record.barge_ins] == ["answered"] * MAX_BARGE_INS + ["hung_up"]
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("shutdown")]


def test_on_hold_anything_over_the_goodbye_is_hold_music_and_the_call_hangs_up() -> None:
    c = Call(profile=AgentProfile(tools=("end_call", "wait_on_hold"), greeting=None))
    c.attach()
    c.feed(response_done("r_hold", output=[fc("h1", "wait_on_hold", "{}")]))
    c.feed(TimerFired(HOLD_MAX_TIMER))
    assert c.state() == CallState.ENDING
    goodbye_starts(c, "r_bye")
    assert c.feed(audio("cleared", "r_bye")) == [CancelTimer(GOODBYE_TIMER), Hangup()]
    assert c.record.barge_ins[0].then == "hung_up"


def test_the_goodbye_heard_in_full_still_hangs_up_at_once() -> None:
    c = Call()
    c.greeted()
    c.feed(Shutdown())
    goodbye_starts(c, "r_bye")
    c.feed(said("r_bye", "Goodbye!"))
    c.feed(response_done("r_bye", metadata=c.tag("goodbye")))
    assert c.feed(audio("stopped", "r_bye")) == [CancelTimer(GOODBYE_TIMER), Hangup()]
    assert c.record.barge_ins == []


def test_a_start_timer_for_the_answer_is_only_a_bound() -> None:
    """The bound is a plain machine timer: a late one after the goodbye was asked again does nothing."""
    c = Call()
    c.greeted()
    c.feed(Shutdown())
    goodbye_starts(c, "r_bye")
    talk_over(c, "r_bye")
    answer(c, "r_ans")
    assert c.feed(TimerFired(GOODBYE_AGAIN_TIMER)) == []
    assert StartTimer(GOODBYE_AGAIN_TIMER, ANSWER_WAIT_MAX_S) in c.log


def test_a_shutdown_during_the_agents_goodbye_does_not_give_way() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    goodbye_starts(c, "r_bye")
    assert c.feed(Shutdown()) == []  # the goodbye under way is the wrap-up
    talk_over(c, "r_bye")
    assert c.state() == CallState.ENDING
    assert [b.then for b in c.record.barge_ins] == ["answered"]
    (again,) = creates(answer(c, "r_ans"))
    assert again["response"]["instructions"] == GOODBYE_INSTRUCTIONS
    assert finishes(end_after_goodbye(c, "r_bye2")) == [Finish("agent_end_call")]


def test_an_operator_hangup_during_the_agents_goodbye_does_not_give_way() -> None:
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    goodbye_starts(c, "r_bye")
    c.feed(OperatorHangup(now=False))
    talk_over(c, "r_bye")
    assert c.state() == CallState.ENDING
    assert [b.then for b in c.record.barge_ins] == ["answered"]


# ---- bounded whatever OpenAI sends ----------------------------------------------------------------------------

_ids = st.sampled_from(["r_a", "r_b", "r_c"])


def _for_the_latest_goodbye(kind: str) -> Callable[[Call], list[Action]]:
    """An input about the goodbye asked for last (built when fed: its tag is only known then)."""

    def feed(c: Call) -> list[Action]:
        rid = f"r_bye_{len(creates(c.log))}"
        tag = c.tag("goodbye")
        events = {
            "created": [response_created(rid, tag), audio("started", rid)],
            "talked_over": [speech("started"), audio("cleared", rid)],
            "cancelled": [speech("started"), barged(rid, tag)],
            "failed": [failed(rid, tag)],
        }[kind]
        return [a for inp in events for a in c.feed(inp)]

    return feed


_noise = st.one_of(
    st.builds(response_created, _ids),
    st.builds(response_done, _ids),
    st.builds(audio, st.sampled_from(["started", "stopped", "cleared"]), _ids),
    st.sampled_from([speech("started"), speech("stopped")]),
    st.sampled_from([TimerFired(GOODBYE_AGAIN_TIMER), TimerFired(GOODBYE_TIMER)]),
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.sampled_from(["created", "talked_over", "cancelled", "failed"]).map(_for_the_latest_goodbye) | _noise,
        max_size=40,
    )
)
def test_an_imposed_goodbye_is_asked_for_a_bounded_number_of_times(
    steps: list[Input | Callable[[Call], list[Action]]],
) -> None:
    c = Call()
    c.greeted()
    c.feed(Shutdown())
    for step in steps:
        if callable(step):
            step(c)
        else:
            c.feed(step)
    goodbyes = [e for e in creates(c.log) if e["response"]["metadata"]["sipctl"] == "goodbye"]
    assert len(goodbyes) <= 1 + MAX_BARGE_INS + LINE_RETRIES
    assert hangups(c.log) <= 1
    c.feed(SidebandClosed(1000))
    assert [f.reason for f in finishes(c.log)] in (["shutdown"], ["model_error"])
