"""Parked holds (#16) through the real app: ``wait_on_hold`` with a long expected wait on a call Twilio bridged
parks the call (the Calls API moves it onto a ``<Gather>``), Twilio's listening rounds are answered until a
person is back, the fresh OpenAI leg is primed with the conversation, and the call is reported once, with its
legs and parked time, from its first leg's row. Twilio's Calls API and OpenAI's REST are mocked with respx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

import httpx
import pytest

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.parking import park_view
from sip_controller.config import Limits, Settings
from sip_controller.realtime.sideband import FakeSideband
from sip_controller.state.records import HistoryQuery
from tests.service.test_twilio_routes import ACCOUNT, ADMIN, TWILIO, correlation, openai_webhook, post_signed
from tests.servicekit import Service, openai_router, running_service

pytestmark = pytest.mark.anyio

CALL_SID = "CA" + "9" * 32
CALLER = "+14155550123"


def profile(detect: str = "phrases", **park: Any) -> AgentProfile:
    return AgentProfile.model_validate({
        "instructions": "You call billing about claim 4471.",
        "tools": ["end_call", "wait_on_hold"],
        "hold": {"detect": detect, "park": {"after_min": 10, "listen_timeout_s": 10, **park}},
    })  # fmt: skip


async def start(settings: Settings) -> AsyncIterator[Service]:
    router = openai_router(None)
    router.post(path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}\.json$", name="twilio_update").respond(
        200, json={"sid": CALL_SID, "status": "in-progress"}
    )
    router.post(path__regex=r"/responses$", name="responses").respond(200, json=verdict(True))
    async with running_service(ADMIN, settings=settings, twilio=TWILIO, router=router) as svc:
        yield svc


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    settings = Settings(profiles={"default": profile()}, limits=Limits(hangup_close_wait_s=0.1))
    async for svc in start(settings):
        yield svc


def verdict(person: bool) -> dict[str, Any]:
    return {
        "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-6-luna",
        "output": [{"type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": json.dumps({"person": person})}]}],
        "usage": {"input_tokens": 80, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 6},
    }  # fmt: skip


async def attached(svc: Service, call_id: str) -> FakeSideband:
    async with asyncio.timeout(5):
        while call_id not in svc.connector.attached:
            await asyncio.sleep(0.01)
    return svc.connector.attached[call_id]


async def holding_call(svc: Service, call_id: str, arguments: dict[str, Any], *, said: str | None = None
                       ) -> FakeSideband:  # fmt: skip
    """A call to the number, bridged and attached; the other side says ``said`` and the model calls wait_on_hold
    with ``arguments``. Its sideband."""
    answer = await post_signed(svc, "/twilio/voice", {"CallSid": CALL_SID, "From": CALLER, "To": "+18005550100"})
    await openai_webhook(svc, call_id, [{"name": "X-Sipctl-Correlation", "value": correlation(answer.text)}])
    sideband = await attached(svc, call_id)
    if said is not None:
        sideband.push(json.dumps({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i1",
                                  "content_index": 0, "transcript": said}))  # fmt: skip
    call = {"type": "function_call", "call_id": "c1", "name": "wait_on_hold", "arguments": json.dumps(arguments)}
    sideband.push(json.dumps({"type": "response.done", "response": {"id": "r1", "status": "completed",
                                                                    "output": [call]}}))  # fmt: skip
    return sideband


async def parked_call(svc: Service, call_id: str = "rtc_p1") -> str:
    """A call to the number, bridged and attached; the other side speaks, the model calls wait_on_hold expecting
    40 minutes, Twilio takes the redirect and hangs the OpenAI leg up. Returns the Twilio call's id."""
    sideband = await holding_call(svc, call_id, {"expected_minutes": 40, "reason": "status of claim 4471"},
                                  said="Acme billing, please hold, it may be 40 minutes.")  # fmt: skip
    update = svc.router.routes["twilio_update"]
    async with asyncio.timeout(5):
        while update.call_count == 0:
            await asyncio.sleep(0.01)
    form = dict(parse_qsl(update.calls.last.request.content.decode()))
    [gather] = list(ET.fromstring(form["Twiml"]))
    assert gather.tag == "Gather"
    assert (gather.get("input"), gather.get("actionOnEmptyResult"), gather.get("timeout")) == ("speech", "true", "10")
    sideband.close_from_server()  # Twilio's redirect ended the <Dial> into OpenAI
    record = await svc.runtime.registry.wait_ended(call_id, 5)
    assert record.ended_reason == "parked"
    await svc.runtime.registry.finished_written(5)
    row = await svc.store.get_twilio_call(call_sid=CALL_SID)
    assert row is not None
    assert row.park is not None
    assert (row.park["status"], row.park["legs"], row.park["spell"]) == ("parked", [call_id], 1)
    action = gather.get("action") or ""
    assert action == f"{TWILIO.public_url}/twilio/parked?twilio_id={row.id}&spell=1"
    return row.id


