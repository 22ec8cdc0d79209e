"""The transfer feature on its own: a ``Transfer`` driven through a fake port, without the call machine."""

from __future__ import annotations

from typing import Any

from sip_controller.agent.profile import Transfer as TransferConfig
from sip_controller.agent.tools import TransferArgs
from sip_controller.calls.actions import CancelTimer, Refer, StartTimer
from sip_controller.calls.features.transfer import (
    TRANSFER_AGAIN_TIMER,
    TRANSFER_ANNOUNCE_TIMER,
    TRANSFER_VERIFY_TIMER,
    Transfer,
)
from sip_controller.calls.lines import MAX_BARGE_INS
from tests.calls.features.fake_port import (
    FakePort,
    instructions,
    marks,
    response,
    sent,
    system_notes,
    tool_call,
)

TARGETS = {"sales": "tel:+15551230001", "support": "sip:support@pbx.example.com"}


def make(**config: Any) -> Transfer:
    return Transfer(TransferConfig.model_validate({"targets": TARGETS, **config}), announce_timeout_s=5.0)


def line_tag(t: Transfer) -> dict[str, Any]:
    """The metadata OpenAI echoes on the handoff line's response: the tag of its request."""
    assert t.attempt is not None
    assert t.attempt.tag is not None
    return dict(t.attempt.tag)


def test_announce_then_refer_when_the_handoff_line_was_heard_then_verified_when_the_call_leaves() -> None:
    t, port = make(verify_window_s=6), FakePort()
    assert t.attempt is None
    assert not t.leaving
    actions = t.start(port, "sales", 1.0)
    [line] = instructions(actions)
    assert "transferring them to sales" in line
    assert actions[-1] == StartTimer(TRANSFER_ANNOUNCE_TIMER, 5.0)
    assert t.attempt is not None
    assert t.attempt.phase == "announcing"
    assert port.record.transfer_target == "sales"

    t.on_response_created(response("r_hand", metadata=line_tag(t)))
    assert t.attempt.response_id == "r_hand"
    t.on_response_created(response("r_other"))  # without the line's tag, a response is not the line
    assert t.attempt.response_id == "r_hand"
    assert t.on_audio_done(port, "r_other", 2.0) == []

    assert t.on_audio_done(port, "r_hand", 3.0) == [CancelTimer(TRANSFER_ANNOUNCE_TIMER), Refer(TARGETS["sales"])]
    assert t.attempt.phase == "referring"
    assert t.leaving
    assert t.on_audio_done(port, "r_hand", 3.1) == []  # one refer only

    assert t.on_refer_ok(port, 3.5) == [StartTimer(TRANSFER_VERIFY_TIMER, 6.0)]
    assert t.attempt.phase == "verifying"
    assert t.leaving
    assert t.on_call_left(port, 4.0) == [CancelTimer(TRANSFER_VERIFY_TIMER)]
    assert port.record.transfer_outcome == "transferred"
    assert port.endings == []  # finishing the call is the machine's part


def test_not_verified_in_time_tries_the_next_target_then_ends_when_none_is_left() -> None:
    t, port = make(on_failure="next_target"), FakePort()
    t.start(port, "sales", 1.0)
    t.on_timer(port, TRANSFER_ANNOUNCE_TIMER, 6.0)  # the line took too long: refer anyway
    assert t.attempt is not None
    assert t.attempt.phase == "referring"
    t.on_refer_ok(port, 6.5)
    assert t.on_timer(port, TRANSFER_ANNOUNCE_TIMER, 7.0) == []  # a stale timer of the earlier phase

    actions = t.on_timer(port, TRANSFER_VERIFY_TIMER, 14.5)
    assert port.record.transfer_outcome == "failed"
    assert any("did not leave within the verify window" in e for e in port.record.errors)
    [line] = instructions(actions)
    assert "did not go through" in line
    assert "you will try support" in line
    assert StartTimer(TRANSFER_ANNOUNCE_TIMER, 5.0) in actions
    assert t.attempt is not None
    assert (t.attempt.target, t.attempt.phase, t.attempt.tried) == ("support", "announcing", ["sales", "support"])
    assert port.record.transfer_target == "support"

    t.on_response_created(response("r_hand2", metadata=line_tag(t)))
    t.on_audio_done(port, "r_hand2", 15.0)
    t.on_refer_ok(port, 15.5)
    actions = t.on_timer(port, TRANSFER_VERIFY_TIMER, 23.5)
    assert [reason for reason, _ in port.endings] == ["transfer_failed"]
    assert "did not go through" in (port.endings[0][1] or "")
    assert instructions(actions) == [port.endings[0][1]]
    assert t.attempt is None  # a later transfer may try every target again
    assert port.record.transfer_outcome == "failed"


