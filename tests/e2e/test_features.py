"""End to end: the agent features against the simulator (real uvicorn, real WebSockets, loopback)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sip_controller.agent.profile import AgentProfile, Dtmf, DtmfAction, HttpTool, Transfer, Watchdogs
from sip_controller.config import Callers, Settings
from sip_controller.config import Route as CallRoute
from sip_controller.service.loopback import RunningServer, serve
from sip_controller.simulator import CallSpec, Expectation, Step, ToolCall, harness

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
SCALE = 0.05
TARGETS = {"sales": "tel:+14155550199", "support": "sip:support@pbx.example.com"}


def settings_for(profile: AgentProfile, **extra: Any) -> Settings:
    return Settings(profiles={"default": profile}, **extra)


def transfer_call(target: str, then: str = "Transferring you now.") -> Step:
    return Step(say="Can I talk to someone?", tool=ToolCall(name="transfer_call", arguments={"target": target}),
                then=then)


async def test_a_verified_transfer_counts_only_when_the_call_leaves() -> None:
    profile = AgentProfile(tools=("end_call", "transfer_call"), transfer=Transfer(targets=TARGETS))
    spec = CallSpec(name="transfer", refer="succeed", steps=[transfer_call("sales")],
                    expect=Expectation(ended_reason="transferred", ended_by="refer", refers=["tel:+14155550199"]))
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []
    assert outcome.record is not None
    assert outcome.record.transfer_target == "sales"
    assert outcome.record.transfer_outcome == "transferred"
    handoff = [r for r in outcome.sim.responses if r.transcript == "Transferring you now."]
    assert handoff
    assert handoff[0].audio_stopped_at is not None  # the caller heard the whole handoff line
    timeline = [what for _, what in outcome.record.timeline]
    assert "transfer to sales: refer (handoff line heard)" in timeline


async def test_a_refer_that_changes_nothing_is_a_failed_transfer_and_the_call_ends_politely() -> None:
    transfer = Transfer.model_construct(targets=TARGETS, verify_window_s=0.5, on_failure="end_call")
    profile = AgentProfile(tools=("end_call", "transfer_call"), transfer=transfer)
    spec = CallSpec(name="transfer-ignored", refer="ignore", max_call_seconds=400, steps=[transfer_call("support")],
                    expect=Expectation(ended_reason="transfer_failed", ended_by="agent", hangup_after_audio=True))
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []
    assert outcome.record is not None
    assert outcome.record.transfer_outcome == "failed"
    assert outcome.sim.refers == ["sip:support@pbx.example.com"]


async def test_a_failed_transfer_falls_back_to_the_next_target() -> None:
    transfer = Transfer.model_construct(targets=TARGETS, verify_window_s=0.5, on_failure="next_target")
    profile = AgentProfile(tools=("end_call", "transfer_call"), transfer=transfer)
    spec = CallSpec(name="transfer-fallback", refer="ignore", max_call_seconds=400, steps=[transfer_call("sales")])
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.sim.refers == ["tel:+14155550199", "sip:support@pbx.example.com"]
    assert outcome.record is not None
    assert outcome.record.ended_reason == "transfer_failed"


async def test_silence_gets_one_nudge_then_a_goodbye() -> None:
    watch = Watchdogs.model_construct(max_duration_s=600, wrap_up_before_s=30, silence_timeout_s=0.6,
                                      budget_usd=None)
    profile = AgentProfile(watchdogs=watch)
    spec = CallSpec(name="silent", max_call_seconds=400, steps=[Step(wait=300)],
                    expect=Expectation(ended_reason="silence_timeout", ended_by="agent", hangup_after_audio=True))
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []
    assert outcome.record is not None
    assert any("silence: nudge" in what for _, what in outcome.record.timeline)


async def test_max_duration_wraps_up_then_ends() -> None:
    watch = Watchdogs.model_construct(max_duration_s=1.5, wrap_up_before_s=0.5, silence_timeout_s=None,
                                      budget_usd=None)
    profile = AgentProfile(watchdogs=watch)
    steps = [Step(say="Let me tell you a long story."), Step(wait=300)]
    spec = CallSpec(name="long", max_call_seconds=400, steps=steps,
                    expect=Expectation(ended_reason="max_duration", ended_by="agent", hangup_after_audio=True))
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []
    assert outcome.record is not None
    assert any("wrap-up" in what for _, what in outcome.record.timeline)


async def test_a_cost_budget_ends_the_call() -> None:
    profile = AgentProfile(watchdogs=Watchdogs(budget_usd=0.0001))
    spec = CallSpec(name="budget", max_call_seconds=400,
                    steps=[Step(say="Tell me everything.", reply="Well, there is a lot to say."), Step(wait=300)],
                    expect=Expectation(ended_reason="budget_exceeded", ended_by="agent"))
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []
    assert outcome.record is not None
    assert outcome.record.cost_usd > 0.0001


async def test_keypad_digits_reach_the_model_and_mapped_digits_act() -> None:
    profile = AgentProfile(
        tools=("end_call", "transfer_call"),
        transfer=Transfer(targets=TARGETS),
        dtmf=Dtmf(actions={"0": DtmfAction(action="transfer", target="support")}),
    )
    spec = CallSpec(name="keypad", refer="succeed", steps=[Step(dtmf="1234#"), Step(wait=20), Step(dtmf="0")],
                    expect=Expectation(ended_reason="transferred", refers=["sip:support@pbx.example.com"]))
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []
    items = [e.payload for e in outcome.sim.client_events if e.type == "conversation.item.create"]
    texts = [c["text"] for i in items if i["item"]["type"] == "message" for c in i["item"]["content"]]
    assert texts == ["[keypad] The caller pressed: 1234#"]


@pytest.fixture
async def crm() -> AsyncIterator[tuple[RunningServer, list[dict[str, Any]], str]]:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    seen: list[dict[str, Any]] = []

    async def lookup(request: Request) -> JSONResponse:
        body = await request.body()
        Webhook(secret).verify(body, dict(request.headers))
        payload = json.loads(body)
        seen.append(payload)
        return JSONResponse({"order": payload["arguments"]["order"], "status": "shipped yesterday"})

    async with serve(Starlette(routes=[Route("/lookup", lookup, methods=["POST"])])) as server:
        yield server, seen, secret


async def test_an_http_tool_answers_the_model(
    crm: tuple[RunningServer, list[dict[str, Any]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, seen, secret = crm
    monkeypatch.setenv("CRM_SECRET", secret)
    tool = HttpTool(type="http", name="lookup_order", description="Look up an order.", url=f"{server.url}/lookup",
                    secret_env="CRM_SECRET",
                    parameters={"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]})
    profile = AgentProfile(tools=("end_call", tool))
    spec = CallSpec(name="tool", steps=[
        Step(say="Where is order 42?", tool=ToolCall(name="lookup_order", arguments={"order": "42"}),
             then="Your order shipped yesterday."),
        Step(hangup=True),
    ])
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert len(seen) == 1
    assert seen[0]["arguments"] == {"order": "42"}
    assert seen[0]["call"]["call_id"] == outcome.sim.call_id
    outputs = [json.loads(o["output"]) for o in outcome.sim.function_outputs]
    assert {"order": "42", "status": "shipped yesterday"} in outputs
    assert outcome.record is not None
    (call,) = [t for t in outcome.record.tool_calls if t.name == "lookup_order"]
    assert call.outcome == "ok"
    assert call.duration_s is not None
    assert any(r.transcript == "Your order shipped yesterday." for r in outcome.sim.responses)


async def test_calls_are_routed_by_dialed_number_and_screened_callers_are_rejected() -> None:
    settings = Settings(
        profiles={"default": AgentProfile(), "sales": AgentProfile(voice="cedar")},
        routes=(CallRoute(dialed=("+1888555*",), profile="sales"),),
        callers=Callers(deny=("+1900*",)),
    )
    async with harness.running_stack(settings, time_scale=SCALE) as st:
        sales = await harness.run_call(
            st, CallSpec(name="to-sales", dialed="+18885550123", steps=[Step(hangup=True)]), timeout=20
        )
        other = await harness.run_call(
            st, CallSpec(name="to-default", dialed="+18005550100", steps=[Step(hangup=True)]), timeout=20
        )
        denied = await harness.run_call(
            st, CallSpec(name="denied", caller="+19005550000", steps=[]), timeout=20
        )
    assert sales.record is not None
    assert sales.record.profile == "sales"
    assert sales.sim.accept_bodies[0]["audio"]["output"]["voice"] == "cedar"
    assert other.record is not None
    assert other.record.profile == "default"
    assert denied.sim.reject_status == 603
    assert denied.sim.accept_count == 0
    assert denied.record is not None
    assert denied.record.ended_reason == "rejected"