async def report_of(svc: Service, call_id: str) -> dict[str, Any]:
    report = await svc.store.get_report(call_id)
    assert report is not None
    return dict(report)


async def listen(svc: Service, twilio_id: str, heard: str | None, *, spell: int = 1) -> ET.Element:
    form = {"CallSid": CALL_SID, "CallStatus": "in-progress"}
    if heard is not None:
        form |= {"SpeechResult": heard, "Confidence": "0.9"}
    answer = await post_signed(svc, f"/twilio/parked?twilio_id={twilio_id}&spell={spell}", form)
    assert answer.status_code == 200, answer.text
    return ET.fromstring(answer.text)


async def test_a_parked_call_is_bridged_to_a_primed_fresh_session_and_reported_once_with_its_legs(
    service: Service,
) -> None:
    twilio_id = await parked_call(service)
    for heard in ("[hold music]", None, "Your call is important to us"):  # music, silence, an announcement
        assert [child.tag for child in await listen(service, twilio_id, heard)] == ["Gather"]
    bridge = await listen(service, twilio_id, "Hi, thanks for holding, this is Dana from billing.")
    xml = ET.tostring(bridge, encoding="unicode")
    new_correlation = correlation(xml)
    row = await service.store.get_twilio_call(id=twilio_id)
    assert row is not None
    assert row.park is not None
    assert row.correlation == new_correlation
    assert row.park["status"] == "bridging"
    [spell] = row.park["spells"]
    assert (spell["listens"], spell["checks"]) == (4, 0)
    # the next leg: matched by the new correlation id, primed with the conversation and the open task
    await openai_webhook(service, "rtc_p2", [{"name": "X-Sipctl-Correlation", "value": new_correlation}])
    sideband = await attached(service, "rtc_p2")
    accept = json.loads(service.router.routes["accept"].calls.last.request.content)
    instructions = accept["instructions"]
    assert instructions.startswith("You call billing about claim 4471.")
    assert "continuing after a long hold" in instructions
    assert "status of claim 4471" in instructions  # the open task
    # what was said (the other side's words) comes as user messages, never as instructions
    assert "Acme billing" not in instructions
    assert "Dana" not in instructions
    async with asyncio.timeout(5):
        while not [e for e in sideband.sent if e.get("type") == "response.create"]:
            await asyncio.sleep(0.01)
    items = [e["item"] for e in sideband.sent if e.get("type") == "conversation.item.create"]
    texts = [item["content"][0]["text"] for item in items if item["role"] == "user"]
    assert "Them: Acme billing, please hold, it may be 40 minutes." in texts[0]  # the conversation so far
    assert texts[1].endswith("said: Hi, thanks for holding, this is Dana from billing.")  # their first words
    [opening] = [e for e in sideband.sent if e.get("type") == "response.create"]
    assert opening["response"]["instructions"].startswith("A person has just come back on the line")
    assert "Dana" not in opening["response"]["instructions"]
    sideband.close_from_server()  # the other side hung up
    ended = await service.runtime.registry.wait_ended("rtc_p2", 5)
    assert ended.ended_reason == "caller_hangup"
    await service.runtime.registry.finished_written(5)
    report = await report_of(service, "rtc_p1")  # the call's report is on its first leg's row
    assert report["call_id"] == "rtc_p1"
    assert report["ended_reason"] == "caller_hangup"
    assert [leg["call_id"] for leg in report["legs"]] == ["rtc_p1", "rtc_p2"]
    assert [leg["ended_reason"] for leg in report["legs"]] == ["parked", "caller_hangup"]
    dana = [t for t in report["transcript"] if t["text"] == "Hi, thanks for holding, this is Dana from billing."]
    assert [t["role"] for t in dana] == ["caller"]  # what Twilio heard, the line no session heard
    parked = report["parked"]
    assert len(parked["spells"]) == 1
    assert parked["parked_s"] >= 0
    assert parked["cost_saved_usd"] == pytest.approx(
        parked["hold_mode_cost_usd"] - parked["listen_cost_usd"] - parked["check_cost_usd"], abs=1e-6
    )
    leg2 = await service.store.get_call("rtc_p2")
    assert leg2 is not None
    assert leg2.ended_reason == "merged"
    page = await service.store.list_finished(HistoryQuery())
    assert [row.call_id for row in page.calls] == ["rtc_p1"]  # one call in the history