def test_a_refused_refer_ends_the_call_when_the_profile_says_end_call() -> None:
    t, port = make(), FakePort()
    t.start(port, "support", 1.0)
    t.on_response_created(response("r_hand", metadata=line_tag(t)))
    port.audio_started.add("r_hand")
    port.audio_stopped.add("r_hand")  # heard in full before its response.done
    assert t.on_response_done(port, response("r_hand", metadata=line_tag(t)), 2.0) == [
        CancelTimer(TRANSFER_ANNOUNCE_TIMER),
        Refer(TARGETS["support"]),
    ]
    actions = t.on_refer_failed(port, "502 from /refer", 2.5)
    assert port.record.errors == ["refer failed: 502 from /refer"]
    [(reason, goodbye)] = port.endings
    assert reason == "transfer_failed"
    assert goodbye is not None
    assert "call back later" in goodbye
    assert instructions(actions) == [goodbye]
    assert t.attempt is None
    assert t.on_refer_ok(port, 3.0) == []  # nothing left to verify


def test_a_handoff_line_without_audio_does_not_hold_up_the_refer() -> None:
    t, port = make(), FakePort()
    t.start(port, "sales", 1.0)
    t.on_response_created(response("r_hand", metadata=line_tag(t)))
    assert t.on_response_done(port, response("r_other"), 1.5) == []  # not the handoff line
    actions = t.on_response_done(port, response("r_hand", status="cancelled", metadata=line_tag(t)), 2.0)
    assert actions == [CancelTimer(TRANSFER_ANNOUNCE_TIMER), Refer(TARGETS["sales"])]
    assert marks(port)[-1] == "transfer to sales: refer (handoff line had no audio)"


def test_a_handoff_line_still_playing_waits_for_its_audio() -> None:
    t, port = make(), FakePort()
    t.start(port, "sales", 1.0)
    t.on_response_created(response("r_hand", metadata=line_tag(t)))
    assert t.on_response_done(port, response("r_hand", audio=True, metadata=line_tag(t)), 2.0) == []
    assert t.attempt is not None
    assert t.attempt.phase == "announcing"
    assert [type(a) for a in t.on_audio_done(port, "r_hand", 4.0)] == [CancelTimer, Refer]


def test_the_tool_checks_the_target_and_refuses_a_second_transfer() -> None:
    t, port = make(), FakePort()
    bad = tool_call("transfer_call", "call_bad")
    actions = t.on_tool(port, bad, TransferArgs(target="+15550000000"), 1.0)
    assert (bad.outcome, bad.detail) == ("invalid_arguments", "unknown target '+15550000000'")
    [output, answer] = sent(actions)
    assert output["item"]["call_id"] == "call_bad"
    assert "sales, support" in output["item"]["output"]
    assert answer["type"] == "response.create"
    assert answer["response"] == {"metadata": {"sipctl": "tool_result", "n": answer["event_id"].rsplit("_", 1)[1]}}
    assert t.attempt is None

    ok = tool_call("transfer_call", "call_ok")
    actions = t.on_tool(port, ok, TransferArgs(target="sales"), 2.0)
    assert ok.result == "transferring to sales"
    assert sent(actions)[0]["item"]["output"] == '{"status": "transferring", "target": "sales"}'
    assert len(instructions(actions)) == 1

    again = tool_call("transfer_call", "call_again")
    actions = t.on_tool(port, again, TransferArgs(target="support"), 3.0)
    assert (again.outcome, again.detail) == ("ignored", "a transfer is already under way")
    assert [e["type"] for e in sent(actions)] == ["conversation.item.create"]
    assert t.attempt is not None
    assert t.attempt.target == "sales"


def test_nothing_starts_on_a_call_that_is_not_live_or_for_a_target_not_allowed() -> None:
    t, port = make(), FakePort(live=False)
    assert t.start(port, "sales", 1.0) == []
    assert t.attempt is None
    port.live = True
    assert t.on_operator(port, "nowhere", 2.0) == []
    assert t.attempt is None
    actions = t.on_operator(port, "support", 3.0)
    assert len(instructions(actions)) == 1
    assert marks(port) == [
        "operator transfer to support",
        "transfer to support: announcing",
    ]


# ---- what OpenAI really does to a handoff line (issue 15) ----------------------------------------------------


def phase(t: Transfer) -> str:
    assert t.attempt is not None
    return t.attempt.phase


