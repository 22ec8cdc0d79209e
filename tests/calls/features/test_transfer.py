"""Tests for sip_controller.calls.features.transfer: verified transfers driven through the call machine."""

from __future__ import annotations

import json

import pytest

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.actions import Action, Finish, Refer
from sip_controller.calls.features.transfer import (
    TRANSFER_AGAIN_TIMER,
    TRANSFER_ANNOUNCE_TIMER,
    TRANSFER_VERIFY_TIMER,
)
from sip_controller.calls.inputs import ReferFailed, ReferOk, SidebandClosed, TimerFired
from sip_controller.calls.states import GOODBYE_TIMER, CallState
from tests.callkit import (  # the shared machine-test kit
    Call,
    audio,
    cancelled,
    creates,
    end_after_goodbye,
    failed,
    fc,
    finishes,
    hangups,
    outputs,
    plain_answer,
    refers,
    response_created,
    response_done,
    said,
    speech,
    timers,
)

TARGETS = {"sales": "tel:+14155550100", "support": "sip:support@example.com"}


def transfer_profile(on_failure: str = "end_call", verify_window_s: float = 8.0) -> AgentProfile:
    return AgentProfile.model_validate(
        {
            "tools": ["end_call", "transfer_call"],
            "transfer": {"targets": TARGETS, "on_failure": on_failure, "verify_window_s": verify_window_s},
        }
    )


def ask_transfer(c: Call, target: str = "sales", call_id: str = "c1", rid: str = "r1") -> list[Action]:
    args = json.dumps({"target": target, "reason": "wants a person"})
    return c.feed(response_done(rid, output=[fc(call_id, "transfer_call", args)]))


def announced(c: Call, target: str = "sales") -> list[Action]:
    """Greeted, the model calls transfer_call, the handoff line (r_ann) is created and played to the end."""
    c.greeted()
    actions = ask_transfer(c, target)
    assert refers(actions) == []
    return c.play("r_ann", f"Transferring you to {target} now.")


def test_transfer_announces_then_refers_after_the_line_is_heard() -> None:
    c = Call(profile=transfer_profile())
    c.greeted()
    actions = ask_transfer(c)
    assert outputs(actions) == {"c1": {"status": "transferring", "target": "sales"}}
    [line] = creates(actions)
    assert line["response"]["tool_choice"] == "none"
    assert "sales" in line["response"]["instructions"]
    assert timers(actions) == {TRANSFER_ANNOUNCE_TIMER: c.profile.goodbye_timeout_s}
    assert refers(actions) == []
    # never before the caller heard the whole line
    for inp in (
        response_created("r_ann", c.tag("transfer")),
        audio("started", "r_ann"),
        said("r_ann", "Transferring you now."),
        response_done("r_ann"),
    ):
        assert refers(c.feed(inp)) == []
    # audio of another response stopping does not count
    assert refers(c.feed(audio("stopped", "r_other"))) == []
    actions = c.feed(audio("stopped", "r_ann"))
    assert refers(actions) == [Refer(TARGETS["sales"])]
    assert TRANSFER_ANNOUNCE_TIMER in cancelled(actions)
    assert c.record.transfer_target == "sales"


@pytest.mark.parametrize("code", [1000, 1006, None])
def test_call_leaving_within_the_window_is_a_transfer(code: int | None) -> None:
    c = Call(profile=transfer_profile(verify_window_s=6.0))
    assert refers(announced(c)) == [Refer(TARGETS["sales"])]
    assert timers(c.feed(ReferOk())) == {TRANSFER_VERIFY_TIMER: 6.0}
    assert not c.m.finished
    actions = c.feed(SidebandClosed(code))
    assert finishes(actions) == [Finish("transferred")]
    assert TRANSFER_VERIFY_TIMER in cancelled(actions)
    assert c.record.ended_reason == "transferred"
    assert c.record.transfer_outcome == "transferred"
    assert hangups(c.log) == 0


def test_transfer_not_verified_apologises_and_hangs_up_after_the_goodbye() -> None:
    c = Call(profile=transfer_profile())
    announced(c)
    c.feed(ReferOk())
    actions = c.feed(TimerFired(TRANSFER_VERIFY_TIMER))
    [sorry] = creates(actions)
    assert "did not go through" in sorry["response"]["instructions"]
    assert sorry["response"]["tool_choice"] == "none"
    assert refers(actions) == []
    assert c.record.transfer_outcome == "failed"
    assert c.m.state == CallState.ENDING
    assert GOODBYE_TIMER in timers(actions)
    last = end_after_goodbye(c)
    assert finishes(last) == [Finish("transfer_failed")]
    assert c.record.ended_reason == "transfer_failed"
    assert c.record.transfer_outcome == "failed"
    assert refers(c.log) == [Refer(TARGETS["sales"])]