async def test_a_call_that_ends_while_parked_is_reported_from_its_parked_leg(service: Service) -> None:
    twilio_id = await parked_call(service)
    await listen(service, twilio_id, "[hold music]")
    answer = await post_signed(service, "/twilio/status", {"CallSid": CALL_SID, "CallStatus": "completed",
                                                           "CallDuration": "2400"})  # fmt: skip
    assert answer.status_code == 200
    report = await report_of(service, "rtc_p1")
    assert report["ended_reason"] == "caller_hangup"
    assert [leg["call_id"] for leg in report["legs"]] == ["rtc_p1"]
    assert report["parked"]["spells"][0]["listens"] == 1
    assert any(e["event"].startswith("ended while parked") for e in report["timeline"])
    row = await service.store.get_twilio_call(id=twilio_id)
    assert row is not None
    assert row.park is not None
    assert row.park["status"] == "closed"
    assert park_view(row.park) == {"status": "closed", "spell": 1, "since": row.park["since"], "listens": 1,
                                   "checks": 0, "legs": ["rtc_p1"], "spells_over": 0}  # fmt: skip
    # a callback after that changes nothing and keeps nothing open
    assert [child.tag for child in await listen(service, twilio_id, "hello?")] == ["Hangup"]


async def test_a_line_parked_too_long_is_given_up_politely() -> None:
    settings = Settings(profiles={"default": profile(max_parked_s=0.05)}, limits=Limits(hangup_close_wait_s=0.1))
    async for svc in start(settings):
        twilio_id = await parked_call(svc)
        await asyncio.sleep(0.1)
        answer = await listen(svc, twilio_id, "[hold music]")
        assert [child.tag for child in answer] == ["Say", "Hangup"]
        await post_signed(svc, "/twilio/status", {"CallSid": CALL_SID, "CallStatus": "completed"})
        report = await report_of(svc, "rtc_p1")
        assert report["ended_reason"] == "max_duration"


async def test_the_text_check_decides_when_no_phrase_is_heard() -> None:
    settings = Settings(profiles={"default": profile(detect="classifier")}, limits=Limits(hangup_close_wait_s=0.1))
    async for svc in start(settings):
        twilio_id = await parked_call(svc)
        checks = svc.router.routes["responses"]
        checks.respond(200, json=verdict(False))
        assert [c.tag for c in await listen(svc, twilio_id, "la la la")] == ["Gather"]
        checks.respond(200, json=verdict(True))
        assert [c.tag for c in await listen(svc, twilio_id, "Hello, Dana speaking")] == ["Dial"]
        body = json.loads(checks.calls.last.request.content)
        assert body["store"] is False
        assert body["metadata"] == {"sipctl_purpose": "park_check"}
        assert body["text"]["format"]["schema"]["required"] == ["person"]
        row = await svc.store.get_twilio_call(id=twilio_id)
        assert row is not None
        assert row.park is not None
        [spell] = row.park["spells"]
        assert spell["checks"] == 2
        assert spell["check_cost_usd"] > 0


