"""Exactly once (#13), the machine's part: an accept whose answer was lost and that OpenAI then calls
``call_already_accepted`` is ours; a hangup is retried, with no limit, until OpenAI confirms it (2xx or 404), and
the report says whether it was confirmed and how many requests it took."""

from __future__ import annotations

from sip_controller.calls.actions import Attach, Finish, HangingUp, Reject, StartTimer
from sip_controller.calls.inputs import (
    AcceptOk,
    Attached,
    HangupFailed,
    HangupOk,
    Shutdown,
    SidebandClosed,
    Start,
    TimerFired,
)
from sip_controller.calls.report import report_document
from sip_controller.calls.states import GOODBYE_TIMER, HANGUP_RETRY_MAX_S, HANGUP_RETRY_TIMER, CallState
from tests.callkit import Call, fc, finishes, hangups, response_done


def ending_call() -> Call:
    """An attached call whose agent ended it; its goodbye timed out, so the hangup is under way."""
    c = Call()
    c.greeted()
    c.feed(response_done("r_tool", output=[fc("call_1")]))
    assert hangups(c.feed(TimerFired(GOODBYE_TIMER))) == 1
    return c


def test_an_accept_already_accepted_after_a_lost_answer_attaches_and_says_so() -> None:
    c = Call()
    c.feed(Start())
    actions = c.feed(AcceptOk(already_accepted=True))
    assert actions == [Attach()]
    assert not any(isinstance(a, Reject) for a in c.log)
    assert c.state() == CallState.ACCEPTED
    assert any("already accepted" in what for _, what in c.record.timeline)
    c.feed(Attached())
    assert c.state() == CallState.ATTACHED
    assert c.record.errors == []


def test_a_hangup_that_keeps_failing_is_never_given_up() -> None:
    c = ending_call()
    delays = []
    for round_ in range(1, 30):
        actions = c.feed(HangupFailed(gone=False, detail="hangup: HTTP 500", attempts=4))
        assert not c.m.finished
        assert c.state() == CallState.HANGING_UP
        [pending] = [a for a in actions if isinstance(a, HangingUp)]
        assert pending.attempts == 4 * round_
        assert StartTimer(HANGUP_RETRY_TIMER, pending.retry_in_s) in actions
        delays.append(pending.retry_in_s)
        assert hangups(c.feed(TimerFired(HANGUP_RETRY_TIMER))) == 1
    assert delays[:4] == [0.25, 0.5, 1.0, 2.0]  # backoff, doubling ...
    assert max(delays) == HANGUP_RETRY_MAX_S == delays[-1]  # ... up to a cap, and on and on
    assert [e for e in c.record.errors if "hangup" in e] == ["hangup failed: hangup: HTTP 500"]  # said once


def test_a_confirmed_hangup_after_failures_is_one_report_with_the_attempts() -> None:
    c = ending_call()
    for _ in range(3):
        c.feed(HangupFailed(gone=False, detail="hangup: HTTP 500", attempts=2))
        c.feed(TimerFired(HANGUP_RETRY_TIMER))
    c.feed(HangupOk(attempts=1))
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("agent_end_call")]
    report = report_document(c.record)
    assert report["hangup_confirmed"] is True
    assert report["hangup_attempts"] == 7
    assert report["ended_reason"] == "agent_end_call"
    assert report["state"] == "ended"


def test_a_404_while_hanging_up_confirms_the_call_is_gone() -> None:
    c = ending_call()
    c.feed(HangupFailed(gone=False, detail="hangup: HTTP 503"))
    c.feed(TimerFired(HANGUP_RETRY_TIMER))
    assert finishes(c.feed(HangupFailed(gone=True, detail="hangup: HTTP 404", attempts=1))) == [
        Finish("agent_end_call")
    ]
    assert c.record.hangup_confirmed is True
    assert c.record.hangup_attempts == 2


def test_the_sideband_closing_does_not_confirm_an_unconfirmed_hangup() -> None:
    c = ending_call()
    c.feed(HangupFailed(gone=False, detail="hangup: HTTP 500"))
    assert c.feed(SidebandClosed(1000)) == []  # OpenAI's answer to the hangup decides, not the socket
    assert c.state() == CallState.HANGING_UP
    assert hangups(c.feed(TimerFired(HANGUP_RETRY_TIMER))) == 1
    assert finishes(c.feed(HangupOk())) == [Finish("agent_end_call")]  # no sideband left to wait for
    assert c.record.hangup_confirmed is True


def test_a_drain_while_hanging_up_keeps_retrying_and_never_finishes_as_shutdown() -> None:
    c = ending_call()
    c.feed(HangupFailed(gone=False, detail="hangup: HTTP 500"))
    assert c.feed(Shutdown()) == []
    assert c.state() == CallState.HANGING_UP
    assert hangups(c.feed(TimerFired(HANGUP_RETRY_TIMER))) == 1
    c.feed(HangupOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("agent_end_call")]


def test_a_call_cut_off_while_hanging_up_is_left_hanging_up_unconfirmed() -> None:
    c = ending_call()
    c.feed(HangupFailed(gone=False, detail="hangup: HTTP 500", attempts=4))
    c.m.abort("shutdown", "cancelled", c.now, keep_pending=True)  # the process has to exit
    report = report_document(c.record)
    assert report["state"] == "hanging_up"
    assert report["hangup_confirmed"] is False
    assert report["hangup_attempts"] == 4
    assert report["ended_reason"] == "agent_end_call"  # the reason it was ending for, not shutdown


def test_a_call_the_caller_ended_has_no_hangup_to_confirm() -> None:
    c = Call()
    c.greeted()
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("caller_hangup")]
    assert report_document(c.record)["hangup_confirmed"] is None
    assert report_document(c.record)["hangup_attempts"] == 0
