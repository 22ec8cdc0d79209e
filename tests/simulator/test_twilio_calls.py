"""Twilio calls on the stand-in end to end on loopback: callee outcomes and their signed status callbacks, AMD,
the ``<Dial><Sip>`` bridge into the simulator's OpenAI side with the controller's X- headers, inbound calls on
a number, live updates. The "controller" is the tiny receiver of :mod:`tests.simulator.twilio_receiver`."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from sip_controller.simulator.twilio_records import check_twilio_call
from sip_controller.simulator.twilio_side import TwilioSide
from sip_controller.simulator.twilio_spec import Callee, InboundCall, TwilioExpectation
from sip_controller.telephony.twiml import CORRELATION_HEADER, bridge_to_openai, transfer_to
from tests.simulator.twilio_receiver import (
    TinyController,
    accept_say_hang_up,
    accept_then_hang_up,
    twilio_stack,
)

pytestmark = pytest.mark.anyio

CALLEE = "+14155550111"
OURS = "+18005550100"
EVENTS = ("initiated", "ringing", "answered", "completed")
CORRELATION = "0123456789abcdef01234567"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def side_of(ctl: TinyController) -> TwilioSide:
    assert ctl.sim.twilio is not None
    return ctl.sim.twilio


async def create(ctl: TinyController, **fields: Any) -> str:
    """Place a call through the Calls API as the controller would; returns its sid."""
    side = side_of(ctl)
    data: list[tuple[str, str]] = [("To", CALLEE), ("From", OURS),
                                   ("StatusCallback", f"{ctl.url}/twilio/status")]  # fmt: skip
    data += [("StatusCallbackEvent", event) for event in EVENTS]
    if "Twiml" not in fields:
        data.append(("Url", f"{ctl.url}/twilio/voice"))
    data += [(key, str(value)) for key, value in fields.items()]
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{side.base_url}/2010-04-01/Accounts/{ctl.account.account_sid}/Calls.json",
            content=urlencode(data),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=(ctl.account.account_sid, ctl.account.auth_token),
        )
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


def statuses(ctl: TinyController) -> list[str]:
    return [r.params["CallStatus"] for r in ctl.of("status")]


async def test_a_person_answers_the_bridge_reaches_openai_with_the_x_headers() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(outcome="answer", ring_seconds=1, max_call_seconds=30))
        ctl.twiml = bridge_to_openai(ctl.sim.project_id, CORRELATION)
        ctl.openai = accept_then_hang_up(0.2)
        sid = await create(ctl, Timeout=20)
        call = await side.wait_ended(sid, 10.0)

        assert statuses(ctl) == ["initiated", "ringing", "in-progress", "completed"]
        assert all(r.signed for r in ctl.received), [r.kind for r in ctl.received if not r.signed]
        assert [r.params["SequenceNumber"] for r in ctl.of("status")] == ["0", "1", "2", "3"]
        final = ctl.of("status")[-1].params
        assert (final["CallSid"], final["Direction"], final["SipResponseCode"]) == (sid, "outbound-api", "200")
        assert final["CallDuration"].isdigit()
        assert all(r.headers["user-agent"] == "TwilioProxy/1.1" for r in ctl.received)
        (voice,) = ctl.of("voice")
        assert (voice.params["CallStatus"], voice.params["To"], voice.params["From"]) == ("in-progress", CALLEE, OURS)

        (call_id,) = call.openai_call_ids
        headers = ctl.headers_of(call_id)
        assert (CORRELATION_HEADER, CORRELATION) in headers
        assert ("X-Twilio-CallSid", sid) in headers
        named = dict(headers)
        assert named["From"].startswith(f"<sip:{OURS}@")
        assert named["To"] == f"<sip:{ctl.sim.project_id}@sip.api.openai.com;transport=tls>"
        leg = ctl.sim.calls[call_id]
        assert leg.accept_count == 1
        assert leg.ended_by == "agent"
        assert call.ended_by == "twiml"
        assert call.status == "completed"
        assert call.bridges[0].status == "completed"
        assert check_twilio_call(call, TwilioExpectation(bridged=True, sip_headers=[CORRELATION_HEADER],
                                                         no_problems=True)) == []  # fmt: skip


async def test_the_person_hanging_up_on_the_openai_leg_ends_the_twilio_call() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        ctl.twiml = bridge_to_openai(ctl.sim.project_id, CORRELATION)
        # accepted, never hung up by the controller; the person's own script has a 2 s line on OpenAI's side
        side.script(CALLEE, Callee(ring_seconds=0.5, steps=[], max_call_seconds=2))
        sid = await create(ctl)
        call = await side.wait_ended(sid, 10.0)
        assert call.ended_by == "callee"
        assert ctl.sim.calls[call.openai_call_ids[0]].ended_by == "caller"
        assert statuses(ctl)[-1] == "completed"


@pytest.mark.parametrize(
    ("callee", "fields", "expected", "sip", "error"),
    [
        pytest.param(Callee(outcome="busy"), {}, ["initiated", "busy"], "486", None, id="busy"),
        pytest.param(
            Callee(outcome="no_answer"),
            {"Timeout": 3},
            ["initiated", "ringing", "no-answer"],
            "487",
            None,
            id="no-answer",
        ),
        pytest.param(
            Callee(outcome="failed", error_code=32009), {}, ["initiated", "failed"], "404", "32009", id="failed"
        ),
        pytest.param(
            Callee(outcome="hangup_while_ringing", ring_seconds=1),
            {},
            ["initiated", "ringing", "busy"],
            "603",
            None,
            id="hangs-up-while-ringing",
        ),
    ],
)
async def test_callees_that_never_answer(
    callee: Callee, fields: dict[str, Any], expected: list[str], sip: str, error: str | None
) -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, callee)
        sid = await create(ctl, **fields)
        call = await side.wait_ended(sid, 10.0)
        assert statuses(ctl) == expected
        final = ctl.of("status")[-1].params
        assert final["SipResponseCode"] == sip
        assert final.get("ErrorCode") == error
        assert final["CallDuration"] == "0"
        assert ctl.of("voice") == []
        assert call.openai_call_ids == []
        assert all(r.signed for r in ctl.received)


async def test_only_the_subscribed_events_are_sent_and_get_callbacks_are_signed_too() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.2, max_call_seconds=1))
        sid = await create(ctl, Twiml='<Response><Pause length="1"/></Response>', StatusCallbackMethod="GET")
        await side.wait_ended(sid, 10.0)
        # all four subscribed; now one with the default (completed only)
        side.script(CALLEE, Callee(ring_seconds=0.2))
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{side.base_url}/2010-04-01/Accounts/{ctl.account.account_sid}/Calls.json",
                data={
                    "To": CALLEE,
                    "From": OURS,
                    "Twiml": "<Response><Hangup/></Response>",
                    "StatusCallback": f"{ctl.url}/twilio/status",
                },
                auth=(ctl.account.account_sid, ctl.account.auth_token),
            )
        second = response.json()["sid"]
        await side.wait_ended(second, 10.0)
        by_call = [(r.params["CallSid"], r.params["CallStatus"]) for r in ctl.of("status")]
        assert by_call == [(sid, "initiated"), (sid, "ringing"), (sid, "in-progress"), (sid, "completed"),
                           (second, "completed")]  # fmt: skip
        assert all(r.signed for r in ctl.received)
        assert "?" in ctl.of("status")[0].url  # the GET carried its fields in the query


async def test_voicemail_sync_amd_waits_for_the_beep_and_records_the_models_message() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(outcome="voicemail", ring_seconds=0.5, greeting_seconds=3))
        ctl.twiml = bridge_to_openai(ctl.sim.project_id, CORRELATION)
        ctl.openai = accept_say_hang_up("Hi, this is Ada from the clinic, please call us back.")
        sid = await create(ctl, MachineDetection="DetectMessageEnd")
        call = await side.wait_ended(sid, 15.0)
        (voice,) = ctl.of("voice")
        assert voice.params["AnsweredBy"] == "machine_end_beep"
        assert call.answered_by == "machine_end_beep"
        assert call.beep_at is not None
        assert call.bridges[0].t >= call.beep_at
        assert call.voicemail_message == ["Hi, this is Ada from the clinic, please call us back."]
        assert ctl.of("status")[-1].params["AnsweredBy"] == "machine_end_beep"
        assert check_twilio_call(call, TwilioExpectation(voicemail_contains=["call us back"],
                                                         final_status="completed")) == []  # fmt: skip


async def test_voicemail_async_amd_callback_then_a_live_update_leaves_a_fixed_message() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(outcome="voicemail", ring_seconds=0.2, greeting_seconds=2))
        ctl.twiml = '<Response><Pause length="30"/></Response>'
        sid = await create(ctl, MachineDetection="DetectMessageEnd", AsyncAmd="true",
                           AsyncAmdStatusCallback=f"{ctl.url}/twilio/amd")  # fmt: skip
        async with asyncio.timeout(5.0):
            while not ctl.of("amd"):
                await asyncio.sleep(0.01)
        (amd,) = ctl.of("amd")
        assert amd.signed
        assert amd.params["AnsweredBy"] == "machine_end_beep"
        assert int(amd.params["MachineDetectionDuration"]) > 0
        async with httpx.AsyncClient() as client:
            updated = await client.post(
                f"{side.base_url}/2010-04-01/Accounts/{ctl.account.account_sid}/Calls/{sid}.json",
                data={"Twiml": "<Response><Say>This is the clinic, call us back.</Say><Hangup/></Response>"},
                auth=(ctl.account.account_sid, ctl.account.auth_token),
            )
        assert updated.status_code == 200
        assert updated.json()["status"] == "in-progress"
        call = await side.wait_ended(sid, 10.0)
        assert call.voicemail_message == ["This is the clinic, call us back."]
        assert [run.source for run in call.twiml] == ["voice", "update"]
        assert call.ended_by == "twiml"


async def test_a_person_under_amd_is_human_and_a_fax_is_fax() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.2, max_call_seconds=2), Callee(outcome="fax", ring_seconds=0.2))
        first = await create(ctl, Twiml='<Response><Pause length="1"/></Response>', MachineDetection="Enable")
        second = await create(ctl, Twiml='<Response><Pause length="30"/></Response>', MachineDetection="Enable")
        assert (await side.wait_ended(first, 10.0)).answered_by == "human"
        fax = await side.wait_ended(second, 10.0)
        assert (fax.answered_by, fax.ended_by) == ("fax", "callee")


async def test_an_inbound_call_rings_the_number_and_bridges_with_answer_on_bridge() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.set_voice_url(OURS, f"{ctl.url}/twilio/voice", status_callback=f"{ctl.url}/twilio/status")
        seen: list[str] = []

        def twiml(params: dict[str, str]) -> str:
            seen.append(side.calls[params["CallSid"]].status)
            return bridge_to_openai(ctl.sim.project_id, CORRELATION).replace(
                "</Response>", "<Say>Goodbye.</Say></Response>"
            )

        ctl.twiml = twiml

        async def play(ctl_: TinyController, call_id: str) -> None:
            seen.append(next(iter(side.calls.values())).status)  # still ringing: answerOnBridge
            await accept_then_hang_up(0.2)(ctl_, call_id)

        ctl.openai = play
        call = side.ring_number(InboundCall(name="caller", to=OURS, **{"from": "+14155550123"}))
        await side.wait_ended(call.sid, 10.0)
        (voice,) = ctl.of("voice")
        assert voice.signed
        assert {k: voice.params[k] for k in ("Direction", "CallStatus", "From", "To", "AccountSid")} == {
            "Direction": "inbound", "CallStatus": "ringing", "From": "+14155550123", "To": OURS,
            "AccountSid": ctl.account.account_sid,
        }  # fmt: skip
        assert seen == ["ringing", "ringing"]
        assert call.answered_at is not None
        assert call.answered_at >= call.bridges[0].t
        assert [s.text for s in call.said] == ["Goodbye."]
        assert statuses(ctl) == ["completed"]  # a number's status callback gets the completed event only
        (call_id,) = call.openai_call_ids
        assert (CORRELATION_HEADER, CORRELATION) in ctl.headers_of(call_id)
        assert dict(ctl.headers_of(call_id))["From"].startswith("<sip:+14155550123@")


async def test_an_inbound_caller_who_gives_up_while_ringing_cancels_the_openai_leg() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.set_voice_url(OURS, f"{ctl.url}/twilio/voice")
        ctl.twiml = bridge_to_openai(ctl.sim.project_id, CORRELATION)

        async def never_accepts(ctl_: TinyController, call_id: str) -> None:
            return None

        ctl.openai = never_accepts
        call = side.ring_number(InboundCall(name="impatient", to=OURS, hangup_while_ringing=25))  # 0.5 s: bridged first
        await side.wait_ended(call.sid, 10.0)
        assert (call.status, call.ended_by, call.sip_response_code) == ("no-answer", "caller", 487)
        leg = ctl.sim.calls[call.openai_call_ids[0]]
        assert leg.is_ended
        assert leg.accepted_at is None


async def test_updates_hang_up_a_live_bridge_and_cancel_a_ringing_call() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.2, max_call_seconds=60), Callee(outcome="no_answer"))
        ctl.twiml = bridge_to_openai(ctl.sim.project_id, CORRELATION)
        live = await create(ctl)
        async with asyncio.timeout(5.0):
            while not side.calls[live].bridges or side.calls[live].bridges[0].answered_at is None:
                await asyncio.sleep(0.01)
        ringing = await create(ctl)
        url = f"{side.base_url}/2010-04-01/Accounts/{ctl.account.account_sid}/Calls/{{}}.json"
        auth = (ctl.account.account_sid, ctl.account.auth_token)
        async with httpx.AsyncClient() as client:
            hung = await client.post(url.format(live), data={"Status": "completed"}, auth=auth)
            canceled = await client.post(url.format(ringing), data={"Status": "completed"}, auth=auth)
        assert hung.json()["status"] == "completed"
        assert canceled.json()["status"] == "canceled"
        first = await side.wait_ended(live, 5.0)
        second = await side.wait_ended(ringing, 5.0)
        assert first.ended_by == "api"
        assert ctl.sim.calls[first.openai_call_ids[0]].ended_by == "caller"
        assert (second.status, second.ended_by) == ("canceled", "api")


async def test_twiml_problems_are_recorded_and_end_the_call_as_twilio_would() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.1))
        ctl.twiml = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "x">]><Response><Say>&a;</Say></Response>'
        hostile = await side.wait_ended(await create(ctl), 5.0)
        assert hostile.error_code == 12100
        assert hostile.twiml[0].error is not None
        assert any("DTD" in p for p in hostile.problems)

        ctl.twiml = "<Response><Play>https://example.com/hold.mp3</Play></Response>"  # not a verb it runs
        unknown = await side.wait_ended(await create(ctl), 5.0)
        assert unknown.error_code == 12200

        ctl.voice_status = 500
        broken = await side.wait_ended(await create(ctl), 5.0)
        assert broken.error_code == 11200
        assert any("HTTP 500" in p for p in broken.problems)
        ctl.voice_status = 200

        other = f"<Response><Dial action=\"{ctl.url}/twilio/action\"><Sip>sip:proj_other@sip.api.openai.com;" \
                "transport=tls</Sip></Dial></Response>"  # fmt: skip
        ctl.twiml = lambda params: other if "DialCallStatus" not in params else "<Response><Hangup/></Response>"
        wrong = await side.wait_ended(await create(ctl), 5.0)
        (action,) = ctl.of("action")
        assert (action.params["DialCallStatus"], action.params["DialSipResponseCode"]) == ("failed", "404")
        assert wrong.openai_call_ids == []
        assert any("not this project" in p for p in wrong.problems)


async def test_a_recorded_call_reports_its_recording_by_signed_callback() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.1, max_call_seconds=1))
        sid = await create(ctl, Twiml="<Response><Pause length=\"5\"/></Response>", Record="true",
                           RecordingChannels="dual", RecordingStatusCallback=f"{ctl.url}/twilio/recording")  # fmt: skip
        call = await side.wait_ended(sid, 5.0)
        (recording,) = ctl.of("recording")
        assert recording.signed
        assert recording.params["RecordingSid"].startswith("RE")
        assert recording.params["RecordingChannels"] == "2"
        assert call.recording is not None
        assert call.recording["sid"] == recording.params["RecordingSid"]


async def test_a_dial_that_records_sends_the_recording_callback_after_the_call_ends() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.1, max_call_seconds=10))
        ctl.twiml = bridge_to_openai(ctl.sim.project_id, CORRELATION,
                                     recording_callback=f"{ctl.url}/twilio/recording?leg=x")  # fmt: skip
        call = await side.wait_ended(await create(ctl), 5.0)
        (recording,) = ctl.of("recording")
        assert recording.signed
        assert recording.url == f"{ctl.url}/twilio/recording?leg=x"
        params = recording.params
        shown = (params["CallSid"], params["RecordingStatus"], params["RecordingChannels"], params["RecordingSource"])
        assert shown == (call.sid, "completed", "2", "DialVerb")
        assert 0 < int(params["RecordingDuration"]) <= 10
        assert call.recording is not None
        assert call.recording["sid"] == params["RecordingSid"]
        # after the call's completed status callback, as Twilio stores the file first
        kinds = [r.kind for r in ctl.received if r.kind in ("status", "recording")]
        assert kinds[-2:] == ["status", "recording"]
        assert ctl.of("status")[-1].params["CallStatus"] == "completed"


async def test_a_dial_that_does_not_record_sends_no_recording_callback() -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.1, max_call_seconds=1))
        ctl.twiml = bridge_to_openai(ctl.sim.project_id, CORRELATION)
        call = await side.wait_ended(await create(ctl), 5.0)
        assert (ctl.of("recording"), call.recording) == ([], None)


@pytest.mark.parametrize(
    ("target", "uri"),
    [("tel:+14155550188", "tel:+14155550188"), ("sip:desk@pbx.example.com", "sip:desk@pbx.example.com")],
)
async def test_a_live_update_transfers_the_callee_from_openai_to_the_target(target: str, uri: str) -> None:
    async with twilio_stack() as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.1, max_call_seconds=20))
        ctl.twiml = bridge_to_openai(ctl.sim.project_id, CORRELATION)
        sid = await create(ctl)
        async with asyncio.timeout(5.0):
            while not side.calls[sid].bridges or side.calls[sid].bridges[0].answered_at is None:
                await asyncio.sleep(0.01)
        url = f"{side.base_url}/2010-04-01/Accounts/{ctl.account.account_sid}/Calls/{sid}.json"
        async with httpx.AsyncClient() as client:
            moved = await client.post(url, data={"Twiml": transfer_to(target)},
                                      auth=(ctl.account.account_sid, ctl.account.auth_token))  # fmt: skip
        assert moved.status_code == 200, moved.text
        call = await side.wait_ended(sid, 5.0)
        openai, dialled = call.bridges
        assert ctl.sim.calls[openai.call_id or ""].ended_by == "caller"  # Twilio hung the OpenAI leg up
        assert openai.ended_at is not None
        assert openai.ended_at <= dialled.t
        assert (dialled.uri, dialled.call_id, dialled.status) == (uri, None, "completed")
        assert (call.status, call.ended_by, call.problems) == ("completed", "callee", [])
        assert [run.source for run in call.twiml] == ["voice", "update"]