async def test_bad_parked_callbacks_are_refused(service: Service) -> None:
    twilio_id = await parked_call(service)
    unsigned = await service.client.post(f"/twilio/parked?twilio_id={twilio_id}&spell=1",
                                         data={"AccountSid": ACCOUNT, "CallSid": CALL_SID})  # fmt: skip
    assert unsigned.status_code == 403
    assert (await post_signed(service, "/twilio/parked?twilio_id=out_nope&spell=1", {"CallSid": CALL_SID})
            ).status_code == 404  # fmt: skip
    other = await post_signed(service, f"/twilio/parked?twilio_id={twilio_id}&spell=1", {"CallSid": "CA" + "1" * 32})
    assert other.status_code == 404
    assert (await post_signed(service, "/twilio/parked?spell=x", {"CallSid": CALL_SID})).status_code == 400
    row = await service.store.get_twilio_call(id=twilio_id)
    assert row is not None
    assert row.park is not None
    assert row.park["listens"] == 0  # none of them counted


async def test_a_park_twilio_refuses_leaves_the_call_on_hold_mode(service: Service) -> None:
    service.router.routes["twilio_update"].respond(
        400, json={"code": 21220, "message": "Call is not in-progress. Cannot redirect.", "status": 400}
    )
    await holding_call(service, "rtc_p9", {"expected_minutes": 30})
    record = service.runtime.registry.get("rtc_p9")
    assert record is not None
    async with asyncio.timeout(5):
        while not any("parking failed" in e for e in record.errors):
            await asyncio.sleep(0.01)
    assert record.on_hold_since_s is not None
    assert record.ended_reason is None  # still on hold mode, still live
    row = await service.store.get_twilio_call(call_sid=CALL_SID)
    assert row is not None
    assert row.park is None  # the park was taken back


async def test_the_next_leg_comes_in_past_capacity_a_person_is_waiting() -> None:
    settings = Settings(profiles={"default": profile()}, limits=Limits(hangup_close_wait_s=0.1, max_concurrent_calls=1))
    async for svc in start(settings):
        twilio_id = await parked_call(svc)
        await svc.place("rtc_other")  # another call takes the one place while the first is parked
        bridge = ET.tostring(await listen(svc, twilio_id, "Thanks for holding, how can I help?"), encoding="unicode")
        await openai_webhook(svc, "rtc_p2", [{"name": "X-Sipctl-Correlation", "value": correlation(bridge)}])
        await attached(svc, "rtc_p2")
        assert svc.router.routes["reject"].call_count == 0
        record = svc.runtime.registry.get("rtc_p2")
        assert record is not None
        assert record.errors == []


