"""End to end (#16): the real app (uvicorn on loopback) with the simulator's Twilio stand-in beside its OpenAI side,
wired as an operator wires them (``harness.running_stack(twilio=...)``): outbound calls through ``POST
/v1/outbound`` and Twilio's Calls API, calls to a Twilio number through its voice webhook, and bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from twilio.request_validator import RequestValidator

from sip_controller.agent.profile import AgentProfile, Outbound, Recording, Transfer
from sip_controller.calls.report import CallRecord
from sip_controller.cli import main
from sip_controller.config import Reports, Settings, TwilioSettings
from sip_controller.simulator import (
    Callee,
    CallSpec,
    InboundCall,
    OutboundCall,
    ReportExpectation,
    ScenarioError,
    Step,
    ToolCall,
    TwilioAccount,
    TwilioExpectation,
    TwilioNumber,
    harness,
)
from sip_controller.simulator.harness import Stack
from sip_controller.telephony.twiml import CORRELATION_HEADER, new_correlation_id

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.02
TOKEN = "e2e-admin-token-0123456789abcdef"
NUMBER = "+18005550100"
RECORDED_NUMBER = "+18005550122"  # routed to the profile that records
SALES = "tel:+14155550199"
OTHER_NUMBER = "+18005550177"  # not the account's: Twilio refuses it as a caller ID (21210)
PERSON = "+14155550111"
GOODBYE = Step(
    say="Yes, I'll be there. Bye!",
    tool=ToolCall(name="end_call", arguments={"reason": "confirmed"}),
    then="See you then. Goodbye!",
)


def settings(tmp_path: Path) -> Settings:
    reminders = AgentProfile(
        instructions="You are calling {{ var:first_name }} about the visit on {{ var:date }}. Then call end_call.",
        greeting="Hello, this is Example Dental.",
        tools=("end_call",),
        variables=("first_name", "date"),
    )
    stranger = AgentProfile(tools=("end_call",), outbound=Outbound(from_number=OTHER_NUMBER))
    recorded = AgentProfile(tools=("end_call",), recording=Recording(enabled=True))
    transfers = AgentProfile(tools=("end_call", "transfer_call"), transfer=Transfer(targets={"sales": SALES}))
    return Settings(
        profiles={"default": AgentProfile(tools=("end_call",)), "reminders": reminders, "stranger": stranger,
                  "recorded": recorded, "transfers": transfers},
        routes=({"dialed": (RECORDED_NUMBER,), "profile": "recorded"},),
        twilio=TwilioSettings(from_number=NUMBER, do_not_call=("+1900*",), ring_timeout_s=20),
        reports=Reports(jsonl_path=str(tmp_path / "calls.jsonl"), mask_caller=False),
    )


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    account = TwilioAccount(numbers={NUMBER: TwilioNumber(), RECORDED_NUMBER: TwilioNumber()})
    async with harness.running_stack(
        settings(tmp_path), time_scale=SCALE, twilio=account, admin_token=TOKEN
    ) as running:
        yield running


def finished(stack: Stack) -> list[CallRecord]:
    """Every call the controller reports from now on (``call.ended``), in order."""
    reports: list[CallRecord] = []
    stack.runtime.registry.on_finished.append(reports.append)
    return reports


async def logged(tmp_path: Path, call_id: str) -> list[dict[str, Any]]:
    """The call log's lines for ``call_id`` once the notifier has written one (it writes in the background)."""
    path = tmp_path / "calls.jsonl"
    for _ in range(100):
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        mine = [line for line in lines if line.get("call_id") == call_id]
        if mine:
            return mine
        await asyncio.sleep(0.05)
    return []


