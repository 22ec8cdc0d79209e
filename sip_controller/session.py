"""Pure builders for the session configs sent to OpenAI: the accept body and session.update events.

Rules kept here: every session object has ``type: "realtime"``; the codec is stated for input and output
alike whenever a body carries tools (unless the profile negotiates it); a format is never ``null``; VAD tuning
fields that OpenAI refuses on ``/accept`` for SIP are sent with the first ``session.update`` instead.
"""

from __future__ import annotations

from typing import Any

from sip_controller import tools
from sip_controller.config import SIP_DEFERRED_VAD_FIELDS, AgentProfile

CODEC_FORMATS: dict[str, dict[str, Any]] = {
    "pcmu": {"type": "audio/pcmu"},
    "pcma": {"type": "audio/pcma"},
}


def audio_format(profile: AgentProfile) -> dict[str, Any] | None:
    """The explicit format for both directions, or None when the codec is negotiated in SDP."""
    fmt = CODEC_FORMATS.get(profile.codec)
    return dict(fmt) if fmt is not None else None


def _turn_detection(profile: AgentProfile) -> dict[str, Any] | None:
    td = profile.turn_detection
    if td is None:
        return None
    body = td.model_dump(exclude_none=True, exclude=set(SIP_DEFERRED_VAD_FIELDS))
    if td.type == "semantic_vad":
        body.pop("idle_timeout_ms", None)
    else:
        body.pop("eagerness", None)
    return body


def accept_body(profile: AgentProfile) -> dict[str, Any]:
    """The body for ``POST /realtime/calls/{id}/accept``."""
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    fmt = audio_format(profile)
    if fmt is not None:
        audio_in["format"] = fmt
        audio_out["format"] = dict(fmt)
    audio_in["transcription"] = (
        profile.transcription.model_dump(exclude_none=True) if profile.transcription else None
    )
    audio_in["turn_detection"] = _turn_detection(profile)
    audio_out["voice"] = profile.voice
    body: dict[str, Any] = {
        "type": "realtime",
        "model": profile.model,
        "instructions": profile.instructions,
        "audio": {"input": audio_in, "output": audio_out},
    }
    if profile.tools:  # an empty `tools` list is still "tools" to the static trap: leave the key out
        body["tools"] = [spec.session_tool() for spec in tools.resolve(profile.tools)]
        body["tool_choice"] = profile.tool_choice
    return body


def session_update(profile: AgentProfile, patch: dict[str, Any], *, event_id: str) -> dict[str, Any]:
    """A ``session.update`` event: ``type: realtime`` always, and the codec restated on both sides."""
    session: dict[str, Any] = {**patch, "type": "realtime"}
    fmt = audio_format(profile)
    if fmt is not None:
        audio = dict(session.get("audio") or {})
        audio["input"] = {**(audio.get("input") or {}), "format": fmt}
        audio["output"] = {**(audio.get("output") or {}), "format": dict(fmt)}
        session["audio"] = audio
    return {"type": "session.update", "event_id": event_id, "session": session}


def deferred_vad_patch(profile: AgentProfile) -> dict[str, Any] | None:
    """The VAD tuning left out of the accept body, as a session patch; None when there is none."""
    td = profile.turn_detection
    if td is None or td.type != "server_vad":
        return None
    tuning = {f: getattr(td, f) for f in SIP_DEFERRED_VAD_FIELDS if getattr(td, f) is not None}
    if not tuning:
        return None
    full = _turn_detection(profile) or {}
    return {"audio": {"input": {"turn_detection": {**full, **tuning}}}}