def test_refer_failed_behaves_like_a_failed_transfer() -> None:
    c = Call(profile=transfer_profile())
    announced(c)
    actions = c.feed(ReferFailed("HTTP 500"))
    assert "did not go through" in creates(actions)[0]["response"]["instructions"]
    assert any("refer failed: HTTP 500" in e for e in c.record.errors)
    assert c.record.transfer_outcome == "failed"
    assert finishes(end_after_goodbye(c)) == [Finish("transfer_failed")]


def test_next_target_is_announced_and_referred_after_a_failure() -> None:
    c = Call(profile=transfer_profile(on_failure="next_target"))
    announced(c, "sales")
    c.feed(ReferOk())
    actions = c.feed(TimerFired(TRANSFER_VERIFY_TIMER))
    [line] = creates(actions)
    assert "support" in line["response"]["instructions"]
    assert TRANSFER_ANNOUNCE_TIMER in timers(actions)
    assert c.m.live
    assert c.record.transfer_target == "support"
    assert refers(c.play("r_ann2", "Let me try support.")) == [Refer(TARGETS["support"])]
    c.feed(ReferOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("transferred")]
    assert c.record.transfer_outcome == "transferred"
    assert refers(c.log) == [Refer(TARGETS["sales"]), Refer(TARGETS["support"])]


def test_next_target_with_every_target_tried_ends_the_call() -> None:
    c = Call(profile=transfer_profile(on_failure="next_target"))
    announced(c, "sales")
    c.feed(ReferFailed("nope"))
    c.play("r_ann2")
    actions = c.feed(ReferFailed("nope again"))
    assert refers(actions) == []
    assert c.m.state == CallState.ENDING
    assert finishes(end_after_goodbye(c)) == [Finish("transfer_failed")]
    assert refers(c.log) == [Refer(TARGETS["sales"]), Refer(TARGETS["support"])]


@pytest.mark.parametrize("target", ["billing", "+14155550199", "tel:+14155550100", "sip:evil@example.com"])
def test_unknown_or_made_up_target_is_never_referred(target: str) -> None:
    c = Call(profile=transfer_profile())
    c.greeted()
    actions = ask_transfer(c, target)
    out = outputs(actions)["c1"]
    assert "not a transfer target" in out["error"]
    assert "sales" in out["error"]
    assert [plain_answer(e) for e in creates(actions)] == ["tool_result"]  # a plain response.create
    assert c.m.transfer.attempt is None
    assert c.record.tool_calls[-1].outcome == "invalid_arguments"
    c.play("r2")
    assert refers(c.log) == []
    assert c.feed(TimerFired(TRANSFER_ANNOUNCE_TIMER)) == []


def test_second_transfer_while_one_is_in_progress_is_refused() -> None:
    c = Call(profile=transfer_profile())
    c.greeted()
    ask_transfer(c, "sales")
    actions = ask_transfer(c, "support", call_id="c2", rid="r2")
    assert outputs(actions) == {"c2": {"error": "a transfer is already under way"}}
    assert creates(actions) == []
    assert c.record.tool_calls[-1].outcome == "ignored"
    assert refers(c.play("r_ann")) == [Refer(TARGETS["sales"])]
    assert c.m.transfer.attempt is not None
    assert c.m.transfer.attempt.target == "sales"


def test_announce_timer_refers_even_if_the_audio_never_stops() -> None:
    c = Call(profile=transfer_profile())
    c.greeted()
    ask_transfer(c)
    c.feed(response_created("r_ann", c.tag("transfer")))
    c.feed(audio("started", "r_ann"))
    c.feed(response_done("r_ann"))
    actions = c.feed(TimerFired(TRANSFER_ANNOUNCE_TIMER))
    assert refers(actions) == [Refer(TARGETS["sales"])]
    # the late stop and a repeated timer refer nothing more
    assert refers(c.feed(audio("stopped", "r_ann"))) == []
    assert refers(c.feed(TimerFired(TRANSFER_ANNOUNCE_TIMER))) == []
    assert len(refers(c.log)) == 1


