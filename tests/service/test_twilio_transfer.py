"""Transfers of a call Twilio bridged (#16), through the real app: the controller redirects the Twilio call with
the Calls API (TwiML dialling the target) instead of OpenAI's /refer, and the transfer counts only once the call
leaves OpenAI, as on a trunk. Twilio's Calls API and OpenAI's REST are mocked with respx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

import pytest

from sip_controller.agent.profile import AgentProfile, Transfer
from sip_controller.config import Limits, Settings
from sip_controller.realtime.sideband import FakeSideband
from tests.service.test_twilio_routes import (
    ACCOUNT,
    ADMIN,
    TWILIO,
    bearer,
    correlation,
    openai_webhook,
    post_signed,
    sid,
)
from tests.servicekit import Service, openai_router, running_service

pytestmark = pytest.mark.anyio

TARGET = "tel:+14155550199"
TARGETS = {"sales": TARGET, "desk": "sip:desk@pbx.example.com"}
SETTINGS = Settings(
    profiles={"default": AgentProfile(tools=("end_call", "transfer_call"), transfer=Transfer(targets=TARGETS))},
    limits=Limits(hangup_close_wait_s=0.1),
)  # fmt: skip
CALL_SID = "CA" + "7" * 32


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    router = openai_router(None)
    router.post(path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}\.json$", name="twilio_update").respond(
        200, json={"sid": CALL_SID, "status": "in-progress"}
    )
    async with running_service(ADMIN, settings=SETTINGS, twilio=TWILIO, router=router) as svc:
        yield svc


async def bridged_call(svc: Service, call_id: str) -> FakeSideband:
    """A call to the number, bridged into OpenAI and attached; its sideband."""
    answer = await post_signed(svc, "/twilio/voice", {"CallSid": CALL_SID, "From": "+14155550123",
                                                      "To": "+18005550100"})  # fmt: skip
    await openai_webhook(svc, call_id, [{"name": "X-Sipctl-Correlation", "value": correlation(answer.text)}])
    async with asyncio.timeout(5):
        while call_id not in svc.connector.attached:
            await asyncio.sleep(0.01)
    return svc.connector.attached[call_id]


async def operator_transfer(svc: Service, sideband: FakeSideband, call_id: str, target: str) -> None:
    """The operator asks for the transfer; the model says the handoff line, heard to its end."""
    asked = await svc.client.post(f"/v1/calls/{call_id}/transfer", json={"target": target}, headers=bearer())
    assert asked.status_code == 202

    def lines() -> list[dict[str, object]]:
        return [e for e in sideband.sent if e.get("type") == "response.create"
                and e["response"].get("metadata", {}).get("sipctl") == "transfer"]  # fmt: skip

    async with asyncio.timeout(5):
        while not lines():
            await asyncio.sleep(0.01)
    meta = lines()[0]["response"]["metadata"]  # type: ignore[index]
    response = {"id": "r_ann", "output": [], "metadata": meta}
    for event in (
        {"type": "response.created", "response": {**response, "status": "in_progress"}},
        {"type": "output_audio_buffer.started", "response_id": "r_ann"},
        {"type": "response.done", "response": {**response, "status": "completed"}},
        {"type": "output_audio_buffer.stopped", "response_id": "r_ann"},
    ):
        sideband.push(json.dumps(event))


@pytest.mark.parametrize(("target", "noun", "text"), [("sales", "Number", "+14155550199"),
                                                      ("desk", "Sip", "sip:desk@pbx.example.com")])  # fmt: skip
async def test_the_twilio_call_is_redirected_to_the_target_and_counts_once_it_leaves_openai(
    service: Service, target: str, noun: str, text: str
) -> None:
    sideband = await bridged_call(service, "rtc_tr1")
    await operator_transfer(service, sideband, "rtc_tr1", target)
    update = service.router.routes["twilio_update"]
    async with asyncio.timeout(5):
        while update.call_count == 0:
            await asyncio.sleep(0.01)
    form = dict(parse_qsl(update.calls.last.request.content.decode()))
    [dial] = list(ET.fromstring(form["Twiml"]))
    assert [(child.tag, child.text) for child in dial] == [(noun, text)]
    assert service.router.routes["refer"].call_count == 0  # not OpenAI's /refer
    record = service.runtime.registry.get("rtc_tr1")
    assert record is not None
    assert record.ended_reason is None  # not yet: only once the call leaves OpenAI
    sideband.close_from_server()  # Twilio hung the OpenAI leg up
    record = await service.runtime.registry.wait_ended("rtc_tr1", 5)
    assert (record.ended_reason, record.transfer_target, record.transfer_outcome) == (
        "transferred", target, "transferred"
    )  # fmt: skip
    marks = [event for _, event in record.timeline]
    assert f"transfer to {target}: Twilio is dialling it, waiting for the call to leave" in marks
    await service.runtime.registry.finished_written(5)
    report = await service.store.get_report("rtc_tr1")
    assert report is not None
    assert report["transfer"] == {"target": target, "outcome": "transferred"}
    assert report["twilio_call_sid"] == CALL_SID


async def test_a_redirect_twilio_refuses_is_a_failed_transfer(service: Service) -> None:
    service.router.routes["twilio_update"].respond(
        400, json={"code": 21220, "message": "Call is not in-progress. Cannot redirect.", "status": 400}
    )
    sideband = await bridged_call(service, "rtc_tr2")
    await operator_transfer(service, sideband, "rtc_tr2", "sales")
    record = service.runtime.registry.get("rtc_tr2")
    assert record is not None
    async with asyncio.timeout(5):
        while record.transfer_outcome != "failed":
            await asyncio.sleep(0.01)
    assert any("refer failed: Twilio" in e and "21220" in e for e in record.errors)
    assert service.router.routes["refer"].call_count == 0
    sideband.close_from_server()
    ended = await service.runtime.registry.wait_ended("rtc_tr2", 5)
    assert ended.ended_reason != "transferred"


async def test_a_call_not_bridged_by_twilio_still_transfers_with_openais_refer(service: Service) -> None:
    await openai_webhook(service, "rtc_tr3", [{"name": "From", "value": "<sip:+14155550123@trunk.example.com>"},
                                              {"name": "X-Twilio-CallSid", "value": sid()}])  # fmt: skip
    async with asyncio.timeout(5):
        while "rtc_tr3" not in service.connector.attached:
            await asyncio.sleep(0.01)
    sideband = service.connector.attached["rtc_tr3"]
    await operator_transfer(service, sideband, "rtc_tr3", "sales")
    async with asyncio.timeout(5):
        while service.router.routes["refer"].call_count == 0:
            await asyncio.sleep(0.01)
    assert json.loads(service.router.routes["refer"].calls.last.request.content) == {"target_uri": TARGET}
    assert service.router.routes["twilio_update"].call_count == 0
