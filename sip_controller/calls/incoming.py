"""An incoming call as the rest of the service sees it: its id, its SIP headers (untrusted) and the numbers
read from them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class SipHeader(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    value: str


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
