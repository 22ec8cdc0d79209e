"""The TwiML we answer Twilio with: bridge the call into OpenAI's SIP endpoint, carrying an opaque correlation id
in a custom ``X-`` header that comes back in the ``realtime.call.incoming`` webhook's ``sip_headers``.

Twilio refuses header names starting with ``X-Twilio-`` and limits the header size, so the name is ours and the
value a short random id: never the caller's number, never a secret."""

from __future__ import annotations

import re
import secrets

from twilio.twiml.voice_response import Dial, Gather, VoiceResponse

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


#: the recording events Twilio reports: the file is ready, or nothing was recorded
RECORDING_EVENTS = "completed absent"
_GATHER_LANGUAGE = re.compile(r"^[a-z]{2,3}-[A-Z]{2}$")
_TRANSFER_TARGET = re.compile(r"^(tel:(\+[1-9][0-9]{1,14})|sips?:[^\s@<>]+@[^\s<>]+)$")


def bridge_to_openai(
    project_id: str, correlation_id: str, *, answer_on_bridge: bool = True, recording_callback: str | None = None,
    action: str | None = None,
) -> str:
    """``<Response><Dial answerOnBridge="true"><Sip>…</Sip></Dial></Response>`` as an XML document.
    ``answerOnBridge``: the caller hears ringing until OpenAI answers (the controller's accept), not silence.
    ``recording_callback``: record the bridged call from the answer, each side on its own channel
    (``record-from-answer-dual``), and POST the recording's callback there. ``action``: where Twilio posts when the
    ``<Dial>`` is over (a parked call's next leg, #16); without it the call hangs up then."""
    response = VoiceResponse()
    recording: dict[str, str] = {}
    if recording_callback is not None:
        recording = {
            "record": "record-from-answer-dual",
            "recording_status_callback": recording_callback,
            "recording_status_callback_method": "POST",
            "recording_status_callback_event": RECORDING_EVENTS,
        }
    if action is not None:  # where Twilio posts when the <Dial> is over; its answer is what follows
        recording = {**recording, "action": action, "method": "POST"}
    dial = Dial(answer_on_bridge=answer_on_bridge, **recording)
    dial.sip(openai_sip_uri(project_id, correlation_id))
    response.append(dial)
    return str(response.to_xml())


def transfer_to(target_uri: str) -> str:
    """The TwiML a Twilio call is redirected to for a transfer (Calls API update, ``Twiml=``): Twilio ends the
    ``<Dial>`` into OpenAI (the OpenAI leg hangs up) and dials the target instead: ``tel:+E164`` as a
    ``<Number>``, a ``sip:``/``sips:`` URI as a ``<Sip>``."""
    match = _TRANSFER_TARGET.match(target_uri.strip())
    if match is None:
        raise ValueError(f"transfer target {target_uri[:80]!r} is not tel:+E164 or a sip: URI with user@host")
    response = VoiceResponse()
    dial = Dial()
    if match.group(2) is not None:
        dial.number(match.group(2))
    else:
        dial.sip(match.group(1))
    response.append(dial)
    return str(response.to_xml())


def hang_up() -> str:
    """``<Response><Hangup/></Response>``: for a Twilio call that must not be bridged."""
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())


def listen_parked(action_url: str, *, timeout_s: int, language: str | None = None) -> str:
    """The TwiML of a parked call (#16): Twilio listens for speech (``<Gather input="speech">``, Twilio's
    ``phone_call`` model with ``speechTimeout="auto"``) and POSTs what it heard to ``action_url``, also when it heard
    nothing for ``timeout_s`` seconds (``actionOnEmptyResult``): each answer is the next TwiML, another round of
    listening or the bridge to a fresh OpenAI session. Nothing is played: the other side is on hold."""
    response = VoiceResponse()
    # Gather's language is a BCP-47 tag with its region (en-US); a bare ISO-639 code (a transcription's "en") is
    # left to Twilio's default rather than refused
    options: dict[str, str] = {"language": language} if language and _GATHER_LANGUAGE.match(language) else {}
    response.append(
        Gather(
            input="speech", action=action_url, method="POST", timeout=timeout_s, speech_timeout="auto",
            speech_model="phone_call", action_on_empty_result=True, **options,
        )
    )  # fmt: skip
    return str(response.to_xml())


def give_up_parked(line: str) -> str:
    """``<Say>`` one line with Twilio's voice, then ``<Hangup/>``: a parked call that waited too long (#16)."""
    response = VoiceResponse()
    response.say(line)
    response.hangup()
    return str(response.to_xml())
