"""Pure builders for the session configs sent to OpenAI: the accept body and session.update events.

Rules kept here: every session object has ``type: "realtime"``; the codec is stated for input and output
alike (unless the profile negotiates it); a format is never ``null``; VAD tuning fields that OpenAI refuses on
``/accept`` for SIP are sent with the first ``session.update`` instead, and until that update is acknowledged
the model does not answer on its own (``create_response: false``), so no caller turn is answered under the
old settings.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sip_controller.agent import tools
from sip_controller.agent.validation import SIP_DEFERRED_VAD_FIELDS
from sip_controller.config import AgentProfile

CODEC_FORMATS: dict[str, dict[str, Any]] = {
    "pcmu": {"type": "audio/pcmu"},
    "pcma": {"type": "audio/pcma"},
    "pcm": {"type": "audio/pcm", "rate": 24000},
}


def audio_format(profile: AgentProfile) -> dict[str, Any] | None:
    """The explicit format for both directions, or None when the codec is negotiated in SDP."""
    fmt = CODEC_FORMATS.get(profile.codec)
    return dict(fmt) if fmt is not None else None


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested mappings merge; other values (lists included) are replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _turn_detection(profile: AgentProfile, *, include_tuning: bool) -> dict[str, Any] | None:
    td = profile.turn_detection
    if td is None:
        return None
    exclude = set() if include_tuning else set(SIP_DEFERRED_VAD_FIELDS)
    body = td.model_dump(exclude_none=True, exclude=exclude)
    if td.type == "semantic_vad":
        for key in ("idle_timeout_ms", *SIP_DEFERRED_VAD_FIELDS):
            body.pop(key, None)
    else:
        body.pop("eagerness", None)
    return body


def _voice(profile: AgentProfile) -> str | dict[str, str]:
    return {"id": profile.voice} if profile.voice.startswith("voice_") else profile.voice


#: profiles are frozen and live as long as the process: their tool definitions are built once
_TOOLS_CACHE: dict[int, tuple[AgentProfile, list[dict[str, Any]]]] = {}


def session_tools(profile: AgentProfile) -> list[dict[str, Any]]:
    """The profile's tools as the session declares them (built once per profile; treat as read-only)."""
    cached = _TOOLS_CACHE.get(id(profile))
    if cached is not None and cached[0] is profile:
        return cached[1]
    built = _build_tools(profile)
    if len(_TOOLS_CACHE) < 1024:
        _TOOLS_CACHE[id(profile)] = (profile, built)
    return built


def _build_tools(profile: AgentProfile) -> list[dict[str, Any]]:
    """Built-in names become their function definitions; objects (function, mcp) pass through as written."""
    out: list[dict[str, Any]] = []
    for entry in profile.tools:
        if entry == "transfer_call":
            out.append(tools.transfer_tool(list(profile.transfer.targets)))
        elif isinstance(entry, str):
            out.append(tools.BUILTIN_TOOLS[entry].session_tool())
        elif isinstance(entry, dict):
            out.append(copy.deepcopy(entry))
        else:
            out.append(entry.session_tool())
    return out


_BODY_CACHE: dict[int, tuple[AgentProfile, dict[str, Any]]] = {}


def accept_body(profile: AgentProfile, *, instructions: str | None = None) -> dict[str, Any]:
    """The body for ``POST /realtime/calls/{id}/accept``; ``instructions`` overrides the rendered template.
    Built once per profile: each call gets a shallow copy (treat the nested parts as read-only)."""
    cached = _BODY_CACHE.get(id(profile))
    if cached is None or cached[0] is not profile:
        cached = (profile, _build_accept_body(profile))
        if len(_BODY_CACHE) < 1024:
            _BODY_CACHE[id(profile)] = cached
    body = dict(cached[1])
    if instructions is not None:
        body["instructions"] = instructions
    return body


def _build_accept_body(profile: AgentProfile) -> dict[str, Any]:
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    fmt = audio_format(profile)
    if fmt is not None:
        audio_in["format"] = fmt
        audio_out["format"] = dict(fmt)
    audio_in["transcription"] = (
        profile.transcription.model_dump(exclude_none=True) if profile.transcription else None
    )
    if profile.noise_reduction is not None:
        audio_in["noise_reduction"] = {"type": profile.noise_reduction}
    turn_detection = _turn_detection(profile, include_tuning=profile.vad_on_accept)
    if turn_detection is not None and deferred_vad_patch(profile) is not None:
        turn_detection["create_response"] = False  # held until the deferred VAD update is acknowledged
    audio_in["turn_detection"] = turn_detection
    audio_out["voice"] = _voice(profile)
    if profile.speed is not None:
        audio_out["speed"] = profile.speed
    body: dict[str, Any] = {
        "type": "realtime",
        "model": profile.model,
        "instructions": profile.instructions,
        "audio": {"input": audio_in, "output": audio_out},
    }
    if profile.tools:  # an empty `tools` list is still "tools" to the static trap: leave the key out
        body["tools"] = session_tools(profile)
        body["tool_choice"] = profile.tool_choice
    if profile.max_output_tokens is not None:
        body["max_output_tokens"] = profile.max_output_tokens
    if profile.reasoning_effort is not None:
        body["reasoning"] = {"effort": profile.reasoning_effort}
    if profile.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = profile.parallel_tool_calls
    if profile.prompt is not None:
        body["prompt"] = copy.deepcopy(profile.prompt)
    return deep_merge(body, profile.session) if profile.session else body


def session_patch(profile: AgentProfile, patch: Mapping[str, Any]) -> dict[str, Any]:
    """The ``session`` object of an update: ``type: realtime`` always, the codec restated on both sides."""
    session: dict[str, Any] = {**copy.deepcopy(dict(patch)), "type": "realtime"}
    fmt = audio_format(profile)
    if fmt is not None:
        audio = dict(session.get("audio") or {})
        audio["input"] = {**(audio.get("input") or {}), "format": fmt}
        audio["output"] = {**(audio.get("output") or {}), "format": dict(fmt)}
        session["audio"] = audio
    return session


def session_update(profile: AgentProfile, patch: Mapping[str, Any], *, event_id: str) -> dict[str, Any]:
    """A ``session.update`` client event built by :func:`session_patch`; the only way updates are made."""
    return {"type": "session.update", "event_id": event_id, "session": session_patch(profile, patch)}


def deferred_vad_patch(profile: AgentProfile) -> dict[str, Any] | None:
    """The VAD tuning left out of the accept body, as a session patch; None when there is none."""
    td = profile.turn_detection
    if td is None or td.type != "server_vad" or profile.vad_on_accept:
        return None
    if all(getattr(td, f) is None for f in SIP_DEFERRED_VAD_FIELDS):
        return None
    return {"audio": {"input": {"turn_detection": _turn_detection(profile, include_tuning=True)}}}
