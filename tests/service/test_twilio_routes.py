"""Twilio through the real app (#16): the number's voice webhook, status callbacks, POST /v1/outbound, and the
OpenAI webhook matched to the Twilio call by its correlation header. Signatures are computed by the official
twilio package's validator; Twilio's Calls API and OpenAI's REST are mocked with respx."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.etree import ElementTree as ET

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

from sip_controller.agent.profile import AgentProfile, Outbound, Recording
from sip_controller.config import Limits, Reports, Settings, TwilioCredentials, TwilioSettings
from tests.servicekit import SECRET, Service, openai_router, running_service

pytestmark = pytest.mark.anyio

TOKEN = secrets.token_hex(16)
ADMIN = "Adm1n-" + secrets.token_hex(16)
ACCOUNT = "AC" + "0123456789abcdef" * 2
PUBLIC = "https://calls.example.com"
TWILIO = TwilioCredentials(
    account_sid=ACCOUNT, auth_token=SecretStr(TOKEN), api_base_url="https://api.twilio.test",
    openai_project_id="proj_abc123", public_url=PUBLIC,
)  # fmt: skip
SETTINGS = Settings(
    profiles={
        "default": AgentProfile(),
        "support": AgentProfile(instructions="You are support."),
        "reminders": AgentProfile(
            instructions="Remind {{ var:first_name }} of the appointment.", variables=("first_name",),
            outbound=Outbound(machine_detection="DetectMessageEnd"),
        ),
        "recorded": AgentProfile(instructions="You are support, recorded.", recording=Recording(enabled=True)),
    },
    routes=({"dialed": ("+18005550100",), "profile": "support"}, {"dialed": ("+18005550111",), "profile": "recorded"}),
    limits=Limits(hangup_close_wait_s=0.1),
    twilio=TwilioSettings(from_number="+18005550199", do_not_call=("+1900*",)),
)  # fmt: skip
CALLER = "+14155550123"
PLACED_SID = "CA" + "e" * 32


def sid() -> str:
    return "CA" + secrets.token_hex(16)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    router = openai_router(None)
    router.post(path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls\.json", name="twilio_create").respond(
        201, json={"sid": PLACED_SID, "status": "queued"}
    )
    async with running_service(ADMIN, settings=SETTINGS, twilio=TWILIO, router=router) as svc:
        yield svc


async def post_signed(svc: Service, path: str, form: dict[str, str], *, token: str = TOKEN) -> httpx.Response:
    params = {"AccountSid": ACCOUNT, **form}
    signature = RequestValidator(token).compute_signature(PUBLIC + path, params)
    return await svc.client.post(path, data=params, headers={"X-Twilio-Signature": signature})


async def openai_webhook(svc: Service, call_id: str, headers: list[dict[str, str]]) -> None:
    body = json.dumps({
        "object": "event", "id": f"evt_{call_id}", "type": "realtime.call.incoming",
        "data": {"call_id": call_id, "sip_headers": headers},
    }).encode()  # fmt: skip
    now = datetime.now(UTC)
    signed = {"webhook-id": f"wh_{call_id}", "webhook-timestamp": str(int(now.timestamp())),
              "webhook-signature": Webhook(SECRET).sign(f"wh_{call_id}", now, body.decode())}  # fmt: skip
    assert (await svc.client.post("/webhooks/openai", content=body, headers=signed)).status_code == 200


def sip_uri(twiml: str) -> str:
    sip = ET.fromstring(twiml).find("./Dial/Sip")
    assert sip is not None
    assert sip.text is not None
    return sip.text


def correlation(twiml_or_uri: str) -> str:
    uri = sip_uri(twiml_or_uri) if twiml_or_uri.startswith("<") else twiml_or_uri
    return uri.split("X-Sipctl-Correlation=", 1)[1]


# ---- the number's voice webhook -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [None, "", "bm90LXRoZS1zaWduYXR1cmU=", RequestValidator("other-token").compute_signature(PUBLIC + "/twilio/voice",
                                                                                              {"AccountSid": ACCOUNT})],
)  # fmt: skip
async def test_an_unsigned_or_badly_signed_voice_webhook_gets_403_and_nothing_else(
    service: Service, signature: str | None
) -> None:
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    answer = await service.client.post("/twilio/voice", data={"AccountSid": ACCOUNT, "CallSid": sid()},
                                       headers=headers)  # fmt: skip
    assert answer.status_code == 403
    assert answer.text == "forbidden"


async def test_the_signature_is_checked_against_the_public_url_not_the_one_the_app_sees(service: Service) -> None:
    params = {"AccountSid": ACCOUNT, "CallSid": sid(), "From": CALLER, "To": "+18005550100"}
    seen_url = str(service.client.base_url).rstrip("/") + "/twilio/voice"
    signature = RequestValidator(TOKEN).compute_signature(seen_url, params)
    answer = await service.client.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 403


async def test_a_signed_voice_webhook_is_answered_with_the_bridge(service: Service) -> None:
    call_sid = sid()
    answer = await post_signed(service, "/twilio/voice", {"CallSid": call_sid, "From": CALLER, "To": "+18005550100"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/xml")
    dial = ET.fromstring(answer.text).find("./Dial")
    assert dial is not None
    assert dial.attrib == {"answerOnBridge": "true"}
    uri = sip_uri(answer.text)
    assert uri.startswith("sip:proj_abc123@sip.api.openai.com;transport=tls?X-Sipctl-Correlation=")
    assert CALLER not in uri
    assert CALLER.lstrip("+") not in uri
    row = await service.store.get_twilio_call(call_sid=call_sid)
    assert row is not None
    assert (row.direction, row.from_number, row.to_number, row.correlation) == (
        "inbound", CALLER, "+18005550100", correlation(uri)
    )
    again = await post_signed(service, "/twilio/voice", {"CallSid": call_sid, "From": CALLER, "To": "+18005550100"})
    assert correlation(again.text) == row.correlation  # Twilio retried: the same bridge


async def test_the_openai_call_is_matched_to_the_twilio_call(service: Service) -> None:
    call_sid = sid()
    answer = await post_signed(service, "/twilio/voice", {"CallSid": call_sid, "From": CALLER, "To": "+18005550100"})
    corr = correlation(answer.text)
    await openai_webhook(service, "rtc_tw1", [
        {"name": "From", "value": f"<sip:{CALLER}@pstn.twilio.com>;tag=1"},
        {"name": "To", "value": "<sip:proj_abc123@sip.api.openai.com;transport=tls>"},
        {"name": "X-Twilio-CallSid", "value": "CA" + "9" * 32},  # the SIP leg's own sid
        {"name": "X-Sipctl-Correlation", "value": corr},
    ])  # fmt: skip
    record = service.runtime.registry.get("rtc_tw1")
    assert record is not None
    assert record.twilio_call_sid == call_sid
    assert (record.caller, record.dialed, record.profile) == (CALLER, "+18005550100", "support")  # routed by To
    assert record.twilio is not None
    assert record.twilio["direction"] == "inbound"
    row = await service.store.get_twilio_call(call_sid=call_sid)
    assert row is not None
    assert row.call_id == "rtc_tw1"


async def test_an_unknown_correlation_id_is_an_ordinary_call_with_the_error_noted(service: Service) -> None:
    await openai_webhook(service, "rtc_tw2", [
        {"name": "From", "value": f"<sip:{CALLER}@pstn.twilio.com>;tag=1"},
        {"name": "X-Sipctl-Correlation", "value": "ffffffffffffffffffffffff"},
    ])  # fmt: skip
    record = service.runtime.registry.get("rtc_tw2")
    assert record is not None
    assert record.twilio is None
    assert record.errors == ["X-Sipctl-Correlation matches no Twilio call of ours"]


# ---- status callbacks -------------------------------------------------------------------------------------------


async def test_status_callbacks_are_recorded_and_unknown_calls_refused(service: Service) -> None:
    call_sid = sid()
    await post_signed(service, "/twilio/voice", {"CallSid": call_sid, "From": CALLER, "To": "+18005550100"})
    answer = await post_signed(service, "/twilio/status", {"CallSid": call_sid, "CallStatus": "completed",
                                                           "CallDuration": "42"})  # fmt: skip
    assert answer.status_code == 200
    row = await service.store.get_twilio_call(call_sid=call_sid)
    assert row is not None
    assert row.status == "completed"
    assert row.events == [{"kind": "status", "status": "completed", "duration_s": 42}]
    unknown = await post_signed(service, "/twilio/status", {"CallSid": sid(), "CallStatus": "ringing"})
    assert unknown.status_code == 404
    unsigned = await service.client.post("/twilio/status", data={"CallSid": call_sid, "CallStatus": "failed"})
    assert unsigned.status_code == 403


# ---- outbound ---------------------------------------------------------------------------------------------------


def bearer(key: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {ADMIN}"}
    if key is not None:
        headers["idempotency-key"] = key
    return headers


REQUEST: dict[str, Any] = {"to": CALLER, "profile": "reminders", "variables": {"first_name": "Ada"}}


async def test_outbound_needs_the_bearer_token(service: Service) -> None:
    assert (await service.client.post("/v1/outbound", json=REQUEST)).status_code == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**REQUEST, "to": "4155550123"}, "is not an E.164 number"),
        ({**REQUEST, "to": "+19005550123"}, "do-not-call"),
        ({**REQUEST, "variables": {}}, "missing: first_name"),
        ({**REQUEST, "variables": {"first_name": "Ada", "plan": "x"}}, "not declared by profile 'reminders': plan"),
        ({**REQUEST, "profile": "nope"}, "is not a profile"),
        ({**REQUEST, "extra": 1}, "unknown field(s) extra"),
        ({**REQUEST, "from": ""}, "from: '' is not an E.164 number"),
        ({**REQUEST, "from": 14155550100}, "from: '14155550100' is not an E.164 number"),
    ],
)
async def test_bad_outbound_requests_are_refused_with_the_fix(service: Service, body: Any, message: str) -> None:
    answer = await service.client.post("/v1/outbound", json=body, headers=bearer())
    assert answer.status_code == 422
    assert message in answer.json()["error"]
    assert service.router.routes["twilio_create"].call_count == 0


async def test_an_outbound_call_is_placed_through_twilios_calls_api(service: Service) -> None:
    answer = await service.client.post("/v1/outbound", json=REQUEST, headers=bearer("k1"))
    assert answer.status_code == 201
    placed = answer.json()
    assert (placed["call_sid"], placed["status"], placed["profile"]) == (PLACED_SID, "queued", "reminders")
    request = service.router.routes["twilio_create"].calls.last.request
    form = dict(parse_qsl(request.content.decode()))
    assert (form["To"], form["From"], form["MachineDetection"], form["Timeout"]) == (
        CALLER, "+18005550199", "DetectMessageEnd", "30"
    )
    callback = urlsplit(form["StatusCallback"])
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == PUBLIC + "/twilio/status"
    assert callback.query == f"leg={placed['id']}"
    row = await service.store.get_twilio_call(id=placed["id"])
    assert row is not None
    assert correlation(sip_uri(form["Twiml"])) == row.correlation
    # the same request again: nothing more is placed
    again = await service.client.post("/v1/outbound", json=REQUEST, headers=bearer("k1"))
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["replayed"]) == (placed["id"], True)
    assert service.router.routes["twilio_create"].call_count == 1
    other = await service.client.post("/v1/outbound", json={**REQUEST, "to": "+14155550124"}, headers=bearer("k1"))
    assert other.status_code == 422
    assert "Idempotency-Key was used for another request" in other.json()["error"]
    # answered: OpenAI's webhook carries the correlation id; the instructions have the variable
    await post_signed(service, "/twilio/status?leg=" + placed["id"], {"CallSid": PLACED_SID,
                                                                       "CallStatus": "in-progress"})  # fmt: skip
    await openai_webhook(service, "rtc_out1", [
        {"name": "From", "value": "<sip:+18005550199@pstn.twilio.com>;tag=1"},
        {"name": "X-Sipctl-Correlation", "value": row.correlation},
    ])  # fmt: skip
    record = service.runtime.registry.get("rtc_out1")
    assert record is not None
    assert record.outbound == {"id": placed["id"], "variables": {"first_name": "Ada"}}
    assert (record.profile, record.twilio_call_sid, record.dialed) == ("reminders", PLACED_SID, CALLER)
    accepted = json.loads(service.router.routes["accept"].calls.last.request.content)
    assert accepted["instructions"] == "Remind Ada of the appointment."
    shown = (await service.client.get(f"/v1/outbound/{placed['id']}", headers=bearer())).json()
    assert (shown["call_id"], shown["status"], shown["to"]) == ("rtc_out1", "in-progress", "+1415***0123")


@pytest.mark.parametrize(("status", "reason"), [("no-answer", "no_answer"), ("busy", "busy"),
                                                ("canceled", "canceled"), ("failed", "failed")])  # fmt: skip
async def test_an_unanswered_outbound_call_is_reported_with_its_outcome(
    service: Service, status: str, reason: str
) -> None:
    placed = (await service.client.post("/v1/outbound", json=REQUEST, headers=bearer())).json()
    form = {"CallSid": PLACED_SID, "CallStatus": status}
    if status == "failed":
        form["ErrorCode"] = "32009"
    assert (await post_signed(service, "/twilio/status?leg=" + placed["id"], form)).status_code == 200
    record = await service.runtime.registry.wait_ended(placed["id"], 5)
    assert record.ended_reason == reason
    await service.runtime.registry.finished_written(5)
    report = await service.store.get_report(placed["id"])
    assert report is not None
    assert report["ended_reason"] == reason
    assert report["outbound"] == {"id": placed["id"], "variables": {"first_name": "Ada"}}
    twilio = report["twilio"]
    assert isinstance(twilio, dict)
    assert (twilio["call_sid"], twilio["status"], twilio["to"]) == (PLACED_SID, status, "+1415***0123")
    assert twilio["error_code"] == (32009 if status == "failed" else None)
    # a repeated final callback reports nothing more
    await post_signed(service, "/twilio/status?leg=" + placed["id"], form)
    assert service.runtime.registry.get(placed["id"]) is record


async def test_a_number_twilio_refuses_is_a_failed_call_with_twilios_code(service: Service) -> None:
    service.router.routes["twilio_create"].respond(
        400, json={"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400}
    )
    answer = await service.client.post("/v1/outbound", json=REQUEST, headers=bearer())
    assert answer.status_code == 422
    assert answer.json()["twilio_code"] == 21211
    record = await service.runtime.registry.wait_ended(answer.json()["id"], 5)
    assert record.ended_reason == "failed"
    assert record.twilio is not None
    assert record.twilio["error_code"] == 21211


# ---- recordings -------------------------------------------------------------------------------------------------

RECORDING_SID = "RE" + "4" * 32


def recording_form(call_sid: str, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid, "RecordingSid": RECORDING_SID, "RecordingStatus": "completed",
        "RecordingUrl": f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Recordings/{RECORDING_SID}",
        "RecordingDuration": "42", "RecordingChannels": "2", "RecordingSource": "DialVerb", **extra,
    }  # fmt: skip


async def test_a_number_whose_profile_records_is_bridged_with_a_dual_channel_recording(service: Service) -> None:
    call_sid = sid()
    answer = await post_signed(service, "/twilio/voice", {"CallSid": call_sid, "From": CALLER, "To": "+18005550111"})
    row = await service.store.get_twilio_call(call_sid=call_sid)
    assert row is not None
    dial = ET.fromstring(answer.text).find("./Dial")
    assert dial is not None
    assert dial.attrib["record"] == "record-from-answer-dual"
    assert dial.attrib["recordingStatusCallback"] == f"{PUBLIC}/twilio/recording?leg={row.id}"
    # a profile that does not record: no record attribute at all (test_a_signed_voice_webhook_… checks the rest)
    plain = await post_signed(service, "/twilio/voice", {"CallSid": sid(), "From": CALLER, "To": "+18005550100"})
    plain_dial = ET.fromstring(plain.text).find("./Dial")
    assert plain_dial is not None
    assert "record" not in plain_dial.attrib


async def test_a_call_placed_with_a_recording_profile_asks_the_calls_api_to_record(service: Service) -> None:
    answer = await service.client.post("/v1/outbound", json={"to": CALLER, "profile": "recorded"}, headers=bearer())
    assert answer.status_code == 201
    form = parse_qsl(service.router.routes["twilio_create"].calls.last.request.content.decode())
    assert ("Record", "true") in form
    assert ("RecordingChannels", "dual") in form
    assert ("RecordingStatusCallback", f"{PUBLIC}/twilio/recording?leg={answer.json()['id']}") in form
    service.router.routes["twilio_create"].respond(201, json={"sid": sid(), "status": "queued"})
    plain = await service.client.post("/v1/outbound", json=REQUEST, headers=bearer())
    assert plain.status_code == 201
    form = parse_qsl(service.router.routes["twilio_create"].calls.last.request.content.decode())
    assert not [k for k, _ in form if k.startswith("Record")]


async def test_a_recording_of_a_live_call_is_kept_for_its_report(service: Service) -> None:
    call_sid = sid()
    await post_signed(service, "/twilio/voice", {"CallSid": call_sid, "From": CALLER, "To": "+18005550111"})
    answer = await post_signed(service, "/twilio/recording", recording_form(call_sid))
    assert answer.status_code == 200
    assert answer.json() == {"status": "recorded", "late": False}
    row = await service.store.get_twilio_call(call_sid=call_sid)
    assert row is not None
    assert row.events[-1] == {
        "kind": "recording", "status": "completed", "sid": RECORDING_SID,
        "url": recording_form(call_sid)["RecordingUrl"], "duration_s": 42, "channels": 2, "source": "DialVerb",
    }  # fmt: skip
    assert row.status == "ringing"  # a recording is not a call status


async def test_bad_recording_callbacks_are_refused(service: Service) -> None:
    call_sid = sid()
    await post_signed(service, "/twilio/voice", {"CallSid": call_sid, "From": CALLER, "To": "+18005550111"})
    unsigned = await service.client.post("/twilio/recording", data={"AccountSid": ACCOUNT, **recording_form(call_sid)})
    assert (unsigned.status_code, unsigned.text) == (403, "forbidden")
    forged = await post_signed(service, "/twilio/recording", recording_form(call_sid), token="0" * 32)
    assert forged.status_code == 403
    malformed = await post_signed(service, "/twilio/recording", recording_form(call_sid, RecordingSid="RE1"))
    assert malformed.status_code == 400
    assert "RecordingSid" in malformed.text
    unknown = await post_signed(service, "/twilio/recording", recording_form(sid()))
    assert unknown.status_code == 404
    assert "no Twilio call of ours" in unknown.json()["error"]
    # a leg id naming another call's row does not make a stranger's CallSid ours
    row = await service.store.get_twilio_call(call_sid=call_sid)
    assert row is not None
    stray = await post_signed(service, f"/twilio/recording?leg={row.id}", recording_form(sid()))
    assert stray.status_code == 404
    after = await service.store.get_twilio_call(call_sid=call_sid)
    assert after is not None
    assert after.events == []


async def test_a_recording_after_the_report_went_out_is_a_late_call_recording_event(tmp_path: Path) -> None:
    log_path = tmp_path / "calls.jsonl"
    settings = SETTINGS.model_copy(update={"reports": Reports(jsonl_path=str(log_path))})
    router = openai_router(None)
    router.post(path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls\.json", name="twilio_create").respond(
        201, json={"sid": PLACED_SID, "status": "queued"}
    )
    async with running_service(ADMIN, settings=settings, twilio=TWILIO, router=router) as svc:
        placed = (await svc.client.post("/v1/outbound", json={"to": CALLER, "profile": "recorded"},
                                         headers=bearer())).json()  # fmt: skip
        await post_signed(svc, "/twilio/status?leg=" + placed["id"], {"CallSid": PLACED_SID, "CallStatus": "busy"})
        await svc.runtime.registry.wait_ended(placed["id"], 5)
        await svc.runtime.registry.finished_written(5)
        report = await svc.store.get_report(placed["id"])
        assert report is not None
        assert report["recording"] is None
        answer = await post_signed(svc, "/twilio/recording", recording_form(PLACED_SID))
        assert answer.json() == {"status": "recorded", "late": True}
        again = await post_signed(svc, "/twilio/recording", recording_form(PLACED_SID))  # Twilio retried
        assert again.status_code == 200
        lines: list[dict[str, Any]] = []
        for _ in range(100):
            lines = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []
            if any(line.get("event") == "call.recording" for line in lines):
                break
            await asyncio.sleep(0.05)
        late = [line for line in lines if line.get("event") == "call.recording"]
        recording = {"sid": RECORDING_SID, "url": recording_form(PLACED_SID)["RecordingUrl"], "duration_s": 42,
                     "channels": 2}  # fmt: skip
        assert late == [{
            "event": "call.recording", "call_id": placed["id"], "profile": "recorded", "twilio_call_sid": PLACED_SID,
            "ended_reason": "busy", "recording": recording,
        }]  # fmt: skip


# ---- canceling a call we placed ------------------------------------------------------------------------------------


async def test_a_ringing_outbound_call_can_be_canceled(service: Service) -> None:
    update = service.router.post(
        path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls/{PLACED_SID}\.json", name="twilio_update"
    ).respond(200, json={"sid": PLACED_SID, "status": "canceled"})
    placed = (await service.client.post("/v1/outbound", json=REQUEST, headers=bearer())).json()
    assert (await service.client.post(f"/v1/outbound/{placed['id']}/cancel")).status_code == 401
    await post_signed(service, "/twilio/status?leg=" + placed["id"], {"CallSid": PLACED_SID, "CallStatus": "ringing"})
    answer = await service.client.post(f"/v1/outbound/{placed['id']}/cancel", headers=bearer())
    assert answer.status_code == 202
    assert answer.json()["cancel"] == "requested"
    assert parse_qsl(update.calls.last.request.content.decode()) == [("Status", "canceled")]
    # Twilio's status callback says canceled: reported like any call never answered
    await post_signed(service, "/twilio/status?leg=" + placed["id"], {"CallSid": PLACED_SID, "CallStatus": "canceled"})
    record = await service.runtime.registry.wait_ended(placed["id"], 5)
    assert record.ended_reason == "canceled"
    over = await service.client.post(f"/v1/outbound/{placed['id']}/cancel", headers=bearer())
    assert over.status_code == 409
    assert over.json()["call_status"] == "canceled"
    assert update.call_count == 1
    missing = await service.client.post("/v1/outbound/out_nope/cancel", headers=bearer())
    assert missing.status_code == 404