async def admin(stack: Stack, method: str, path: str, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.request(
            method, f"{stack.server.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs  # type: ignore[arg-type]
        )


async def test_an_outbound_call_reaches_a_person(stack: Stack, tmp_path: Path) -> None:
    reports = finished(stack)
    call = OutboundCall(
        name="reminder", to=PERSON, profile="reminders", variables={"first_name": "Ada", "date": "Tuesday"},
        callee=Callee(steps=[Step(say="Hello?", reply="Hi Ada, are you still coming on Tuesday?"), GOODBYE]),
    )  # fmt: skip
    outcome = await harness.run_outbound(stack, call, timeout=30)
    assert outcome.problems == []
    rec, record, placed = outcome.twilio, outcome.record, outcome.placed
    assert rec is not None
    assert record is not None
    assert placed is not None
    # the request became a Twilio call placed with a signed status callback to our public URL, then an OpenAI call
    assert placed["call_sid"] == rec.sid == record.twilio_call_sid
    (create,) = rec.requests
    form = dict(create.params)
    assert (form["To"], form["From"]) == (PERSON, NUMBER)
    assert form["StatusCallback"] == f"{stack.server.url}/twilio/status?leg={placed['id']}"
    assert "sip:proj_sipctlsim@sip.api.openai.com" in form["Twiml"]
    assert all(cb.status == 200 for cb in rec.callbacks)
    (leg,) = outcome.legs
    assert record.call_id == leg.call_id
    assert record.ended_reason == "agent_end_call"
    assert record.outbound == {"id": placed["id"], "variables": {"first_name": "Ada", "date": "Tuesday"}}
    # the variables in the instructions the call was accepted with
    (body,) = leg.accept_bodies
    assert body["instructions"].startswith("You are calling Ada about the visit on Tuesday.")
    # every status callback reached the controller, verified and recorded, in order
    answer = await admin(stack, "GET", f"/v1/outbound/{placed['id']}")
    assert answer.status_code == 200
    view = answer.json()
    assert view["status"] == "completed"
    assert view["call_id"] == leg.call_id
    assert [e["status"] for e in view["events"] if e["kind"] == "status"] == rec.statuses == [
        "initiated", "ringing", "in-progress", "completed"
    ]  # fmt: skip
    # reported once, with the Twilio and outbound parts in call.ended
    assert [r.call_id for r in reports] == [leg.call_id]
    (line,) = await logged(tmp_path, leg.call_id)
    assert isinstance(line["twilio"], dict)
    assert line["twilio"]["call_sid"] == rec.sid
    assert line["outbound"] == {"id": placed["id"], "variables": {"first_name": "Ada", "date": "Tuesday"}}


@pytest.mark.parametrize(
    ("callee", "ended_reason", "status", "error_code"),
    [
        pytest.param(Callee(outcome="busy"), "busy", "busy", None, id="busy"),
        pytest.param(Callee(outcome="no_answer"), "no_answer", "no-answer", None, id="no-answer"),
        pytest.param(Callee(outcome="failed", error_code=32009), "failed", "failed", 32009, id="failed"),
        pytest.param(Callee(outcome="hangup_while_ringing", ring_seconds=3), "busy", "busy", None, id="declined"),
    ],
)
async def test_each_unanswered_outcome_is_reported_once_with_its_ended_reason(
    stack: Stack, tmp_path: Path, callee: Callee, ended_reason: str, status: str, error_code: int | None
) -> None:
    reports = finished(stack)
    call = OutboundCall(name="unanswered", to=PERSON, profile="reminders",
                        variables={"first_name": "Ben", "date": "Monday"}, callee=callee)  # fmt: skip
    outcome = await harness.run_outbound(stack, call, timeout=30)
    assert outcome.problems == []
    rec, record, placed = outcome.twilio, outcome.record, outcome.placed
    assert rec is not None
    assert record is not None
    assert placed is not None
    assert (rec.status, rec.error_code, outcome.legs, stack.sim.calls) == (status, error_code, [], {})
    # reported under the request's id, once, with its own ending and Twilio's code
    assert [r.call_id for r in reports] == [placed["id"]] == [record.call_id]
    assert record.ended_reason == ended_reason
    assert record.twilio is not None
    assert (record.twilio["status"], record.twilio["error_code"]) == (status, error_code)
    assert record.outbound == {"id": placed["id"], "variables": {"first_name": "Ben", "date": "Monday"}}
    assert [line["ended_reason"] for line in await logged(tmp_path, placed["id"])] == [ended_reason]


async def test_an_inbound_call_on_a_twilio_number_is_matched_by_its_correlation_header(stack: Stack) -> None:
    reports = finished(stack)
    caller = InboundCall(
        name="inbound", from_="+14155550123", to=NUMBER,
        steps=[Step(say="Are you open on Saturday?", reply="No, Monday to Friday."), GOODBYE],
    )  # fmt: skip
    outcome = await harness.run_inbound(stack, caller, timeout=30)
    assert outcome.problems == []
    rec, record = outcome.twilio, outcome.record
    assert rec is not None
    assert record is not None
    # the voice webhook was signed and answered with TwiML dialling the project with our correlation id
    voice = next(cb for cb in rec.callbacks if cb.kind == "voice")
    assert (voice.url, voice.status) == (f"{stack.server.url}/twilio/voice", 200)
    (bridge,) = rec.bridges
    sent = {h["name"]: h["value"] for h in bridge.headers}
    row = await stack.runtime.store.get_twilio_call(call_sid=rec.sid)
    assert row is not None
    assert sent[CORRELATION_HEADER] == row.correlation
    assert "+14155550123" not in bridge.uri  # the caller's number is never in the headers we add
    (leg,) = outcome.legs
    assert (row.call_id, record.call_id, record.twilio_call_sid) == (leg.call_id, leg.call_id, rec.sid)
    # the caller and the dialled number as Twilio saw them; the status callback's outcome
    assert record.twilio is not None
    assert (record.twilio["direction"], record.twilio["from"], record.twilio["to"]) == (
        "inbound", "+14155550123", NUMBER
    )
    assert record.outbound is None
    assert (row.status, rec.status) == ("completed", "completed")
    assert [r.call_id for r in reports] == [leg.call_id]


async def test_unsigned_or_wrongly_signed_callbacks_are_refused_and_nothing_is_recorded(stack: Stack) -> None:
    outcome = await harness.run_outbound(
        stack, OutboundCall(name="busy", to=PERSON, profile="reminders",
                            variables={"first_name": "Cy", "date": "Friday"}, callee=Callee(outcome="busy")),
        timeout=30,
    )  # fmt: skip
    assert outcome.problems == []
    assert outcome.twilio is not None
    sid = outcome.twilio.sid
    before = await stack.runtime.store.get_twilio_call(call_sid=sid)
    assert before is not None
    account = stack.twilio.account
    form = {"AccountSid": account.account_sid, "CallSid": sid, "CallStatus": "completed", "From": NUMBER,
            "To": PERSON, "Direction": "outbound-api"}  # fmt: skip
    fresh_sid = "CA" + "ab" * 16
    voice_form = {**form, "CallSid": fresh_sid, "CallStatus": "ringing", "Direction": "inbound"}
    url = stack.server.url
    wrong = RequestValidator("0" * 32)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        for path, params in (("/twilio/status", form), ("/twilio/voice", voice_form)):
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            unsigned = await client.post(f"{url}{path}", content=urlencode(params), headers=headers)
            signature = str(wrong.compute_signature(f"{url}{path}", params))
            forged = await client.post(f"{url}{path}", content=urlencode(params),
                                       headers={**headers, "X-Twilio-Signature": signature})  # fmt: skip
            assert (unsigned.status_code, forged.status_code) == (403, 403), path
            assert unsigned.text == forged.text == "forbidden"
    after = await stack.runtime.store.get_twilio_call(call_sid=sid)
    assert after == before
    assert await stack.runtime.store.get_twilio_call(call_sid=fresh_sid) is None


async def test_unknown_correlation_ids_and_callsids_match_nothing(stack: Stack) -> None:
    reports = finished(stack)
    # an OpenAI call carrying a well-formed correlation id that is none of ours: taken, but tied to no Twilio call
    spec = CallSpec(name="stray", caller="+14155550199", steps=[GOODBYE])
    headers = [("From", "<sip:+14155550199@example.com>"), ("To", "<sip:proj_sipctlsim@sip.api.openai.com>"),
               (CORRELATION_HEADER, new_correlation_id())]  # fmt: skip
    call = await stack.sim.place_call(spec, sip_headers=headers)
    await stack.sim.wait_ended(call.call_id, 30)
    record = await stack.runtime.registry.wait_ended(call.call_id, 10)
    assert (record.twilio, record.outbound, record.ended_reason) == (None, None, "agent_end_call")
    assert f"{CORRELATION_HEADER} matches no Twilio call of ours" in record.errors
    assert [r.call_id for r in reports] == [call.call_id]
    # a signed status callback for a CallSid we never placed: 404, nothing recorded
    unknown_sid = "CA" + "cd" * 16
    params = {"AccountSid": stack.twilio.account.account_sid, "CallSid": unknown_sid, "CallStatus": "completed",
              "From": NUMBER, "To": PERSON, "Direction": "outbound-api"}  # fmt: skip
    url = f"{stack.server.url}/twilio/status"
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        answer = await client.post(url, content=urlencode(params), headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": stack.twilio.sign(url, params),
        })  # fmt: skip
    assert answer.status_code == 404
    assert "no Twilio call of ours" in answer.json()["error"]
    assert await stack.runtime.store.get_twilio_call(call_sid=unknown_sid) is None