async def test_a_restart_while_parked_loses_nothing(tmp_path: Path) -> None:
    """The park lives in the store: the process that parked the call goes away, another one on the same store
    answers Twilio's rounds, takes the next leg and reports the whole call once."""
    settings = Settings(profiles={"default": profile()}, limits=Limits(hangup_close_wait_s=0.1))
    path = str(tmp_path / "state.db")

    async def service_on(store_path: str) -> AsyncIterator[Service]:
        router = openai_router(None)
        router.post(path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}\.json$", name="twilio_update"
                    ).respond(200, json={"sid": CALL_SID, "status": "in-progress"})  # fmt: skip
        async with running_service(ADMIN, settings=settings, twilio=TWILIO, router=router,
                                   store_path=store_path) as svc:  # fmt: skip
            yield svc

    async for first in service_on(path):
        twilio_id = await parked_call(first)
        await listen(first, twilio_id, "[hold music]")
    async for second in service_on(path):  # a restart, or any other replica
        assert [c.tag for c in await listen(second, twilio_id, "[hold music]")] == ["Gather"]
        bridge = ET.tostring(await listen(second, twilio_id, "Thanks for holding, Dana here."), encoding="unicode")
        await openai_webhook(second, "rtc_p2", [{"name": "X-Sipctl-Correlation", "value": correlation(bridge)}])
        sideband = await attached(second, "rtc_p2")
        sideband.close_from_server()
        await second.runtime.registry.wait_ended("rtc_p2", 5)
        await second.runtime.registry.finished_written(5)
        report = await report_of(second, "rtc_p1")
        assert [leg["call_id"] for leg in report["legs"]] == ["rtc_p1", "rtc_p2"]
        assert report["parked"]["spells"][0]["listens"] == 3  # counted across both processes


async def test_twilio_ending_the_call_before_the_parked_leg_is_written_still_reports_it(service: Service) -> None:
    """The far side hangs up right after the redirect: the final status comes while the parked leg is still being
    finished, finds no report to close the call with, and the leg's finish closes it instead."""
    sideband = await holding_call(service, "rtc_p1", {"expected_minutes": 40})
    async with asyncio.timeout(5):
        while service.router.routes["twilio_update"].call_count == 0:
            await asyncio.sleep(0.01)
    ended = await post_signed(service, "/twilio/status", {"CallSid": CALL_SID, "CallStatus": "completed"})
    assert ended.status_code == 200
    sideband.close_from_server()
    record = await service.runtime.registry.wait_ended("rtc_p1", 5)
    assert record.ended_reason == "parked"
    await service.runtime.registry.finished_written(5)
    report = await report_of(service, "rtc_p1")
    assert report["ended_reason"] == "caller_hangup"
    assert [leg["call_id"] for leg in report["legs"]] == ["rtc_p1"]


async def test_a_person_on_the_round_that_reaches_the_limit_is_bridged_not_told_goodbye() -> None:
    settings = Settings(profiles={"default": profile(max_parked_s=0.05)}, limits=Limits(hangup_close_wait_s=0.1))
    async for svc in start(settings):
        twilio_id = await parked_call(svc)
        await asyncio.sleep(0.1)
        assert [c.tag for c in await listen(svc, twilio_id, "Thanks for holding, Dana here.")] == ["Dial"]


async def test_the_bridge_ending_without_a_leg_apologises_and_the_call_is_reported(service: Service) -> None:
    twilio_id = await parked_call(service)
    bridge = await listen(service, twilio_id, "Thanks for holding, how can I help?")
    [dial] = list(bridge)
    action = dial.get("action") or ""
    assert action == f"{TWILIO.public_url}/twilio/parked?twilio_id={twilio_id}&spell=1&after=bridge"
    # the next leg never reached us (refused, or never matched): Twilio's <Dial> is over
    over = await post_signed(service, action.removeprefix(TWILIO.public_url),
                             {"CallSid": CALL_SID, "DialCallStatus": "failed"})  # fmt: skip
    assert [c.tag for c in ET.fromstring(over.text)] == ["Say", "Hangup"]
    await post_signed(service, "/twilio/status", {"CallSid": CALL_SID, "CallStatus": "completed"})
    report = await report_of(service, "rtc_p1")
    assert report["ended_reason"] == "session_error"


async def test_the_bridge_ending_after_the_next_leg_hangs_up(service: Service) -> None:
    twilio_id = await parked_call(service)
    bridge = ET.tostring(await listen(service, twilio_id, "Thanks for holding."), encoding="unicode")
    await openai_webhook(service, "rtc_p2", [{"name": "X-Sipctl-Correlation", "value": correlation(bridge)}])
    await attached(service, "rtc_p2")
    over = await post_signed(service, f"/twilio/parked?twilio_id={twilio_id}&spell=1&after=bridge",
                             {"CallSid": CALL_SID, "DialCallStatus": "completed"})  # fmt: skip
    assert [c.tag for c in ET.fromstring(over.text)] == ["Hangup"]


