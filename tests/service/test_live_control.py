"""Live call control through the real app (#17): POST /v1/calls/{id}/say, /context, /mute and /unmute reach
the call's sideband as the right client events, are validated (422 naming the field), refused while the call is
ending (409) or unknown (404), recorded on the report's timeline, and work from a replica that does not own the
call (the store's commands table, carried out by the owner)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sip_controller.realtime.sideband import FakeSideband
from sip_controller.service import history
from tests.service.test_replicas import replica
from tests.servicekit import Service, running_service

pytestmark = pytest.mark.anyio

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin() -> AsyncIterator[Service]:
    async with running_service(TOKEN) as service:
        yield service


async def sent(sideband: FakeSideband, match: Any, timeout: float = 5) -> dict[str, Any]:
    """The first client event the controller sent that ``match`` accepts (waiting for it)."""
    async with asyncio.timeout(timeout):
        while True:
            for event in sideband.sent:
                if match(event):
                    return dict(event)
            await asyncio.sleep(0.01)


def is_say(event: dict[str, Any]) -> bool:
    response = event.get("response") or {}
    return event["type"] == "response.create" and (response.get("metadata") or {}).get("sipctl") == "say"


def timeline(service: Service, call_id: str) -> list[str]:
    record = service.runtime.registry.get(call_id)
    assert record is not None
    return [what for _, what in record.timeline if what.startswith("control:")]


async def test_say_reaches_the_sideband_as_a_tagged_response_for_exactly_that_line(admin: Service) -> None:
    await admin.place("rtc_say")
    response = await admin.client.post("/v1/calls/rtc_say/say", headers=AUTH, json={"text": " Your parcel is late. "})
    assert response.status_code == 202
    assert response.json() == {"status": "queued", "call_id": "rtc_say", "kind": "say", "when": "now"}
    event = await sent(admin.connector.attached["rtc_say"], is_say)
    assert event["response"]["instructions"].endswith('"Your parcel is late."')
    assert event["response"]["tool_choice"] == "none"
    assert timeline(admin, "rtc_say") == ["control: say now from operator (20 chars)"]


async def test_context_reaches_the_model_as_a_system_message(admin: Service) -> None:
    await admin.place("rtc_ctx")
    response = await admin.client.post("/v1/calls/rtc_ctx/context", headers=AUTH, json={"text": "Offer 10% off."})
    assert response.status_code == 202
    event = await sent(admin.connector.attached["rtc_ctx"], lambda e: e["type"] == "conversation.item.create")
    assert event["item"] == {"type": "message", "role": "system",
                             "content": [{"type": "input_text", "text": "Offer 10% off."}]}  # fmt: skip


async def test_mute_and_unmute_update_the_turn_detection_restating_the_codec(admin: Service) -> None:
    await admin.place("rtc_mute")
    sideband = admin.connector.attached["rtc_mute"]
    assert (await admin.client.post("/v1/calls/rtc_mute/mute", headers=AUTH)).status_code == 202

    def update_with(create_response: bool) -> Any:
        def match(e: dict[str, Any]) -> bool:
            td = ((e.get("session") or {}).get("audio") or {}).get("input", {}).get("turn_detection") or {}
            return e["type"] == "session.update" and td.get("create_response") is create_response

        return match

    muted = await sent(sideband, update_with(False))
    assert muted["session"]["type"] == "realtime"
    assert muted["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert muted["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert muted["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] is False
    sideband.push({"type": "session.updated", "session": {"type": "realtime"}})
    await admin.say("rtc_mute", "Is anyone there?")  # still transcribed
    assert (await admin.client.post("/v1/calls/rtc_mute/unmute", headers=AUTH)).status_code == 202
    unmuted = await sent(sideband, update_with(True))
    assert unmuted["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] is True


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("say", b"{", "JSON"),
        ("say", b"[]", "object"),
        ("say", json.dumps({}).encode(), "`text` is required"),
        ("say", json.dumps({"text": "  "}).encode(), "`text` must not be empty"),
        ("say", json.dumps({"text": "x" * 1001}).encode(), "`text` must be at most 1000"),
        ("say", json.dumps({"text": "hi\u0007"}).encode(), "control characters"),
        ("say", json.dumps({"text": "hi", "when": "later"}).encode(), "`when`"),
        ("say", json.dumps({"text": "hi", "voice": "x"}).encode(), "unknown field `voice`"),
        ("context", json.dumps({"text": 5}).encode(), "`text` must be a string"),
        ("context", json.dumps({"text": "x", "when": "now"}).encode(), "unknown field `when`"),
    ],
)
async def test_bodies_are_validated_naming_the_field(admin: Service, path: str, body: bytes, field: str) -> None:
    await admin.place("rtc_bad")
    response = await admin.client.post(f"/v1/calls/rtc_bad/{path}", headers=AUTH, content=body)
    assert response.status_code == 422
    assert field in response.json()["error"]
    assert timeline(admin, "rtc_bad") == []


async def test_refused_with_409_while_ending_and_404_for_no_such_call(admin: Service) -> None:
    assert (await admin.client.post("/v1/calls/nope/mute", headers=AUTH)).status_code == 404
    await admin.place("rtc_end")
    assert (await admin.client.post("/v1/calls/rtc_end/hangup", headers=AUTH)).status_code == 202  # a goodbye
    sideband = admin.connector.attached["rtc_end"]
    await sent(sideband, lambda e: (e.get("response") or {}).get("metadata", {}).get("sipctl") == "goodbye")
    for path, body in (("say", {"text": "One more thing."}), ("context", {"text": "x"}), ("mute", None)):
        response = await admin.client.post(f"/v1/calls/rtc_end/{path}", headers=AUTH, json=body)
        assert response.status_code == 409, path
        assert response.json() == {"error": "the call is ending"}
    assert not any(is_say(e) for e in sideband.sent)


# ---- from another replica -------------------------------------------------------------------------------------


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Service, Service]]:
    async with replica(tmp_path / "state.db") as a, replica(tmp_path / "state.db") as b:
        yield a, b


async def test_a_say_and_a_mute_sent_to_the_other_replica_are_carried_out_by_the_owner(
    pair: tuple[Service, Service],
) -> None:
    a, b = pair
    await a.place("rtc_r")
    response = await b.client.post("/v1/calls/rtc_r/say", headers=AUTH, json={"text": "Hello from B.", "when": "next"})
    assert response.status_code == 202
    body = response.json()
    assert body["kind"] == "say"
    assert body["when"] == "next"
    assert body["owner"] == history.process_id(a.runtime)
    assert isinstance(body["command_id"], int)
    assert "text" not in body  # the operator's line is not echoed
    sideband = a.connector.attached["rtc_r"]
    event = await sent(sideband, is_say, timeout=10)
    assert event["response"]["instructions"].endswith('"Hello from B."')
    assert (await b.client.post("/v1/calls/rtc_r/mute", headers=AUTH)).status_code == 202
    await sent(sideband, lambda e: e["type"] == "session.update" and "create_response" in json.dumps(e), timeout=10)
    assert "control: mute from operator" in timeline(a, "rtc_r")
    assert not b.connector.attached  # B only passed them on
