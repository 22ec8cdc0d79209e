"""``interrupt_wait``: how long a barging-in caller waits for assistant audio to start, so that a script can talk
over a line the controller says later (a max-duration wrap-up, a goodbye) rather than only one already playing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sip_controller.simulator import CallSpec, Step, parse_scenario
from sip_controller.simulator.scenario import ScenarioError
from tests.simulator.test_simulator import SCALE, events_until, next_event, running, send, types

pytestmark = pytest.mark.anyio

LONG_LINE = " ".join(f"word{i}" for i in range(30))  # 9 s of speech


def say(line: str) -> dict[str, Any]:
    return {"type": "response.create", "response": {"instructions": f'Say "{line}"'}}


@pytest.mark.parametrize(("interrupt_wait", "barges_in"), [(None, False), (60.0, True)])
async def test_a_caller_waits_interrupt_wait_for_a_line_to_barge_into(
    interrupt_wait: float | None, barges_in: bool
) -> None:
    # no greeting: the caller's step starts at once and waits for assistant audio; the line comes 10 s later
    step = Step(say="Hang on.", interrupt=0.5, interrupt_wait=interrupt_wait)
    spec = CallSpec(name="late-line", greeting_wait=0, steps=[step])
    async with running() as env:
        call = await env.sim.place_call(spec)
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await asyncio.sleep(10 * SCALE)
            await send(ws, say(LONG_LINE))
            last = "output_audio_buffer.cleared" if barges_in else "output_audio_buffer.stopped"
            events = await events_until(ws, last)
    assert call.barge_ins == (1 if barges_in else 0)
    assert ("output_audio_buffer.cleared" in types(events)) is barges_in
    assert call.responses[0].audio_cleared is barges_in


def test_interrupt_wait_goes_with_interrupt() -> None:
    scenario = parse_scenario(
        {"name": "s", "calls": [{"name": "c", "steps": [{"say": "Wait!", "interrupt": 0.5, "interrupt_wait": 90}]}]}
    )
    assert scenario.calls[0].steps[0].interrupt_wait == 90
    with pytest.raises(ScenarioError, match="interrupt_wait only goes with interrupt"):
        parse_scenario({"name": "s", "calls": [{"name": "c", "steps": [{"say": "Wait!", "interrupt_wait": 90}]}]})
    with pytest.raises(ScenarioError, match="interrupt_wait only go with say"):
        parse_scenario({"name": "s", "calls": [{"name": "c", "steps": [{"wait": 1, "interrupt_wait": 90}]}]})