async def test_a_recorded_announcement_is_left_to_the_text_check() -> None:
    """With detect: classifier, "thank you for holding" from a recording is no person: the check decides."""
    settings = Settings(profiles={"default": profile(detect="classifier")}, limits=Limits(hangup_close_wait_s=0.1))
    async for svc in start(settings):
        twilio_id = await parked_call(svc)
        svc.router.routes["responses"].respond(200, json=verdict(False))
        assert [c.tag for c in await listen(svc, twilio_id, "Thank you for holding, your call is important")] == [
            "Gather"
        ]


async def test_a_round_of_another_park_counts_for_nothing(service: Service) -> None:
    twilio_id = await parked_call(service)
    answer = await listen(service, twilio_id, "Thanks for holding, Dana here.", spell=7)
    [gather] = list(answer)
    assert gather.tag == "Gather"
    assert (gather.get("action") or "").endswith("spell=1")
    row = await service.store.get_twilio_call(id=twilio_id)
    assert row is not None
    assert row.park is not None
    assert (row.park["status"], row.park["listens"]) == ("parked", 0)


async def test_a_retried_write_of_the_last_leg_keeps_it_merged_and_the_call_listed_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call's report is closed on the first leg's row, then the last leg's own write fails once (the database
    away for a moment): the retry must not close again, nor list the last leg as a call of its own."""
    twilio_id = await parked_call(service)
    bridge = ET.tostring(await listen(service, twilio_id, "Thanks for holding, Dana here."), encoding="unicode")
    await openai_webhook(service, "rtc_p2", [{"name": "X-Sipctl-Correlation", "value": correlation(bridge)}])
    sideband = await attached(service, "rtc_p2")
    finish_call = service.store.finish_call
    failures: list[str] = []

    async def flaky(fence: Any, **changes: Any) -> None:
        if fence.call_id == "rtc_p2" and not failures:
            failures.append(fence.call_id)
            raise OSError("the database went away for a moment")
        await finish_call(fence, **changes)

    monkeypatch.setattr(service.store, "finish_call", flaky)
    sideband.close_from_server()
    await service.runtime.registry.wait_ended("rtc_p2", 5)
    await service.runtime.registry.finished_written(10)
    assert failures == ["rtc_p2"]
    leg2 = await service.store.get_call("rtc_p2")
    assert leg2 is not None
    assert leg2.ended_reason == "merged"
    page = await service.store.list_finished(HistoryQuery())
    assert [row.call_id for row in page.calls] == ["rtc_p1"]
    assert [leg["call_id"] for leg in (await report_of(service, "rtc_p1"))["legs"]] == ["rtc_p1", "rtc_p2"]


async def test_the_next_leg_is_still_the_calls_when_the_earlier_reports_cannot_be_read(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    twilio_id = await parked_call(service)
    bridge = ET.tostring(await listen(service, twilio_id, "Thanks for holding, Dana here."), encoding="unicode")
    get_report = service.store.get_report

    async def unreadable(call_id: str) -> dict[str, object] | None:
        return None if call_id == "rtc_p1" else await get_report(call_id)

    monkeypatch.setattr(service.store, "get_report", unreadable)
    await openai_webhook(service, "rtc_p2", [{"name": "X-Sipctl-Correlation", "value": correlation(bridge)}])
    sideband = await attached(service, "rtc_p2")
    async with asyncio.timeout(5):
        while not [e for e in sideband.sent if e.get("type") == "response.create"]:
            await asyncio.sleep(0.01)
    [opening] = [e for e in sideband.sent if e.get("type") == "response.create"]
    assert opening["response"]["instructions"].startswith("A person has just come back")  # not the greeting
    record = service.runtime.registry.get("rtc_p2")
    assert record is not None
    assert any("could not be read" in e for e in record.errors)


async def test_a_call_closed_while_the_text_check_runs_is_not_bridged() -> None:
    """The other side hangs up while the round's text check is under way: the status callback reports the call, and
    the round's late answer changes nothing (no bridge, no second report)."""
    settings = Settings(profiles={"default": profile(detect="classifier")}, limits=Limits(hangup_close_wait_s=0.1))
    async for svc in start(settings):
        twilio_id = await parked_call(svc)

        async def hung_up_meanwhile(request: httpx.Request, svc: Service = svc) -> httpx.Response:
            answer = await post_signed(svc, "/twilio/status", {"CallSid": CALL_SID, "CallStatus": "completed"})
            assert answer.status_code == 200
            return httpx.Response(200, json=verdict(True))

        svc.router.routes["responses"].side_effect = hung_up_meanwhile
        assert [c.tag for c in await listen(svc, twilio_id, "Hello, Dana speaking")] == ["Hangup"]
        row = await svc.store.get_twilio_call(id=twilio_id)
        assert row is not None
        assert row.park is not None
        assert row.park["status"] == "closed"
        assert row.call_id == "rtc_p1"  # not unlinked for a next leg
        report = await report_of(svc, "rtc_p1")
        assert report["ended_reason"] == "caller_hangup"


