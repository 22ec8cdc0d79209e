"""OpenAI's 60-minute session limit (issue 15): the call is wrapped up and hung up before it, whatever happens to
the goodbye; a session that ends on the limit anyway is reported as ``session_limit``."""

from __future__ import annotations

from typing import get_args

import pytest

from sip_controller.agent.profile import MAX_CALL_DURATION_S, OPENAI_SESSION_LIMIT_S, AgentProfile, Watchdogs
from sip_controller.calls.actions import Action, CancelTimer, Finish, Hangup, StartTimer
from sip_controller.calls.features.watchdog import MAX_END_TIMER, MAX_WRAP_TIMER
from sip_controller.calls.inputs import (
    AcceptOk,
    Attached,
    HangupFailed,
    HangupOk,
    Input,
    SidebandClosed,
    SidebandEvent,
    Start,
    TimerFired,
)
from sip_controller.calls.lines import ANSWER_WAIT_MAX_S, MAX_BARGE_INS
from sip_controller.calls.states import (
    SESSION_LIMIT_MARGIN_S,
    SESSION_LIMIT_SLACK_S,
    SESSION_LIMIT_TIMER,
    CallState,
    EndedReason,
)
from tests.callkit import Call, audio, cancelled, finishes, hangups, response_created, sb, speech, timers


def expired() -> SidebandEvent:
    return sb(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": "Your session hit the maximum duration of 60 minutes.",
            },
        }
    )


def test_session_limit_is_an_ended_reason() -> None:
    assert "session_limit" in get_args(EndedReason)


def test_a_guard_before_the_limit_is_started_at_attach_counting_from_the_accept() -> None:
    c = Call()
    c.feed(Start())
    c.feed(AcceptOk())  # the session begins (t = 0.5 s)
    c.now += 2.0  # the sideband takes a while
    actions = c.feed(Attached())
    assert timers(actions)[SESSION_LIMIT_TIMER] == OPENAI_SESSION_LIMIT_S - SESSION_LIMIT_MARGIN_S - 2.5


def test_the_guard_hangs_up_a_call_still_live_as_max_duration() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(TimerFired(SESSION_LIMIT_TIMER))
    assert actions[-1] == Hangup()
    assert MAX_WRAP_TIMER in cancelled(actions)  # the watchdogs are stopped
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("max_duration")]


def test_the_guard_cuts_a_goodbye_still_going_on_and_keeps_its_reason() -> None:
    c = Call()
    c.greeted()
    c.feed(TimerFired(MAX_WRAP_TIMER))
    c.feed(TimerFired(MAX_END_TIMER))
    assert c.state() == CallState.ENDING
    assert c.feed(TimerFired(SESSION_LIMIT_TIMER))[-1] == Hangup()
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("max_duration")]


def test_session_expired_ends_the_call_as_session_limit() -> None:
    c = Call()
    c.greeted()
    actions = c.feed(expired())
    assert hangups(actions) == 1
    assert finishes(c.feed(HangupFailed(gone=True, detail="404 call_id_not_found"))) == [Finish("session_limit")]
    assert any("60 minutes" in e for e in c.record.errors)


def test_session_expired_during_a_goodbye_is_still_the_session_limit() -> None:
    c = Call()
    c.greeted()
    c.feed(TimerFired(MAX_WRAP_TIMER))
    c.feed(TimerFired(MAX_END_TIMER))
    c.feed(expired())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("session_limit")]


@pytest.mark.parametrize("code", [1000, 1011, None])
def test_a_sideband_closed_at_the_limit_is_the_session_limit(code: int | None) -> None:
    c = Call()
    c.greeted()
    accepted = c.record.accepted_s
    assert accepted is not None
    c.now = 100.0 + accepted + OPENAI_SESSION_LIMIT_S - SESSION_LIMIT_SLACK_S  # (the clock started at 100)
    assert finishes(c.feed(SidebandClosed(code))) == [Finish("session_limit")]


def test_a_sideband_closed_well_before_the_limit_is_the_caller() -> None:
    c = Call()
    c.greeted()
    c.now += OPENAI_SESSION_LIMIT_S - SESSION_LIMIT_SLACK_S - 60
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("caller_hangup")]


def test_the_longest_call_allowed_hangs_up_before_the_limit_even_when_every_goodbye_is_talked_over() -> None:
    """max_duration_s at its maximum, the slowest goodbye fallback, long goodbyes the caller talks over every
    time and a model that never answers: the hangup still comes before OpenAI's limit."""
    watchdogs = Watchdogs(max_duration_s=MAX_CALL_DURATION_S, wrap_up_before_s=300, silence_timeout_s=None)
    c = Call(profile=AgentProfile(watchdogs=watchdogs, goodbye_timeout_s=60))
    deadlines: dict[str, float] = {}
    hung_up_at: list[float] = []

    def feed(inp: Input) -> list[Action]:
        at = c.now
        actions = c.feed(inp)
        for action in actions:
            if isinstance(action, StartTimer):
                deadlines[action.name] = at + action.seconds
            elif isinstance(action, CancelTimer):
                deadlines.pop(action.name, None)
        if hangups(actions):
            hung_up_at.append(at)
        return actions

    def wait(seconds: float) -> None:
        """Time goes by: the timers due meanwhile fire, in order."""
        until = c.now + seconds
        while deadlines and min(deadlines.values()) <= until and not hung_up_at:
            name = min(deadlines, key=deadlines.__getitem__)
            c.now = max(c.now, deadlines.pop(name))
            feed(TimerFired(name))
        c.now = max(c.now, until)

    feed(Start())
    accepted_at = c.now
    feed(AcceptOk())
    feed(Attached())
    wait(MAX_CALL_DURATION_S + 5)  # the wrap-up, then the end: the goodbye is asked for
    n = 0
    while not hung_up_at:
        feed(response_created(f"r_bye{n}", c.tag("goodbye")))
        feed(audio("started", f"r_bye{n}"))
        wait(55)  # a long goodbye
        if hung_up_at:
            break
        feed(speech("started"))
        feed(audio("cleared", f"r_bye{n}"))
        wait(ANSWER_WAIT_MAX_S)  # no answer comes: the goodbye again (or the hangup)
        n += 1
    assert hung_up_at[0] - accepted_at <= OPENAI_SESSION_LIMIT_S - SESSION_LIMIT_MARGIN_S
    assert n <= MAX_BARGE_INS
