"""A late recording of a call another replica's hangup janitor finishes (#16), through the real apps on one SQLite
file: a call bridged through Twilio whose hangup OpenAI refuses is left ``hanging_up`` by app A as it stops; Twilio's
recording callback then comes to app B while the call is still live (kept on the Twilio call's row only); once OpenAI
confirms the hangup, B's janitor finishes the call with a report that carries the recording, delivered once, and no
``call.recording`` besides."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

from sip_controller.agent.profile import AgentProfile, Recording
from sip_controller.calls.inputs import OperatorHangup
from sip_controller.config import Limits, Reports, Secrets, Settings
from sip_controller.realtime.retries import RetryPolicy
from sip_controller.realtime.sideband import FakeConnector
from sip_controller.service.app import create_app
from sip_controller.service.loopback import serve
from sip_controller.state.sqlite import SQLiteStore
from tests.service.test_twilio_routes import ACCOUNT, PUBLIC, TOKEN, TWILIO
from tests.servicekit import BASE, PROFILE, SECRET, Service, openai_router

pytestmark = pytest.mark.anyio

QUICK = RetryPolicy(wait_initial=0.01, wait_max=0.02, wait_jitter=0.0, attempts=2, timeout_s=2.0)
CALLER = "+14155550123"
RECORDED_NUMBER = "+18005550111"
CALL_SID = "CA" + "7" * 32
RECORDING_SID = "RE" + "4" * 32
RECORDING_URL = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Recordings/{RECORDING_SID}"


@contextlib.asynccontextmanager
async def app_on(path: Path, log: Path, *, hangup_status: int) -> AsyncIterator[Service]:
    router = openai_router(None)
    router.routes["hangup"].respond(hangup_status)
    router.post(path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls/.*", name="twilio").respond(200, json={})
    connector = FakeConnector()
    app_secrets = Secrets(
        openai_api_key=SecretStr("sk-test"), webhook_secrets=(SecretStr(SECRET),), openai_base_url=BASE, twilio=TWILIO
    )
    settings = Settings(
        profiles={"recorded": PROFILE.model_copy(update={"recording": Recording(enabled=True)}),
                  "default": AgentProfile()},
        routes=({"dialed": (RECORDED_NUMBER,), "profile": "recorded"},),
        limits=Limits(hangup_close_wait_s=0.1),
        reports=Reports(jsonl_path=str(log)),
    )  # fmt: skip
    async with (
        await SQLiteStore.open(path) as store,
        httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as openai_client,
    ):
        app = create_app(settings, app_secrets, http_client=openai_client, store=store, connect=connector,
                         drain_timeout_s=0.3, retry=QUICK)  # fmt: skip
        async with serve(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield Service(client, app, router, connector, store)


async def post_signed(svc: Service, path: str, form: dict[str, str]) -> httpx.Response:
    params = {"AccountSid": ACCOUNT, **form}
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, params)
    return await svc.client.post(path, data=params, headers={"X-Twilio-Signature": signature})


async def bridged_call(svc: Service, call_id: str) -> None:
    """Twilio's voice webhook for the recorded number, then OpenAI's for the bridged SIP call; until attached."""
    answer = await post_signed(svc, "/twilio/voice", {"CallSid": CALL_SID, "From": CALLER, "To": RECORDED_NUMBER})
    sip = ET.fromstring(answer.text).find("./Dial/Sip")
    assert sip is not None
    assert sip.text is not None
    correlation = sip.text.split("X-Sipctl-Correlation=", 1)[1]
    body = json.dumps({
        "object": "event", "id": f"evt_{call_id}", "type": "realtime.call.incoming",
        "data": {"call_id": call_id, "sip_headers": [
            {"name": "From", "value": f"<sip:{CALLER}@pstn.twilio.com>;tag=1"},
            {"name": "X-Sipctl-Correlation", "value": correlation},
        ]},
    })  # fmt: skip
    now = datetime.now(UTC)
    signed = {"webhook-id": f"wh_{call_id}", "webhook-timestamp": str(int(now.timestamp())),
              "webhook-signature": Webhook(SECRET).sign(f"wh_{call_id}", now, body)}  # fmt: skip
    assert (await svc.client.post("/webhooks/openai", content=body, headers=signed)).status_code == 200
    async with asyncio.timeout(5):
        while call_id not in svc.connector.attached:
            await asyncio.sleep(0.01)


def lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


async def test_a_recording_that_came_while_the_call_was_hanging_up_is_in_the_report_another_replica_finishes(
    tmp_path: Path,
) -> None:
    db, log = tmp_path / "state.db", tmp_path / "calls.jsonl"
    async with app_on(db, log, hangup_status=500) as a:
        await bridged_call(a, "rtc_rec")
        supervisor = a.runtime.registry.supervisor("rtc_rec")
        assert supervisor is not None
        supervisor.post(OperatorHangup(now=True))
        async with asyncio.timeout(5):
            while (row := await a.store.get_call("rtc_rec")) is None or row.state != "hanging_up":
                await asyncio.sleep(0.02)
    # A stopped with the hangup still refused: the call is left live in hanging_up, its report pending, unsent
    assert lines(log) == []
    async with app_on(db, log, hangup_status=500) as b:
        left = await b.store.get_call("rtc_rec")
        assert left is not None
        assert (left.live, left.state) == (True, "hanging_up")
        form = {"CallSid": CALL_SID, "RecordingSid": RECORDING_SID, "RecordingStatus": "completed",
                "RecordingUrl": RECORDING_URL, "RecordingDuration": "42", "RecordingChannels": "2",
                "RecordingSource": "DialVerb"}  # fmt: skip
        answer = await post_signed(b, "/twilio/recording", form)
        assert answer.json() == {"status": "recorded", "late": False}  # the call is live: kept on the Twilio row
        b.router.routes["hangup"].respond(200)  # OpenAI confirms hangups again: B's janitor finishes the call
        async with asyncio.timeout(15):
            while not lines(log):
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # another notifier poll: nothing more is written
        done = await b.store.get_call("rtc_rec")
        assert done is not None
        assert not done.live
        stored = await b.store.get_report("rtc_rec")
        assert stored is not None
    recording = {"sid": RECORDING_SID, "url": RECORDING_URL, "duration_s": 42, "channels": 2}
    assert stored["recording"] == recording
    (report,) = lines(log)  # the report with its recording, once, and no call.recording besides
    assert report.get("event") is None
    assert (report["call_id"], report["hangup_confirmed"]) == ("rtc_rec", True)
    assert report["recording"] == recording