async def test_a_last_leg_whose_first_leg_cannot_be_closed_carries_the_whole_call(service: Service) -> None:
    """The first leg's row was closed otherwise meanwhile (an operator's repair, an old release): the last leg's
    own row then holds the whole call's report, and the call is still listed and reported."""
    twilio_id = await parked_call(service)
    bridge = ET.tostring(await listen(service, twilio_id, "Thanks for holding, Dana here."), encoding="unicode")
    await openai_webhook(service, "rtc_p2", [{"name": "X-Sipctl-Correlation", "value": correlation(bridge)}])
    sideband = await attached(service, "rtc_p2")
    first = await report_of(service, "rtc_p1")
    assert await service.store.close_parked("rtc_p1", ended_reason="caller_hangup", report=first)
    sideband.close_from_server()
    await service.runtime.registry.wait_ended("rtc_p2", 5)
    await service.runtime.registry.finished_written(5)
    carried = await report_of(service, "rtc_p2")
    assert [leg["call_id"] for leg in carried["legs"]] == ["rtc_p1", "rtc_p2"]
    leg2 = await service.store.get_call("rtc_p2")
    assert leg2 is not None
    assert leg2.ended_reason == "caller_hangup"


async def test_the_first_bridge_ending_after_the_call_was_parked_again_keeps_listening(service: Service) -> None:
    twilio_id = await parked_call(service)
    bridge = ET.tostring(await listen(service, twilio_id, "Thanks for holding."), encoding="unicode")
    await openai_webhook(service, "rtc_p2", [{"name": "X-Sipctl-Correlation", "value": correlation(bridge)}])
    sideband = await attached(service, "rtc_p2")
    call = {"type": "function_call", "call_id": "c2", "name": "wait_on_hold",
            "arguments": json.dumps({"expected_minutes": 20})}  # fmt: skip
    sideband.push(json.dumps({"type": "response.done", "response": {"id": "r2", "status": "completed",
                                                                    "output": [call]}}))  # fmt: skip
    async with asyncio.timeout(5):
        while True:
            row = await service.store.get_twilio_call(id=twilio_id)
            if row is not None and row.park is not None and row.park["spell"] == 2:
                break
            await asyncio.sleep(0.01)
    assert row.park["legs"] == ["rtc_p1", "rtc_p2"]
    over = await post_signed(service, f"/twilio/parked?twilio_id={twilio_id}&spell=1&after=bridge",
                             {"CallSid": CALL_SID, "DialCallStatus": "completed"})  # fmt: skip
    [gather] = list(ET.fromstring(over.text))
    assert gather.tag == "Gather"
    assert (gather.get("action") or "").endswith("spell=2")
