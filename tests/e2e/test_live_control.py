"""End to end (#17): an operator steers a live call through the admin API while the simulator's caller talks:
a say line the caller hears word for word, a context message that reaches the model as a system item, and a
mute during which the caller is still transcribed but not answered, then an unmute."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from sip_controller.agent.profile import AgentProfile
from sip_controller.config import Settings
from sip_controller.simulator import CallSpec, Step, harness
from sip_controller.simulator.records import SimCall
from sip_controller.simulator.scenario import HoldMusic, ToolCall

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
SCALE = 0.05
TOKEN = "e2e-admin-token-0123456789"
LINE = "Your parcel arrives tomorrow before noon."


async def until(what: str, ok: Callable[[], bool], timeout: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not ok():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def answering(call: SimCall) -> bool | None:
    td = ((call.session.get("audio") or {}).get("input") or {}).get("turn_detection") or {}
    value = td.get("create_response", True)
    return value if isinstance(value, bool) else None


async def test_say_context_mute_and_unmute_steer_a_live_call() -> None:
    steps = [
        Step(wait=80),  # the operator says a line, adds context and mutes
        Step(say="Is anyone there?"),  # muted: heard and transcribed, not answered
        Step(wait=60),  # the operator unmutes
        Step(say="Hello again.", reply="Yes, I am here."),
        Step(hangup=True),
    ]
    spec = CallSpec(name="steered", max_call_seconds=600, steps=steps)
    settings = Settings(profiles={"default": AgentProfile()})
    async with harness.running_stack(settings, time_scale=SCALE, admin_token=TOKEN) as st:
        call = await st.sim.place_call(spec)
        cid = call.call_id
        async with httpx.AsyncClient(base_url=st.server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            await until("the greeting", lambda: call.greeting_heard and st.runtime.registry.supervisor(cid) is not None)
            said = await api.post(f"/v1/calls/{cid}/say", json={"text": LINE, "when": "now"})
            assert said.status_code == 202, said.text
            await until("the line heard", lambda: any(
                r.transcript == LINE and r.audio_stopped_at is not None for r in call.responses))  # fmt: skip
            (line,) = [r for r in call.responses if r.transcript == LINE]
            assert (line.metadata or {}).get("sipctl") == "say"

            context = await api.post(f"/v1/calls/{cid}/context", json={"text": "Offer free delivery."})
            assert context.status_code == 202

            def system_items() -> list[str]:
                items = [e.payload["item"] for e in call.client_events if e.type == "conversation.item.create"]
                return [c["text"] for i in items if i.get("role") == "system" for c in i["content"]]

            await until("the context item", lambda: "Offer free delivery." in system_items())

            assert (await api.post(f"/v1/calls/{cid}/mute")).status_code == 202
            await until("the mute in force", lambda: answering(call) is False)
            before = len(call.responses)
            await until("the caller heard while muted",
                        lambda: any(t["text"] == "Is anyone there?" for t in call.transcripts), timeout=10)  # fmt: skip
            record = st.runtime.registry.get(cid)
            assert record is not None
            await until("the controller's transcript", lambda: any(
                t.text == "Is anyone there?" for t in record.transcripts))  # fmt: skip
            await asyncio.sleep(0.3)
            assert len(call.responses) == before  # not answered

            assert (await api.post(f"/v1/calls/{cid}/unmute")).status_code == 202
            await until("the unmute in force", lambda: answering(call) is True)
        ended = await st.sim.wait_ended(cid, 20)
        final = await st.runtime.registry.wait_ended(cid, 10)
    assert any(r.transcript == "Yes, I am here." and r.source == "auto" for r in ended.responses)
    marks = [what for _, what in final.timeline if what.startswith("control:")]
    assert marks[:2] == [f"control: say now from operator ({len(LINE)} chars)", "control: say line completed"]
    assert "control: context from operator added (20 chars)" in marks
    assert "control: mute from operator" in marks
    assert "control: unmute from operator" in marks
    assert LINE in [t.text for t in final.transcripts if t.role == "assistant"]


def auto(call: SimCall) -> int:
    """The responses the model made on its own (turn detection), not asked for by the controller."""
    return sum(r.source == "auto" for r in call.responses)


async def test_an_agent_muted_on_hold_stays_muted_when_the_person_is_back_until_it_is_unmuted() -> None:
    """Mute and hold mode compose (#17): muted while on hold, the agent does not answer the person who comes back
    (the hold ends, the agent stays muted), the operator's say line is heard, and once unmuted it answers again."""
    steps = [
        Step(say="Please hold while I get billing on the line.", tool=ToolCall(name="wait_on_hold")),
        Step(hold_music=HoldMusic(seconds=60, every=20, segment=4)),  # the operator mutes meanwhile
        Step(say="Hi, this is Dana from billing."),  # the hold ends; muted: not answered
        Step(wait=80),  # the operator says a line, then unmutes
        Step(say="Is the claim settled?", reply="Yes, claim 4471 is settled."),
        Step(hangup=True),
    ]
    spec = CallSpec(name="muted-on-hold", max_call_seconds=900, steps=steps)
    profile = AgentProfile.model_validate({"tools": ["end_call", "wait_on_hold"], "hold": {}})
    settings = Settings(profiles={"default": profile})
    async with harness.running_stack(settings, time_scale=SCALE, admin_token=TOKEN) as st:
        call = await st.sim.place_call(spec)
        cid = call.call_id
        async with httpx.AsyncClient(base_url=st.server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            await until("the call", lambda: st.runtime.registry.get(cid) is not None)
            record = st.runtime.registry.get(cid)
            assert record is not None

            def marked(text: str) -> bool:
                return any(what.startswith(text) for _, what in record.timeline)

            await until("the hold in force", lambda: marked("session.updated: hold mode in force"), timeout=10)
            muted = await api.post(f"/v1/calls/{cid}/mute")
            assert muted.status_code == 202, muted.text  # on hold: taken (was 409)
            await until("the mute in force", lambda: marked("session.updated: mute in force"))
            before = auto(call)
            await until("the person back, the hold over", lambda: marked("hold mode off"), timeout=10)
            assert marked("hold mode off: a person is back (classifier); muted: the agent waits for the operator")
            await until("the end of hold in force", lambda: marked("session.updated: end of hold in force"))
            assert answering(call) is False  # the hold's end kept the mute
            await until("Dana heard", lambda: any("Dana" in t.text for t in record.transcripts))
            await asyncio.sleep(0.3)
            assert auto(call) == before  # heard and transcribed, never answered on its own

            said = await api.post(f"/v1/calls/{cid}/say", json={"text": LINE, "when": "now"})
            assert said.status_code == 202
            await until("the line heard", lambda: any(
                r.transcript == LINE and r.audio_stopped_at is not None for r in call.responses))  # fmt: skip
            assert (await api.post(f"/v1/calls/{cid}/unmute")).status_code == 202
            await until("the unmute in force", lambda: answering(call) is True)
        ended = await st.sim.wait_ended(cid, 30)
        final = await st.runtime.registry.wait_ended(cid, 10)
    assert any(r.transcript == "Yes, claim 4471 is settled." and r.source == "auto" for r in ended.responses)
    assert final.hold_s > 0
    marks = [what for _, what in final.timeline if what.startswith("control:")]
    assert marks[0] == "control: mute from operator (on hold: kept when the hold ends)"
    assert "control: unmute from operator" in marks