async def test_refused_numbers_get_a_clear_error_and_place_nothing(stack: Stack) -> None:
    reports = finished(stack)
    variables = {"first_name": "Di", "date": "Monday"}
    for to, message in (("+19005550100", "do-not-call list"), ("4155550111", "is not an E.164 number")):
        answer = await admin(stack, "POST", "/v1/outbound",
                             json={"to": to, "profile": "reminders", "variables": variables})  # fmt: skip
        assert answer.status_code == 422
        assert message in answer.json()["error"]
    missing = await admin(stack, "POST", "/v1/outbound", json={"to": PERSON, "profile": "reminders"})
    assert missing.status_code == 422
    assert "missing: date, first_name" in missing.json()["error"]
    assert (stack.twilio.calls, stack.twilio.refused, reports) == ({}, [], [])
    # a caller ID Twilio refuses (not a number of the account): Twilio's code, reported once as failed
    refused = await admin(stack, "POST", "/v1/outbound", json={"to": PERSON, "profile": "stranger"})
    assert refused.status_code == 422
    body = refused.json()
    assert body["twilio_code"] == 21210
    assert body["ambiguous"] is False
    assert stack.twilio.calls == {}
    assert [r.status for r in stack.twilio.refused] == [400]
    record = await stack.runtime.registry.wait_ended(body["id"], 10)
    assert [r.call_id for r in reports] == [body["id"]]
    assert record.ended_reason == "failed"
    assert record.twilio is not None
    assert record.twilio["error_code"] == 21210


