"""The machine's side of a takeover (#13), pure: ``resume`` re-attaches; once attached the watchdogs count from the
original attach, no greeting is asked for again; a 404 on the re-attach ends the call ``caller_hangup``, any other
failure hangs up; a call taken over while ending is hung up at once."""

from __future__ import annotations

from sip_controller.calls.actions import Hangup, Reattach, Send
from sip_controller.calls.features.watchdog import MAX_WRAP_TIMER
from sip_controller.calls.inputs import Attached, AttachFailed
from sip_controller.calls.states import SESSION_LIMIT_TIMER, CallState
from tests.callkit import Call, finishes, hangups, timers


def taken_over(elapsed_s: float = 100.0, *, attached_s: float | None = 2.0) -> Call:
    c = Call()
    c.record.accepted_s = 1.0
    c.record.attached_s = attached_s
    c.log.extend(c.m.resume(c.now, elapsed_s=elapsed_s))
    return c


def test_resume_re_attaches_the_sideband() -> None:
    c = taken_over()
    assert c.log == [Reattach()]
    assert c.state() == CallState.ATTACHED
    assert c.record.timeline[-1] == (100.0, "taken over: re-attaching the sideband")


def test_once_attached_the_watchdogs_count_from_the_original_attach_and_nobody_is_greeted_again() -> None:
    c = taken_over(elapsed_s=100.0)
    actions = c.feed(Attached())
    wrap = c.profile.watchdogs.max_duration_s - c.profile.watchdogs.wrap_up_before_s
    assert timers(actions)[MAX_WRAP_TIMER] == wrap - (100.0 - 2.0)
    assert SESSION_LIMIT_TIMER in timers(actions)
    assert not [a for a in actions if isinstance(a, Send)]  # no greeting, no session.update
    assert c.m.live


def test_a_404_on_the_re_attach_finishes_the_call_as_caller_hangup() -> None:
    c = taken_over()
    actions = c.feed(AttachFailed(gone=True, detail="404"))
    assert finishes(actions)
    assert c.record.ended_reason == "caller_hangup"
    assert hangups(actions) == 0


def test_any_other_failure_to_re_attach_hangs_up() -> None:
    c = taken_over()
    actions = c.feed(AttachFailed(gone=False, detail="503"))
    assert hangups(actions) == 1
    assert c.state() == CallState.ENDING


def test_a_call_taken_over_while_ending_is_hung_up_once_attached() -> None:
    c = Call()
    c.record.attached_s = 2.0
    c.m.resume(c.now, elapsed_s=30.0, ending="agent_end_call")
    actions = c.feed(Attached())
    assert [a for a in actions if isinstance(a, Hangup)] == [Hangup()]
