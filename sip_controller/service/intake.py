"""Webhook intake: verify a delivery (Standard Webhooks), then parse it into typed models.

Nothing is parsed before the signature is verified. Every verification failure is one domain error,
:class:`WebhookRejected`, carrying the HTTP status to answer and a low-cardinality outcome label.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from standardwebhooks import Webhook

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


class SipHeader(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    value: str


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


_SIP_USER = re.compile(r"(?:sips?|tel):([^@;>\s]+)", re.IGNORECASE)
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_VISUAL_SEPARATORS = re.compile(r"[-.() ]")


def number_from_header(value: str) -> str | None:
    """The E.164 number in ``<sip:+14155550123@host>;tag=…`` or ``tel:+1…``; None if there is none."""
    match = _SIP_USER.search(value)
    if match is None:
        return None
    number = _VISUAL_SEPARATORS.sub("", match.group(1))
    return number if _E164.fullmatch(number) else None


@dataclass(frozen=True)
class IncomingCall:
    """An incoming call as the rest of the service sees it. Header values are untrusted."""

    call_id: str
    webhook_id: str
    headers: tuple[SipHeader, ...]
    received_at: datetime
    sip_media_security: str | None = None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for h in self.headers:
            if h.name.lower() == wanted:
                return h.value
        return None

    @property
    def caller(self) -> str | None:
        for name in ("From", "P-Asserted-Identity"):
            value = self.header(name)
            number = number_from_header(value) if value else None
            if number:
                return number
        return None

    @property
    def dialed(self) -> str | None:
        for name in ("Diversion", "P-Called-Party-ID", "To"):
            value = self.header(name)
            number = number_from_header(value) if value else None
            if number:
                return number
        return None


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
    return IncomingCall(
        call_id=event.data.call_id,
        webhook_id=webhook_id,
        headers=tuple(event.data.sip_headers),
        received_at=datetime.now(UTC),
        sip_media_security=event.data.sip_media_security,
    )