async def test_the_harness_flags_what_differs_from_the_scenario(stack: Stack) -> None:
    """What ``sipctl simulate`` checks on a Twilio call is checked: a report or a Twilio side that differs from the
    scenario is a problem, named."""
    call = OutboundCall(
        name="wrong", to=PERSON, profile="reminders", variables={"first_name": "Al", "date": "Monday"},
        callee=Callee(outcome="no_answer"), expect=TwilioExpectation(final_status="busy"),
        report=ReportExpectation(ended_reason="busy"),
    )  # fmt: skip
    outcome = await harness.run_outbound(stack, call, timeout=30)
    assert outcome.problems == [
        f"outbound {PERSON}: twilio final_status: expected 'busy', got 'no-answer'",
        "report ended_reason: expected busy, got no_answer",
    ]


async def test_a_recording_that_arrives_before_the_report_is_on_the_report(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stack.runtime.store
    get_twilio_call = store.get_twilio_call

    async def recording_first(**kwargs: Any) -> Any:
        """The finishing call reads its Twilio row once the recording callback is in (the race decided one way)."""
        if "id" not in kwargs:
            return await get_twilio_call(**kwargs)
        async with asyncio.timeout(10):
            while True:
                row = await get_twilio_call(**kwargs)
                if row is None or any(e.get("kind") == "recording" for e in row.events):
                    return row
                await asyncio.sleep(0.02)

    monkeypatch.setattr(store, "get_twilio_call", recording_first)
    person = Callee(steps=[Step(say="Hello?", reply="Hi, this call is recorded."), GOODBYE])
    call = OutboundCall(name="recorded", to=PERSON, profile="recorded", callee=person)
    outcome = await harness.run_outbound(stack, call, timeout=30)
    assert outcome.problems == []
    rec, record, placed = outcome.twilio, outcome.record, outcome.placed
    assert rec is not None
    assert record is not None
    assert placed is not None
    # Twilio was asked to record both sides and to send the signed callback to our public URL
    form = dict(rec.requests[0].params)
    assert (form["Record"], form["RecordingChannels"]) == ("true", "dual")
    assert form["RecordingStatusCallback"] == f"{stack.server.url}/twilio/recording?leg={placed['id']}"
    (callback,) = [cb for cb in rec.callbacks if cb.kind == "recording"]
    assert callback.status == 200
    assert rec.recording is not None
    wanted = {"sid": rec.recording["sid"], "url": rec.recording["url"], "duration_s": rec.recording["duration"],
              "channels": 2}  # fmt: skip
    assert record.recording == wanted
    lines = await logged(tmp_path, record.call_id)
    assert [line.get("recording") for line in lines] == [wanted]  # the report; no late event
    report = await stack.runtime.store.get_report(record.call_id)
    assert report is not None
    assert report["recording"] == wanted


async def test_a_recording_after_the_report_went_out_is_a_late_call_recording_event(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = stack.twilio
    send = side.send

    async def once_reported(record: Any, kind: str, url: str, method: str, params: dict[str, str]) -> Any:
        """The recording callback waits until the call's report is written (the race decided the other way)."""
        if kind == "recording":
            row = await stack.runtime.store.get_twilio_call(call_sid=params["CallSid"])
            assert row is not None
            assert row.call_id is not None
            async with asyncio.timeout(10):
                while await stack.runtime.store.get_report(row.call_id) is None:
                    await asyncio.sleep(0.02)
        return await send(record, kind, url, method, params)

    monkeypatch.setattr(side, "send", once_reported)
    caller = InboundCall(name="recorded-inbound", from_="+14155550123", to=RECORDED_NUMBER,
                         steps=[Step(say="Do you record calls?", reply="Yes, this one is."), GOODBYE])  # fmt: skip
    outcome = await harness.run_inbound(stack, caller, timeout=30)
    assert outcome.problems == []
    rec, record = outcome.twilio, outcome.record
    assert rec is not None
    assert record is not None
    # the number's profile records: the bridge's <Dial> asked for it
    row = await stack.runtime.store.get_twilio_call(call_sid=rec.sid)
    assert row is not None
    assert 'record="record-from-answer-dual"' in rec.twiml[0].text
    assert f"{stack.server.url}/twilio/recording?leg={row.id}" in rec.twiml[0].text.replace("&amp;", "&")
    assert record.recording is None
    assert rec.recording is not None
    wanted = {"sid": rec.recording["sid"], "url": rec.recording["url"], "duration_s": rec.recording["duration"],
              "channels": 2}  # fmt: skip
    lines: list[dict[str, Any]] = []
    for _ in range(200):
        lines = await logged(tmp_path, record.call_id)
        if len(lines) == 2:
            break
        await asyncio.sleep(0.05)
    ended, late = lines
    assert (ended["ended_reason"], ended["recording"]) == ("agent_end_call", None)
    assert late == {"event": "call.recording", "call_id": record.call_id, "profile": "recorded",
                    "twilio_call_sid": rec.sid, "ended_reason": "agent_end_call", "recording": wanted}  # fmt: skip
    stored = await stack.runtime.store.get_report(record.call_id)  # the call history's page links it too
    assert stored is not None
    assert stored["recording"] == wanted


async def test_a_transfer_on_a_twilio_call_redirects_it_to_the_target(stack: Stack, tmp_path: Path) -> None:
    asks = Step(say="Can I talk to sales, please?", tool=ToolCall(name="transfer_call", arguments={"target": "sales"}),
                then="Sure, transferring you to sales now.")  # fmt: skip
    callee = Callee(steps=[asks], max_call_seconds=60)
    call = OutboundCall(name="transfer", to=PERSON, profile="transfers", callee=callee)
    outcome = await harness.run_outbound(stack, call, timeout=30)
    assert outcome.problems == []
    rec, record = outcome.twilio, outcome.record
    assert rec is not None
    assert record is not None
    (leg,) = outcome.legs
    # no /refer to OpenAI: Twilio's call was redirected to TwiML dialling the target, which hung the OpenAI leg up
    assert (leg.refers, leg.ended_by) == ([], "caller")
    _create, update = rec.requests
    assert "<Number>+14155550199</Number>" in dict(update.params)["Twiml"]
    openai, target = rec.bridges
    assert openai.call_id == leg.call_id
    assert (target.uri, target.call_id) == (SALES, None)  # the callee is put through to the target
    assert openai.ended_at is not None
    assert openai.ended_at <= target.t
    assert (rec.status, rec.ended_by) == ("completed", "callee")  # the callee talked to sales, then hung up
    # verified the usual way: the call left OpenAI within the window
    assert (record.ended_reason, record.transfer_target, record.transfer_outcome) == (
        "transferred", "sales", "transferred"
    )  # fmt: skip
    assert "transfer to sales: Twilio is dialling it, waiting for the call to leave" in [e for _, e in record.timeline]
    (line,) = await logged(tmp_path, record.call_id)
    assert line["transfer"] == {"target": "sales", "outcome": "transferred"}
    assert line["twilio"]["call_sid"] == rec.sid


SCENARIOS = Path(__file__).resolve().parents[2] / "config" / "scenarios"


def test_sipctl_simulate_prints_the_twilio_side_beside_the_openai_leg(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", str(SCENARIOS / "twilio-outbound-voicemail.yaml"), "--time-scale", "0.02"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("── twilio outbound: reaches-voicemail") :]
    lines = [line.split("s  ", 1)[1] for line in section.splitlines() if line.startswith("  ") and "s  " in line]
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(prefix))
        for prefix in ("twilio  outbound-api +18005550100 → +14155550115", "twilio  dials sip:proj_sipctlsim@",
                       "openai  incoming call rtc_", "controller  accepted", "twilio  voicemail beep",
                       "controller  ended: voicemail", "twilio  completed")
    ]  # fmt: skip
    assert order == sorted(order)
    assert "reaches-voicemail  outbound   +14155550115  completed      machine_end_beep  voicemail     1     ok" in out
    assert "twilio: 1 passed, 0 failed" in out
    # --json: the Twilio record, its OpenAI leg and the controller's report
    assert main(["simulate", str(SCENARIOS / "twilio-outbound-busy.yaml"), "--time-scale", "0.02", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert (entry["call"], entry["direction"], entry["ok"], entry["simulator"]) == ("line-busy", "outbound", True, [])
    assert entry["twilio"]["status"] == "busy"
    assert entry["controller"]["ended_reason"] == "busy"
    assert entry["controller"]["twilio"]["call_sid"] == entry["twilio"]["sid"]


async def test_a_config_that_cannot_place_the_scenarios_calls_is_refused_before_any_call(tmp_path: Path) -> None:
    scenario = tmp_path / "calls.yaml"
    scenario.write_text(
        "name: x\n"
        "twilio:\n"
        "  outbound:\n"
        "    - {name: a, to: '+14155550111', profile: reminders, variables: {first_name: Ada}}\n"
        "    - {name: b, to: '+14155550112', callee: {outcome: voicemail}, report: {ended_reason: voicemail}}\n"
    )  # fmt: skip
    with pytest.raises(ScenarioError) as refused:
        harness.prepare(scenario, SCENARIOS.parent / "sipctl.example.yaml")
    assert str(refused.value).splitlines()[1:] == [
        "  - twilio.outbound[0] (a): variables first_name, but profile reminders declares date, first_name (each "
        "call gives exactly those)",
        "  - twilio.outbound[1] (b): no caller ID: give from, or set the profile's outbound.from_number or "
        "twilio.from_number",
        "  - twilio.outbound[1] (b): expects ended_reason voicemail, but profile default has no outbound.voicemail",
    ]
