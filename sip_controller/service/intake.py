"""Webhook intake: verify a delivery (Standard Webhooks), then parse it into typed models.

Nothing is parsed before the signature is verified. Every verification failure is one domain error,
:class:`WebhookRejected`, carrying the HTTP status to answer and a low-cardinality outcome label.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from standardwebhooks import Webhook

from sip_controller.calls.incoming import IncomingCall, SipHeader, cap_headers

log = structlog.get_logger("sip_controller.service.intake")

TOLERANCE_S = 300
INCOMING = "realtime.call.incoming"

Outcome = Literal["invalid_signature", "stale", "malformed", "too_large"]


class WebhookRejected(Exception):
    def __init__(self, status: int, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message


class WebhookVerifier:
    """Checks ``webhook-signature`` against every configured secret (several during rotation)."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        tolerance_s: int = TOLERANCE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets:
            raise ValueError("at least one webhook secret is required")
        self._hooks = [Webhook(s) for s in secrets]
        self._tolerance = tolerance_s
        self._clock = clock

    def verify(self, body: bytes, headers: Mapping[str, str]) -> str:
        """Return the ``webhook-id`` of a genuine, fresh delivery; raise WebhookRejected otherwise."""
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signature = headers.get("webhook-signature", "")
        if not (msg_id and stamp and signature):
            raise WebhookRejected(401, "invalid_signature", "missing webhook-id, -timestamp or -signature header")
        try:
            sent_at = int(stamp)
        except ValueError:
            raise WebhookRejected(401, "invalid_signature", "webhook-timestamp is not an integer") from None
        if abs(self._clock() - sent_at) > self._tolerance:
            raise WebhookRejected(401, "stale", f"webhook-timestamp is more than {self._tolerance}s off")
        wanted = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}
        for hook in self._hooks:
            try:
                hook.verify(body, wanted, json_parse=False)
            except Exception:  # the library raises its own error, ValueError, UnicodeDecodeError, binascii...
                continue
            return msg_id
        raise WebhookRejected(401, "invalid_signature", "no signature matched a configured secret")


# ---- payload models -------------------------------------------------------------------------------------


class IncomingCallData(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    call_id: str = Field(min_length=1, max_length=256)
    sip_headers: list[SipHeader] = Field(default_factory=list)
    sip_media_security: str | None = None


class IncomingCallEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str | None = None
    type: Literal["realtime.call.incoming"]
    created_at: int | None = None
    data: IncomingCallData


@dataclass(frozen=True)
class OtherEvent:
    """A verified event of a type this service does not handle (acknowledged and ignored)."""

    type: str


def parse_event(body: bytes, webhook_id: str) -> IncomingCall | OtherEvent:
    """Parse a verified body. Invalid JSON or an incoming-call event without ``data.call_id`` -> 400."""
    try:
        payload: Any = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, huge integers, absurd nesting
        raise WebhookRejected(400, "malformed", "body is not valid JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise WebhookRejected(400, "malformed", "body is not an event object with a string 'type'")
    if payload["type"] != INCOMING:
        return OtherEvent(type=payload["type"][:100])
    try:
        event = IncomingCallEvent.model_validate(payload)
    except RecursionError:
        raise WebhookRejected(400, "malformed", "event is nested too deeply") from None
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise WebhookRejected(400, "malformed", f"realtime.call.incoming is missing or has bad: {fields}") from None
    capped = cap_headers(event.data.sip_headers)
    if capped.dropped or capped.cut:
        log.warning("webhook.headers_capped", call_id=event.data.call_id, dropped=capped.dropped, cut=capped.cut)
    security = event.data.sip_media_security
    return IncomingCall(
        call_id=event.data.call_id,
        webhook_id=webhook_id,
        headers=capped.headers,
        received_at=datetime.now(UTC),
        sip_media_security=security[:32] if security is not None else None,
    )
