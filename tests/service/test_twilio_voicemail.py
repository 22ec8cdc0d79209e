"""Voicemail through the real app (#16): a call placed with outbound.voicemail asks Twilio for asynchronous
answering-machine detection; the signed verdict on /twilio/status reaches the call's supervisor, which hangs up
on Twilio (Calls API, Status=completed) and OpenAI, or leaves the message after the beep. Twilio's Calls API
and OpenAI's REST are mocked with respx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import pytest

from sip_controller.agent.profile import AgentProfile, Outbound, Voicemail
from sip_controller.config import Limits, Settings, TwilioSettings
from tests.service.test_twilio_routes import (
    ACCOUNT,
    ADMIN,
    PLACED_SID,
    PUBLIC,
    TWILIO,
    bearer,
    correlation,
    openai_webhook,
    post_signed,
    sip_uri,
)
from tests.servicekit import Service, openai_router, running_service

pytestmark = pytest.mark.anyio

SETTINGS = Settings(
    profiles={
        "default": AgentProfile(),
        "hangs_up": AgentProfile(outbound=Outbound(machine_detection="Enable", voicemail=Voicemail(action="hangup"))),
        "leaves": AgentProfile(
            variables=("first_name",),
            outbound=Outbound(machine_detection="DetectMessageEnd", voicemail=Voicemail(
                action="leave_message", message="Hi {{ var:first_name }}, please call us back.")),
        ),
    },
    limits=Limits(hangup_close_wait_s=0.1),
    twilio=TwilioSettings(from_number="+18005550199"),
)  # fmt: skip


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    router = openai_router(None)
    calls = rf"/2010-04-01/Accounts/{ACCOUNT}/Calls"
    router.post(path__regex=rf"{calls}\.json$", name="twilio_create").respond(
        201, json={"sid": PLACED_SID, "status": "queued"}
    )
    router.post(path__regex=rf"{calls}/{PLACED_SID}\.json$", name="twilio_update").respond(
        200, json={"sid": PLACED_SID, "status": "completed"}
    )
    async with running_service(ADMIN, settings=SETTINGS, twilio=TWILIO, router=router) as svc:
        yield svc


async def answered_call(svc: Service, profile: str, variables: dict[str, str], call_id: str) -> str:
    """Place a call with ``profile``; Twilio answers and bridges it; its sideband attaches. The outbound id."""
    answer = await svc.client.post("/v1/outbound", json={"to": "+14155550123", "profile": profile,
                                                         "variables": variables}, headers=bearer())  # fmt: skip
    assert answer.status_code == 201
    placed = answer.json()
    form = dict(parse_qsl(svc.router.routes["twilio_create"].calls.last.request.content.decode()))
    status_url = f"{PUBLIC}/twilio/status?leg={placed['id']}"
    assert (form["AsyncAmd"], form["AsyncAmdStatusCallback"], form["AsyncAmdStatusCallbackMethod"]) == (
        "true", status_url, "POST"
    )
    await post_signed(svc, f"/twilio/status?leg={placed['id']}", {"CallSid": PLACED_SID, "CallStatus": "in-progress"})
    await openai_webhook(svc, call_id, [{"name": "X-Sipctl-Correlation", "value": correlation(sip_uri(form["Twiml"]))}])
    async with asyncio.timeout(5):
        while call_id not in svc.connector.attached:
            await asyncio.sleep(0.01)
    return str(placed["id"])


async def amd(svc: Service, outbound_id: str, verdict: str) -> None:
    answer = await post_signed(svc, f"/twilio/status?leg={outbound_id}", {"CallSid": PLACED_SID,
                                                                           "AnsweredBy": verdict})  # fmt: skip
    assert answer.status_code == 200


async def test_a_machine_is_hung_up_on_through_twilio_and_reported_as_voicemail(service: Service) -> None:
    outbound_id = await answered_call(service, "hangs_up", {}, "rtc_vm1")
    await amd(service, outbound_id, "machine_start")
    async with asyncio.timeout(5):
        while service.router.routes["twilio_update"].call_count == 0 or service.accepts() == 0:
            await asyncio.sleep(0.01)
        while service.router.routes["hangup"].call_count == 0:
            await asyncio.sleep(0.01)
    update = dict(parse_qsl(service.router.routes["twilio_update"].calls.last.request.content.decode()))
    assert update == {"Status": "completed"}
    service.connector.attached["rtc_vm1"].close_from_server()
    record = await service.runtime.registry.wait_ended("rtc_vm1", 5)
    assert record.ended_reason == "voicemail"
    await service.runtime.registry.finished_written(5)
    report = await service.store.get_report("rtc_vm1")
    assert report is not None
    assert (report["ended_reason"], report["answered_by"]) == ("voicemail", "machine")
    twilio = report["twilio"]
    assert isinstance(twilio, dict)
    assert twilio["answered_by"] == "machine_start"


async def test_the_message_is_left_after_the_beep(service: Service) -> None:
    outbound_id = await answered_call(service, "leaves", {"first_name": "Ada"}, "rtc_vm2")
    sideband = service.connector.attached["rtc_vm2"]
    await amd(service, outbound_id, "machine_end_beep")

    def messages() -> list[dict[str, Any]]:
        return [e for e in sideband.sent if e.get("type") == "response.create"
                and e["response"].get("metadata", {}).get("sipctl") == "voicemail"]  # fmt: skip

    async with asyncio.timeout(5):
        while not messages():
            await asyncio.sleep(0.01)
    [request] = messages()
    assert '"Hi Ada, please call us back."' in request["response"]["instructions"]
    assert service.router.routes["twilio_update"].call_count == 0  # the message first
    meta = request["response"]["metadata"]
    response = {"id": "r_vm", "output": [], "metadata": meta}
    for event in (
        {"type": "response.created", "response": {**response, "status": "in_progress"}},
        {"type": "output_audio_buffer.started", "response_id": "r_vm"},
        {"type": "response.done", "response": {**response, "status": "completed"}},
        {"type": "output_audio_buffer.stopped", "response_id": "r_vm"},
    ):
        sideband.push(json.dumps(event))
    async with asyncio.timeout(5):
        while service.router.routes["hangup"].call_count == 0:
            await asyncio.sleep(0.01)
    sideband.close_from_server()
    record = await service.runtime.registry.wait_ended("rtc_vm2", 5)
    assert record.ended_reason == "voicemail"


async def test_a_verdict_before_the_openai_call_is_acted_on_when_it_starts(service: Service) -> None:
    answer = await service.client.post("/v1/outbound", json={"to": "+14155550123", "profile": "hangs_up"},
                                       headers=bearer())  # fmt: skip
    placed = answer.json()
    form = dict(parse_qsl(service.router.routes["twilio_create"].calls.last.request.content.decode()))
    await amd(service, placed["id"], "machine_start")  # before OpenAI's webhook
    await openai_webhook(service, "rtc_vm3", [{"name": "X-Sipctl-Correlation",
                                              "value": correlation(sip_uri(form["Twiml"]))}])  # fmt: skip
    async with asyncio.timeout(5):
        while service.router.routes["twilio_update"].call_count == 0:
            await asyncio.sleep(0.01)
    record = service.runtime.registry.get("rtc_vm3")
    assert record is not None
    assert record.twilio is not None
    assert record.twilio["answered_by"] == "machine_start"


async def test_a_verdict_that_lands_while_the_call_goes_live_is_read_from_the_row(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#16: the verdict reached another replica after this one matched the Twilio call (no verdict on its row yet)
    and before the call was live in the store (the command could go nowhere): the row, read once more when the call
    starts, holds it."""
    answer = await service.client.post("/v1/outbound", json={"to": "+14155550123", "profile": "hangs_up"},
                                       headers=bearer())  # fmt: skip
    placed = answer.json()
    form = dict(parse_qsl(service.router.routes["twilio_create"].calls.last.request.content.decode()))
    store = service.store
    admit = store.admit

    async def verdict_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # what the other replica's /twilio/status wrote (its command found no live call: nothing else)
        await store.update_twilio_call(placed["id"], answered_by="machine_start")
        return await admit(*args, **kwargs)

    monkeypatch.setattr(store, "admit", verdict_meanwhile)
    await openai_webhook(service, "rtc_vm4", [{"name": "X-Sipctl-Correlation",
                                              "value": correlation(sip_uri(form["Twiml"]))}])  # fmt: skip
    async with asyncio.timeout(5):
        while service.router.routes["twilio_update"].call_count == 0:  # hung up on through Twilio
            await asyncio.sleep(0.01)
    record = service.runtime.registry.get("rtc_vm4")
    assert record is not None
    assert record.twilio is not None
    assert record.twilio["answered_by"] == "machine_start"