def test_the_caller_talking_over_the_handoff_line_is_answered_then_the_line_is_said_again() -> None:
    t, port = make(), FakePort()
    t.start(port, "sales", 1.0)
    t.on_response_created(response("r_hand", metadata=line_tag(t)))
    actions = t.on_audio_done(port, "r_hand", 2.0, cleared=True)
    assert Refer(TARGETS["sales"]) not in actions
    assert CancelTimer(TRANSFER_ANNOUNCE_TIMER) in actions
    [note] = system_notes(actions)
    assert "transfer to sales" in note
    assert "transfer goes ahead" in note
    assert actions[-1] == StartTimer(TRANSFER_AGAIN_TIMER, 30.0)
    assert port.waiting == [TRANSFER_AGAIN_TIMER]
    assert phase(t) == "answering"
    assert [(b.line, b.then) for b in port.record.barge_ins] == [("transfer", "answered")]
    # its cancelled response.done is the same barge-in, not another one
    assert t.on_response_done(port, response("r_hand", status="cancelled", reason="turn_detected"), 2.1) == []
    # the model has answered: the line again, then the refer once it is heard
    again = t.on_timer(port, TRANSFER_AGAIN_TIMER, 6.0)
    [line] = instructions(again)
    assert "transferring them to sales" in line
    assert phase(t) == "announcing"
    t.on_response_created(response("r_hand2", metadata=line_tag(t)))
    assert t.on_audio_done(port, "r_hand2", 8.0) == [CancelTimer(TRANSFER_ANNOUNCE_TIMER), Refer(TARGETS["sales"])]
    assert t.on_timer(port, TRANSFER_AGAIN_TIMER, 9.0) == []  # a late bound does nothing


def test_a_handoff_line_cancelled_for_the_caller_before_its_audio_is_also_a_barge_in() -> None:
    t, port = make(), FakePort()
    t.start(port, "sales", 1.0)
    t.on_response_created(response("r_hand", metadata=line_tag(t)))
    actions = t.on_response_done(port, response("r_hand", status="cancelled", reason="turn_detected"), 2.0)
    assert port.waiting == [TRANSFER_AGAIN_TIMER]
    assert not [a for a in actions if isinstance(a, Refer)]


def test_the_caller_talking_over_the_handoff_line_is_bounded_then_the_refer_goes_out() -> None:
    t, port = make(), FakePort()
    t.start(port, "sales", 1.0)
    for n in range(MAX_BARGE_INS):
        t.on_response_created(response(f"r_hand{n}", metadata=line_tag(t)))
        t.on_audio_done(port, f"r_hand{n}", 2.0 + n, cleared=True)
        t.on_timer(port, TRANSFER_AGAIN_TIMER, 2.5 + n)
    t.on_response_created(response("r_last", metadata=line_tag(t)))
    actions = t.on_audio_done(port, "r_last", 9.0, cleared=True)
    assert actions == [CancelTimer(TRANSFER_ANNOUNCE_TIMER), Refer(TARGETS["sales"])]
    assert [b.then for b in port.record.barge_ins] == ["answered"] * MAX_BARGE_INS + ["referred"]


def test_a_failed_handoff_line_is_asked_once_more_then_the_refer_goes_out_without_it() -> None:
    t, port = make(), FakePort()
    t.start(port, "sales", 1.0)
    first = line_tag(t)
    t.on_response_created(response("r_hand", metadata=first))
    again = t.on_response_done(port, response("r_hand", status="failed", error_code="server_error"), 2.0)
    [line] = instructions(again)
    assert "transferring them to sales" in line
    assert line_tag(t) != first
    assert again[-1] == StartTimer(TRANSFER_ANNOUNCE_TIMER, 5.0)
    t.on_response_created(response("r_hand2", metadata=line_tag(t)))
    actions = t.on_response_done(port, response("r_hand2", status="failed", error_code="server_error"), 3.0)
    assert actions == [CancelTimer(TRANSFER_ANNOUNCE_TIMER), Refer(TARGETS["sales"])]
    assert any("transferring without it" in m for m in marks(port))
    assert port.model_failures == []  # the caller is handed to a person: the transfer is still the outcome


def test_after_the_callers_turn_nothing_is_said_if_the_call_is_ending() -> None:
    t, port = make(), FakePort()
    t.start(port, "sales", 1.0)
    t.on_response_created(response("r_hand", metadata=line_tag(t)))
    t.on_audio_done(port, "r_hand", 2.0, cleared=True)
    port.live = False
    assert t.on_timer(port, TRANSFER_AGAIN_TIMER, 3.0) == []
