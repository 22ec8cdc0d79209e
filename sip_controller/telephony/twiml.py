"""The TwiML we answer Twilio with: bridge the call into OpenAI's SIP endpoint, carrying an opaque correlation id
in a custom ``X-`` header that comes back in the ``realtime.call.incoming`` webhook's ``sip_headers``.

Twilio refuses header names starting with ``X-Twilio-`` and limits the header size, so the name is ours and the
value a short random id: never the caller's number, never a secret."""

from __future__ import annotations

import re
import secrets

from twilio.twiml.voice_response import Dial, VoiceResponse

#: the SIP header (a URI parameter of the <Sip> noun) that ties an OpenAI call to the Twilio call it came from
CORRELATION_HEADER = "X-Sipctl-Correlation"
OPENAI_SIP_HOST = "sip.api.openai.com"
_CORRELATION = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def new_correlation_id() -> str:
    """A fresh opaque id (24 hex digits: short enough for Twilio's header limit, 96 random bits)."""
    return secrets.token_hex(12)


def well_formed_correlation(value: str | None) -> bool:
    """Whether a header value can be one of our ids (the value comes from the network: checked before use)."""
    return value is not None and bool(_CORRELATION.match(value))


def openai_sip_uri(project_id: str, correlation_id: str) -> str:
    """``sip:<project>@sip.api.openai.com;transport=tls?X-Sipctl-Correlation=<id>``."""
    if not well_formed_correlation(correlation_id):
        raise ValueError("a correlation id is 8 to 64 letters, digits, - or _")
    return f"sip:{project_id}@{OPENAI_SIP_HOST};transport=tls?{CORRELATION_HEADER}={correlation_id}"


def bridge_to_openai(project_id: str, correlation_id: str, *, answer_on_bridge: bool = True) -> str:
    """``<Response><Dial answerOnBridge="true"><Sip>…</Sip></Dial></Response>`` as an XML document.
    ``answerOnBridge``: the caller hears ringing until OpenAI answers (the controller's accept), not silence."""
    response = VoiceResponse()
    dial = Dial(answer_on_bridge=answer_on_bridge)
    dial.sip(openai_sip_uri(project_id, correlation_id))
    response.append(dial)
    return str(response.to_xml())


def hang_up() -> str:
    """``<Response><Hangup/></Response>``: for a Twilio call that must not be bridged."""
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())
