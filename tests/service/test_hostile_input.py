"""Hostile input through the running service (uvicorn on loopback): what a caller's network controls must stay
bounded in everything the service keeps and reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from sip_controller.calls.incoming import CUT_MARK, MAX_HEADER_VALUE_CHARS
from sip_controller.calls.report import report_document
from tests.servicekit import SECRET, running_service

pytestmark = pytest.mark.anyio

TOKEN = "Zq8-hostile-input-test-token-4f1c9e"


async def test_a_200kb_header_is_not_kept_whole_in_the_record_or_the_admin_document() -> None:
    call_id = "rtc_huge_header"
    body = json.dumps(
        {
            "type": "realtime.call.incoming",
            "data": {
                "call_id": call_id,
                "sip_headers": [
                    {"name": "From", "value": "<sip:+14155550123@sip.twilio.com>;tag=1"},
                    {"name": "X-Twilio-CallSid", "value": "CA" + "f" * 200_000},
                ],
            },
        }
    ).encode()
    now = datetime.now(UTC)
    headers = {
        "webhook-id": "wh_huge",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("wh_huge", now, body.decode()),
    }
    async with running_service(TOKEN) as svc:
        answer = await svc.client.post("/webhooks/openai", content=body, headers=headers)
        assert answer.status_code == 200
        record = svc.runtime.registry.get(call_id)
        assert record is not None
        assert record.twilio_call_sid is not None
        assert len(record.twilio_call_sid) == MAX_HEADER_VALUE_CHARS
        assert record.twilio_call_sid.endswith(CUT_MARK)
        assert len(json.dumps(report_document(record))) < 20_000
        admin = await svc.client.get(f"/v1/calls/{call_id}", headers={"authorization": f"Bearer {TOKEN}"})
        assert admin.status_code == 200
        assert len(admin.content) < 20_000
        assert "f" * 2000 not in admin.text
