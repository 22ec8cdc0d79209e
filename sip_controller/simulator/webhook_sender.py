"""``realtime.call.incoming`` webhooks as OpenAI builds, signs and (re)delivers them."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from .scenario import CallSpec

USER_AGENT = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
MAX_ATTEMPTS = 5
FIRST_BACKOFF = 0.5


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sip_headers(spec: CallSpec, project_id: str) -> list[dict[str, str]]:
    """The SIP headers of an INVITE from a Twilio Elastic SIP trunk, in wire order, then the custom ones."""
    tag = f"{secrets.randbelow(10**8):08d}_{secrets.token_hex(4)}"
    headers = [
        ("From", f"<sip:{spec.caller}@sip.twilio.com>;tag={tag}"),
        ("To", f"<sip:{project_id}@sip.api.openai.com;transport=tls>"),
        ("Call-ID", f"{secrets.token_hex(16)}@0.0.0.0"),
        ("P-Asserted-Identity", f"<sip:{spec.caller}@sip.twilio.com>"),
        ("X-Twilio-CallSid", f"CA{secrets.token_hex(16)}"),
        ("Diversion", f"<sip:{spec.dialed}@sip.twilio.com>;reason=unconditional"),
        *spec.headers.items(),
    ]
    return [{"name": name, "value": value} for name, value in headers]


def incoming_call_event(call_id: str, spec: CallSpec, project_id: str, event_id: str) -> dict[str, Any]:
    return {
        "object": "event",
        "id": event_id,
        "type": "realtime.call.incoming",
        "created_at": int(time.time()),
        "data": {
            "call_id": call_id,
            "sip_media_security": "srtp",
            "sip_headers": sip_headers(spec, project_id),
        },
    }


class WebhookSender:
    """Signs and POSTs one webhook body, retrying like OpenAI: exponential backoff, same ``webhook-id``.

    ``on_signed(body, headers)`` sees every attempt as it goes out (the simulator's wire observers).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        secret: str,
        *,
        time_scale: float,
        on_signed: Callable[[str, dict[str, str]], None] | None = None,
    ) -> None:
        self._client = client
        self._webhook = Webhook(secret)
        self._time_scale = time_scale
        self._on_signed = on_signed

    def signed_headers(self, webhook_id: str, body: str) -> dict[str, str]:
        now = datetime.now(UTC)
        signature = str(self._webhook.sign(webhook_id, now, body))
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }

    async def deliver(self, url: str, webhook_id: str, body: str, on_status: Callable[[int], None]) -> int:
        """Deliver until a 2xx or ``MAX_ATTEMPTS``; report each attempt's status (0: no HTTP answer)."""
        delay = FIRST_BACKOFF * self._time_scale
        status = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            headers = self.signed_headers(webhook_id, body)
            if self._on_signed is not None:
                self._on_signed(body, headers)
            try:
                response = await self._client.post(url, content=body.encode(), headers=headers)
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            on_status(status)
            if 200 <= status < 300 or attempt == MAX_ATTEMPTS:
                return status
            await asyncio.sleep(delay)
            delay *= 2
        return status


def compact_json(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))
