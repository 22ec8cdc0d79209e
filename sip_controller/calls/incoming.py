"""An incoming call as the rest of the service sees it: its id, its SIP headers (untrusted) and the numbers
read from them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class SipHeader(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    value: str


#: a SIP header value kept on a call is cut to this many characters (real ones are far shorter: a From with a
#: tag, a CallSid) and ends with CUT_MARK when cut; at most MAX_HEADERS headers are kept, in their order
MAX_HEADER_VALUE_CHARS = 1024
MAX_HEADER_NAME_CHARS = 128
MAX_HEADERS = 64
CUT_MARK = "…[cut]"


@dataclass(frozen=True, slots=True)
class CappedHeaders:
    headers: tuple[SipHeader, ...]
    #: headers past MAX_HEADERS, not kept
    dropped: int
    #: values (or names) that were cut to their limit
    cut: int


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(CUT_MARK)] + CUT_MARK


def cap_headers(headers: Sequence[SipHeader]) -> CappedHeaders:
    """The headers a call keeps: each name and value bounded (cut ones end with ``CUT_MARK``), at most
    ``MAX_HEADERS`` of them. Values are caller-controlled, so nothing unbounded reaches a record or a report."""
    kept: list[SipHeader] = []
    cut = 0
    for header in headers[:MAX_HEADERS]:
        name = _cap(header.name, MAX_HEADER_NAME_CHARS)
        value = _cap(header.value, MAX_HEADER_VALUE_CHARS)
        if name is header.name and value is header.value:
            kept.append(header)
        else:
            cut += 1
            kept.append(SipHeader(name=name, value=value))
    return CappedHeaders(tuple(kept), max(0, len(headers) - MAX_HEADERS), cut)


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
    #: a call Twilio bridged in (#16): the caller and the dialled number as Twilio reported them in its signed
    #: webhook, which replace what the SIP headers say
    bridged: tuple[str | None, str | None] | None = None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for h in self.headers:
            if h.name.lower() == wanted:
                return h.value
        return None

    @property
    def caller(self) -> str | None:
        if self.bridged is not None:
            return self.bridged[0]
        for name in ("From", "P-Asserted-Identity"):
            value = self.header(name)
            number = number_from_header(value) if value else None
            if number:
                return number
        return None

    @property
    def dialed(self) -> str | None:
        if self.bridged is not None:
            return self.bridged[1]
        for name in ("Diversion", "P-Called-Party-ID", "To"):
            value = self.header(name)
            number = number_from_header(value) if value else None
            if number:
                return number
        return None
