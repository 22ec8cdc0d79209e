"""Exactly once (#13) end to end, real controller and simulator on loopback: an accept whose answer is lost (the
controller times out after OpenAI carried it out) is retried, told ``call_already_accepted``, and the call is
attached and supervised; a hangup answered 500 several times is retried until OpenAI confirms it, one report."""

from __future__ import annotations

import httpx
import pytest

from sip_controller.config import Settings
from sip_controller.realtime import rest
from sip_controller.simulator import CallSpec, harness

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05


def goodbye_call(name: str, faults: dict[str, object]) -> CallSpec:
    return CallSpec.model_validate(
        {
            "name": name,
            "ring_timeout": 200,  # 10 s at this scale: the caller still rings when a 5 s timeout is retried
            "steps": [
                {"say": "What time do you open?", "reply": "We open at nine."},
                {
                    "say": "Thanks, bye!",
                    "tool": {"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
                    "then": "Thank you for calling, goodbye!",
                },
            ],
            "faults": faults,
        }
    )


async def test_an_accept_whose_answer_is_lost_is_attached_not_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    # the controller gives up on an answer after 0.4 s here (5 s in production, and with a REST transport that does
    # not read DEFAULT_TIMEOUT): inside the ring budget either way; the lost answer is held past both (6 s)
    monkeypatch.setattr(rest, "DEFAULT_TIMEOUT", httpx.Timeout(connect=3.0, read=0.4, write=3.0, pool=3.0))
    spec = goodbye_call("lost-answer", {"accept_answer_lost": 1, "accept_answer_hold": 120})
    settings = Settings.model_validate({"limits": {"ring_budget_s": 12}})
    async with harness.running_stack(settings, time_scale=SCALE) as stack:
        outcome = await harness.run_call(stack, spec, timeout=30)
    record, sim = outcome.record, outcome.sim
    assert record is not None
    assert sim.fault_counts.get("accept_answer_lost") == 1
    assert sim.accept_count == 2  # ours, then the retry that heard call_already_accepted
    assert sim.reject_status is None  # never rejected
    assert record.ended_reason == "agent_end_call"  # supervised to the end: greeting, tool, goodbye
    assert record.attached_s is not None
    assert not any("accept failed" in e for e in record.errors)
    assert any("already accepted" in what for _, what in record.timeline)
    assert sim.greeting_heard
    assert sim.hangup_count == 1


async def test_a_hangup_answered_500_is_retried_until_confirmed_with_one_report() -> None:
    spec = goodbye_call("hangup-500s", {"hangup": {"error_rate": 1.0, "status": 500, "max_errors": 6}})
    reports: list[dict[str, object]] = []
    async with harness.running_stack(Settings(), time_scale=SCALE) as stack:
        stack.runtime.registry.on_finished.append(lambda r: reports.append({"id": r.call_id}))
        outcome = await harness.run_call(stack, spec, timeout=30)
    record, sim = outcome.record, outcome.sim
    assert record is not None
    assert sim.fault_counts.get("hangup_500") == 6
    assert sim.hangup_count == 1  # the 7th request went through
    assert record.ended_reason == "agent_end_call"
    assert record.state == "ended"
    assert (record.hangup_confirmed, record.hangup_attempts) == (True, 7)
    assert any(what.startswith("hanging_up") for _, what in record.timeline)
    assert reports == [{"id": record.call_id}]  # reported once
