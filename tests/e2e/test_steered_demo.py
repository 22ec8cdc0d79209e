"""``sipctl demo``'s steered call (#17): an operator steers a live call through the admin API (say now, context, say
next) with real HTTP requests, and the demo checks each effect on both sides, so a broken control fails it."""

from __future__ import annotations

import copy
import io
from dataclasses import replace

import pytest

from sip_controller.config import Settings
from sip_controller.simulator import harness, steered_demo
from sip_controller.simulator.steered_demo import CONTEXT, SAY_NEXT, SAY_NOW, check_steered

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
TOKEN = "e2e-admin-token-steered-0123"


async def test_the_steered_call_is_steered_and_checked_and_a_missing_effect_is_a_problem() -> None:
    settings = harness.with_demo_analysis(Settings())
    async with harness.running_stack(settings, time_scale=0.2, scale_controller=True, admin_token=TOKEN) as st:
        outcome = await steered_demo.run_steered(st, timeout=30.0)
    assert outcome.ok, outcome.problems
    call, record = outcome.sim, outcome.record
    assert call is not None
    assert record is not None
    assert record.ended_reason == "agent_end_call"
    assert [line.split(" “")[0] for _, line in outcome.operator] == [
        "POST /v1/calls/{id}/say when=now",
        "POST /v1/calls/{id}/context",
        "POST /v1/calls/{id}/say when=next",
    ]
    assert all(line.endswith("→ 202") for _, line in outcome.operator)
    assert outcome.analysis is not None
    assert outcome.analysis["status"] == "completed"
    out = io.StringIO()
    steered_demo.print_steered(outcome, out)
    text = out.getvalue()
    assert f"model       received a system message: “{CONTEXT}”" in text
    assert f"assistant   “{SAY_NEXT}”" in text
    assert text.rstrip().endswith("steered: ok")

    # what the checks catch: a context that never reached the model, a next line that cut the answer off, a line
    # missing from the controller's transcript, an operator's text on the timeline
    no_context = copy.copy(call)
    no_context.client_events = [e for e in call.client_events if e.type != "conversation.item.create"]
    assert "the simulator's model never received the context as a system message" in check_steered(no_context, record)

    cut = copy.copy(call)
    cut.responses = [replace(r, audio_cleared=r.transcript == steered_demo.ANSWER) for r in call.responses]
    assert "the say-next line cut off the answer it should have waited for" in check_steered(cut, record)

    unsaid = copy.copy(record)
    unsaid.transcripts = [t for t in unsaid.transcripts if t.text != SAY_NOW]
    assert f"the controller's transcript lacks the line “{SAY_NOW}”" in check_steered(call, unsaid)

    leaky = copy.copy(record)
    leaky.timeline = [*record.timeline, (1.0, f"control: {CONTEXT}")]
    assert "the controller's timeline holds an operator's text" in check_steered(call, leaky)