def test_handoff_line_cancelled_without_audio_refers_at_once() -> None:
    c = Call(profile=transfer_profile())
    c.greeted()
    ask_transfer(c)
    c.feed(response_created("r_ann", c.tag("transfer")))
    assert refers(c.feed(response_done("r_ann", status="cancelled"))) == [Refer(TARGETS["sales"])]


def test_refer_results_outside_a_transfer_are_ignored() -> None:
    c = Call(profile=transfer_profile())
    c.greeted()
    assert c.feed(ReferOk()) == []
    assert c.feed(ReferFailed("x")) == []
    assert c.feed(TimerFired(TRANSFER_VERIFY_TIMER)) == []
    assert c.m.live
    assert c.record.transfer_outcome is None


def test_sideband_closing_while_the_refer_is_in_flight_counts_as_transferred() -> None:
    c = Call(profile=transfer_profile())
    assert refers(announced(c)) == [Refer(TARGETS["sales"])]
    actions = c.feed(SidebandClosed(1000))  # OpenAI dropped the call before /refer answered
    assert finishes(actions) == [Finish("transferred")]
    assert c.record.transfer_outcome == "transferred"


# ---- the caller talking over the handoff line, and a failing one (issue 15) ----------------------------------


def test_talking_over_the_handoff_line_is_answered_then_the_line_is_heard_then_the_refer() -> None:
    c = Call(profile=transfer_profile())
    c.greeted()
    ask_transfer(c)
    tag = c.tag("transfer")
    c.feed(response_created("r_ann", tag))
    c.feed(audio("started", "r_ann"))
    c.feed(response_done("r_ann", metadata=tag))
    c.feed(speech("started"))
    actions = c.feed(audio("cleared", "r_ann"))
    assert refers(actions) == []
    assert TRANSFER_AGAIN_TIMER in timers(actions)
    # the model answers the caller (server VAD); the line again only once that answer was heard
    out = c.feed(speech("stopped"))
    for inp in (response_created("r_ans"), audio("started", "r_ans"), said("r_ans", "Sure."), response_done("r_ans")):
        out += c.feed(inp)
    assert creates(out) == []
    actions = c.feed(audio("stopped", "r_ans"))
    [line] = creates(actions)
    assert line["response"]["metadata"]["sipctl"] == "transfer"
    assert TRANSFER_AGAIN_TIMER in cancelled(actions)
    assert refers(c.play("r_ann2", "Transferring you to sales now.")) == [Refer(TARGETS["sales"])]
    c.feed(ReferOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("transferred")]
    assert [b.then for b in c.record.barge_ins] == ["answered"]


def test_a_handoff_line_that_fails_twice_still_transfers_the_caller() -> None:
    c = Call(profile=transfer_profile())
    c.greeted()
    ask_transfer(c)
    c.feed(failed("r_ann", c.tag("transfer")))
    actions = c.feed(failed("r_ann2", c.tag("transfer")))
    assert refers(actions) == [Refer(TARGETS["sales"])]
    assert [f.purpose for f in c.record.failed_responses] == ["transfer", "transfer"]
    c.feed(ReferOk())
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("transferred")]


def test_a_transfer_handed_to_twilio_is_verified_the_same_way() -> None:
    """On a call Twilio bridged (#16) the supervisor redirects the Twilio call instead of /refer: the machine only
    learns the handover came through Twilio, and the transfer still counts once the call leaves OpenAI."""
    c = Call(profile=transfer_profile(verify_window_s=6.0))
    announced(c)
    assert timers(c.feed(ReferOk(via="twilio"))) == {TRANSFER_VERIFY_TIMER: 6.0}
    marks = [event for _, event in c.record.timeline]
    assert "transfer to sales: Twilio is dialling it, waiting for the call to leave" in marks
    assert finishes(c.feed(SidebandClosed(1000))) == [Finish("transferred")]
    assert c.record.transfer_outcome == "transferred"


def test_a_twilio_transfer_whose_call_never_leaves_openai_fails() -> None:
    c = Call(profile=transfer_profile())
    announced(c)
    c.feed(ReferOk(via="twilio"))
    c.feed(TimerFired(TRANSFER_VERIFY_TIMER))
    assert c.record.transfer_outcome == "failed"
    assert finishes(end_after_goodbye(c)) == [Finish("transfer_failed")]
