"""What OpenAI's GA Realtime API accepts as a session config, and what that does to phone audio.

Pure functions, no I/O: :func:`validate_session` checks an ``/accept`` body or a ``session.update``
patch, :func:`merge_patch` applies a patch to the effective session, :func:`assess_audio` says whether
the codec rules users learned the hard way were kept.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from .errors import (
    ApiError,
    invalid_type,
    invalid_value,
    mcp_server_conflict,
    missing_parameter,
    out_of_range,
    pattern_mismatch,
    unknown_parameter,
)

AudioState = Literal["clean", "static", "broken"]

TOP_LEVEL_KEYS = frozenset(
    {
        "type",
        "model",
        "instructions",
        "output_modalities",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "truncation",
        "reasoning",
        "parallel_tool_calls",
        "tracing",
        "include",
        "prompt",
    }
)
AUDIO_KEYS = frozenset({"input", "output"})
INPUT_KEYS = frozenset({"format", "transcription", "noise_reduction", "turn_detection"})
OUTPUT_KEYS = frozenset({"format", "voice", "speed"})
FORMAT_TYPES = ["audio/pcm", "audio/pcmu", "audio/pcma"]
VAD_TUNING_KEYS = ("threshold", "prefix_padding_ms", "silence_duration_ms")
SERVER_VAD_KEYS = frozenset(
    {
        "type",
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "create_response",
        "interrupt_response",
        "idle_timeout_ms",
    }
)
SEMANTIC_VAD_KEYS = frozenset({"type", "eagerness", "create_response", "interrupt_response"})
TRANSCRIPTION_KEYS = frozenset({"model", "language", "prompt"})
FUNCTION_TOOL_KEYS = frozenset({"type", "name", "description", "parameters"})
MCP_TOOL_KEYS = frozenset(
    {
        "type",
        "server_label",
        "server_url",
        "connector_id",
        "server_description",
        "allowed_tools",
        "require_approval",
        "headers",
        "authorization",
    }
)
FUNCTION_NAME_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
VOICES = ["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"]
REASONING_EFFORTS = ["minimal", "low", "medium", "high", "xhigh"]

_SEVERITY: dict[AudioState, int] = {"clean": 0, "static": 1, "broken": 2}


class _Invalid(Exception):  # internal control flow: carries the first error found
    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _fail(error: ApiError) -> None:
    raise _Invalid(error)


def validate_session(
    body: object,
    *,
    prefix: str = "",
    reject_vad_tuning: bool = False,
    allow_flat_voice: bool = False,
    session: Mapping[str, Any] | None = None,
) -> ApiError | None:
    """Return the first error OpenAI would report for this session config, or ``None`` if it is accepted.

    ``prefix`` is prepended to every ``param`` (``"session."`` inside ``session.update``).
    ``reject_vad_tuning`` reproduces the 400 users report for VAD tuning on ``/accept`` of SIP calls (reported,
    not documented; OpenAI's JS agents SDK refuses those fields for SIP too).
    ``allow_flat_voice`` lets a top-level ``voice`` through (``/accept`` answers 200 and the call breaks).
    ``session`` is the session a ``session.update`` patches: a ``tool_choice`` naming a function must name
    one of its tools unless the patch brings its own ``tools``.
    """
    try:
        _check_session(body, prefix, reject_vad_tuning, allow_flat_voice)
        if isinstance(body, dict):
            _check_tool_choice_target(body, prefix, session)
    except _Invalid as exc:
        return exc.error
    return None


def _check_tool_choice_target(body: Mapping[str, Any], prefix: str, session: Mapping[str, Any] | None) -> None:
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "function":
        return
    tools = body["tools"] if "tools" in body else (session or {}).get("tools") or []
    names = {tool.get("name") for tool in tools if isinstance(tool, dict) and tool.get("type") == "function"}
    if choice["name"] not in names:
        _fail(
            ApiError(
                400,
                f"Tool choice 'function' named {choice['name']!r} not found in 'tools' parameter.",
                code="invalid_value",
                param=f"{prefix}tool_choice",
            )
        )


def _check_session(body: object, prefix: str, reject_vad_tuning: bool, allow_flat_voice: bool) -> None:
    def p(path: str) -> str:
        return prefix + path

    if not isinstance(body, dict):
        _fail(invalid_type(prefix.rstrip(".") or "session", "an object", body))
        return
    if "type" not in body:
        _fail(missing_parameter(p("type")))
    if body["type"] != "realtime":
        _fail(invalid_value(p("type"), body["type"], ["realtime"]))
    for key in body:
        if key == "voice" and allow_flat_voice:
            continue
        if key not in TOP_LEVEL_KEYS:
            _fail(unknown_parameter(p(key)))
    checks: dict[str, Callable[[object, str], None]] = {
        "model": _check_str,
        "instructions": _check_str,
        "output_modalities": _check_modalities,
        "tools": _check_tools,
        "tool_choice": _check_tool_choice,
        "max_output_tokens": _check_max_tokens,
        "truncation": _check_truncation,
        "reasoning": _check_reasoning,
        "parallel_tool_calls": _check_bool,
        "tracing": _check_tracing,
        "include": _check_include,
        "prompt": _check_prompt,
    }
    for key, check in checks.items():
        if key in body:
            check(body[key], p(key))
    if "audio" in body:
        _check_audio(body["audio"], p("audio"), reject_vad_tuning)


def _check_str(value: object, param: str) -> None:
    if not isinstance(value, str):
        _fail(invalid_type(param, "a string", value))


def _check_bool(value: object, param: str) -> None:
    if not isinstance(value, bool):
        _fail(invalid_type(param, "a boolean", value))


def _check_object(value: object, param: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(invalid_type(param, "an object", value))
        return {}
    for key in value:
        if key not in allowed:
            _fail(unknown_parameter(f"{param}.{key}"))
    return value


def _check_number(value: object, param: str, low: float, high: float, *, integer: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        _fail(invalid_type(param, "an integer" if integer else "a number", value))
        return
    if not low <= value <= high:
        _fail(out_of_range(param, value, low, high))


def _check_enum(value: object, param: str, supported: list[str]) -> None:
    if not isinstance(value, str):
        _fail(invalid_type(param, "a string", value))
    if value not in supported:
        _fail(invalid_value(param, value, supported))


def _check_modalities(value: object, param: str) -> None:
    if not isinstance(value, list):
        _fail(invalid_type(param, "an array", value))
        return
    if len(value) != 1:
        _fail(invalid_value(param, value, ["audio", "text"]))
    _check_enum(value[0], f"{param}[0]", ["audio", "text"])


def _check_tools(value: object, param: str) -> None:
    if not isinstance(value, list):
        _fail(invalid_type(param, "an array", value))
        return
    seen: dict[str, int] = {}
    for i, tool in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            _fail(invalid_type(where, "an object", tool))
            return
        if "type" not in tool:
            _fail(missing_parameter(f"{where}.type"))
        kind = tool["type"]
        if kind == "function":
            _check_object(tool, where, FUNCTION_TOOL_KEYS)
            if "name" not in tool:
                _fail(missing_parameter(f"{where}.name"))
            name = tool["name"]
            _check_str(name, f"{where}.name")
            if not _FUNCTION_NAME.fullmatch(name):
                _fail(pattern_mismatch(f"{where}.name", FUNCTION_NAME_PATTERN))
            if name in seen:
                _fail(
                    ApiError(
                        400,
                        f"Invalid '{where}.name': duplicate function name {name!r} "
                        f"(already used by '{param}[{seen[name]}]'). Tool names must be unique.",
                        code="invalid_value",
                        param=f"{where}.name",
                    )
                )
            seen[name] = i
            if "description" in tool:
                _check_str(tool["description"], f"{where}.description")
            if "parameters" in tool:
                _check_parameters(tool["parameters"], f"{where}.parameters", name)
        elif kind == "mcp":
            _check_object(tool, where, MCP_TOOL_KEYS)
            if "server_label" not in tool:
                _fail(missing_parameter(f"{where}.server_label"))
            _check_str(tool["server_label"], f"{where}.server_label")
            servers = [key for key in ("server_url", "connector_id") if key in tool]
            if not servers:
                _fail(missing_parameter(f"{where}.server_url"))
            if len(servers) > 1:
                _fail(mcp_server_conflict(where))
            _check_str(tool[servers[0]], f"{where}.{servers[0]}")
        else:
            _fail(invalid_value(f"{where}.type", kind, ["function", "mcp"]))


def _check_parameters(value: object, param: str, name: str) -> None:
    """A function's ``parameters``: a JSON Schema object (``{"type": "object", ...}``)."""
    if not isinstance(value, dict):
        _fail(invalid_type(param, "an object", value))
        return
    if "type" in value and value["type"] != "object":
        _fail(
            ApiError(
                400,
                f"Invalid schema for function {name!r}: schema must be a JSON Schema of 'type: \"object\"', "
                f"got 'type: \"{value['type']}\"'.",
                code="invalid_function_parameters",
                param=param,
            )
        )


def _check_tool_choice(value: object, param: str) -> None:
    if isinstance(value, str):
        _check_enum(value, param, ["auto", "none", "required"])
        return
    choice = _check_object(value, param, frozenset({"type", "name", "server_label"}))
    if "type" not in choice:
        _fail(missing_parameter(f"{param}.type"))
    _check_enum(choice["type"], f"{param}.type", ["function", "mcp"])
    if choice["type"] == "function":
        if "name" not in choice:
            _fail(missing_parameter(f"{param}.name"))
        _check_str(choice["name"], f"{param}.name")


def _check_max_tokens(value: object, param: str) -> None:
    if value == "inf":
        return
    if isinstance(value, str):
        _fail(invalid_value(param, value, ["inf"]))
    _check_number(value, param, 1, 4096, integer=True)


def _check_truncation(value: object, param: str) -> None:
    if isinstance(value, str):
        _check_enum(value, param, ["auto", "disabled"])
        return
    obj = _check_object(value, param, frozenset({"type", "retention_ratio", "token_limits"}))
    if obj.get("type") != "retention_ratio":
        _fail(invalid_value(f"{param}.type", obj.get("type"), ["retention_ratio"]))
    if "retention_ratio" in obj:
        _check_number(obj["retention_ratio"], f"{param}.retention_ratio", 0.0, 1.0)


def _check_reasoning(value: object, param: str) -> None:
    obj = _check_object(value, param, frozenset({"effort"}))
    if "effort" in obj:
        _check_enum(obj["effort"], f"{param}.effort", REASONING_EFFORTS)


def _check_tracing(value: object, param: str) -> None:
    if value is None or value == "auto":
        return
    if isinstance(value, str):
        _fail(invalid_value(param, value, ["auto"]))
    _check_object(value, param, frozenset({"workflow_name", "group_id", "metadata"}))


def _check_include(value: object, param: str) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        _fail(invalid_type(param, "an array", value))
        return
    for i, item in enumerate(value):
        _check_enum(item, f"{param}[{i}]", ["item.input_audio_transcription.logprobs"])


def _check_prompt(value: object, param: str) -> None:
    if value is None:
        return
    obj = _check_object(value, param, frozenset({"id", "version", "variables"}))
    if "id" not in obj:
        _fail(missing_parameter(f"{param}.id"))
    _check_str(obj["id"], f"{param}.id")


def _check_audio(value: object, param: str, reject_vad_tuning: bool) -> None:
    audio = _check_object(value, param, AUDIO_KEYS)
    if "input" in audio:
        _check_input(audio["input"], f"{param}.input", reject_vad_tuning)
    if "output" in audio:
        _check_output(audio["output"], f"{param}.output")


def _check_input(value: object, param: str, reject_vad_tuning: bool) -> None:
    audio_in = _check_object(value, param, INPUT_KEYS)
    if "format" in audio_in:
        _check_format(audio_in["format"], f"{param}.format")
    transcription = audio_in.get("transcription")
    if transcription is not None:
        obj = _check_object(transcription, f"{param}.transcription", TRANSCRIPTION_KEYS)
        for key in TRANSCRIPTION_KEYS & obj.keys():
            _check_str(obj[key], f"{param}.transcription.{key}")
    noise = audio_in.get("noise_reduction")
    if noise is not None:
        obj = _check_object(noise, f"{param}.noise_reduction", frozenset({"type"}))
        if "type" not in obj:
            _fail(missing_parameter(f"{param}.noise_reduction.type"))
        _check_enum(obj["type"], f"{param}.noise_reduction.type", ["near_field", "far_field"])
    turn = audio_in.get("turn_detection")
    if turn is not None:
        _check_turn_detection(turn, f"{param}.turn_detection", reject_vad_tuning)


def _check_turn_detection(value: object, param: str, reject_vad_tuning: bool) -> None:
    if not isinstance(value, dict):
        _fail(invalid_type(param, "an object", value))
        return
    if reject_vad_tuning:
        for key in VAD_TUNING_KEYS:
            if key in value:
                _fail(unknown_parameter(f"{param}.{key}"))
    if "type" not in value:
        _fail(missing_parameter(f"{param}.type"))
    kind = value["type"]
    if kind == "server_vad":
        _check_object(value, param, SERVER_VAD_KEYS)
        if "threshold" in value:
            _check_number(value["threshold"], f"{param}.threshold", 0.0, 1.0)
        for key in ("prefix_padding_ms", "silence_duration_ms"):
            if key in value:
                _check_number(value[key], f"{param}.{key}", 0, 10_000, integer=True)
        idle = value.get("idle_timeout_ms")
        if idle is not None:
            _check_number(idle, f"{param}.idle_timeout_ms", 5000, 30_000, integer=True)
    elif kind == "semantic_vad":
        _check_object(value, param, SEMANTIC_VAD_KEYS)
        if "eagerness" in value:
            _check_enum(value["eagerness"], f"{param}.eagerness", ["low", "medium", "high", "auto"])
    else:
        _fail(invalid_value(f"{param}.type", kind, ["server_vad", "semantic_vad"]))
    for key in ("create_response", "interrupt_response"):
        if key in value:
            _check_bool(value[key], f"{param}.{key}")


def _check_output(value: object, param: str) -> None:
    audio_out = _check_object(value, param, OUTPUT_KEYS)
    if "format" in audio_out:
        _check_format(audio_out["format"], f"{param}.format")
    if "voice" in audio_out:
        voice = audio_out["voice"]
        if isinstance(voice, dict):
            obj = _check_object(voice, f"{param}.voice", frozenset({"id"}))
            if "id" not in obj:
                _fail(missing_parameter(f"{param}.voice.id"))
            _check_str(obj["id"], f"{param}.voice.id")
        else:
            _check_enum(voice, f"{param}.voice", VOICES)
    if "speed" in audio_out:
        _check_number(audio_out["speed"], f"{param}.speed", 0.25, 1.5)


def _check_format(value: object, param: str) -> None:
    if not isinstance(value, dict):
        _fail(invalid_type(param, "an object", value))
        return
    if "type" not in value:
        _fail(missing_parameter(f"{param}.type"))
    _check_enum(value["type"], f"{param}.type", FORMAT_TYPES)
    if value["type"] == "audio/pcm":
        _check_object(value, param, frozenset({"type", "rate"}))
        if "rate" not in value:
            _fail(missing_parameter(f"{param}.rate"))
        if value["rate"] != 24000 or isinstance(value["rate"], bool):
            _fail(invalid_value(f"{param}.rate", value["rate"], ["24000"]))
    else:
        _check_object(value, param, frozenset({"type"}))


def merge_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a ``session.update`` patch: nested objects merge, anything else replaces.

    An object whose ``type`` changes (``turn_detection``, ``format``) is replaced whole, not merged, so a
    ``semantic_vad`` never inherits ``server_vad`` tuning.
    """
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in patch.items():
        current = merged.get(key)
        if (
            isinstance(value, dict)
            and isinstance(current, dict)
            and ("type" not in value or value["type"] == current.get("type"))
        ):
            merged[key] = merge_patch(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def default_session(session_id: str, expires_at: int) -> dict[str, Any]:
    """The session OpenAI reports for a SIP call before the accept body applies (negotiated codec: PCMU)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "expires_at": expires_at,
        "model": "gpt-realtime-2.1",
        "output_modalities": ["audio"],
        "instructions": "",
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy", "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "truncation": "auto",
        "tracing": None,
        "include": None,
        "prompt": None,
    }


def _dig(obj: Mapping[str, Any], *path: str) -> tuple[bool, Any]:
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return False, None
        current = current[key]
    return True, current


def _format_type(session: Mapping[str, Any], direction: str) -> str | None:
    _, fmt = _dig(session, "audio", direction, "format", "type")
    return fmt if isinstance(fmt, str) else None


def assess_audio(patch: Mapping[str, Any], effective: Mapping[str, Any]) -> AudioState:
    """The audio a caller hears after ``patch`` (an accept body or update) gave ``effective``.

    Static when the patch carries ``tools`` without stating both formats, when the effective input and
    output formats differ, or when either is ``audio/pcm`` (not a phone codec).

    Reported, not documented: users saw SIP audio turn to static this way; OpenAI's staff said the codec is
    negotiated in SDP. The simulator keeps the trap so a controller is tested against it.
    """
    stated_in, _ = _dig(patch, "audio", "input", "format")
    stated_out, _ = _dig(patch, "audio", "output", "format")
    if "tools" in patch and not (stated_in and stated_out):
        return "static"
    fmt_in, fmt_out = _format_type(effective, "input"), _format_type(effective, "output")
    if fmt_in != fmt_out or "audio/pcm" in (fmt_in, fmt_out):
        return "static"
    return "clean"


def worse(current: AudioState, new: AudioState) -> AudioState:
    """Audio never heals: keep the worse of two states (clean < static < broken)."""
    return new if _SEVERITY[new] > _SEVERITY[current] else current


def auto_response_enabled(session: Mapping[str, Any]) -> bool:
    """Whether the model answers on its own when the caller stops speaking."""
    present, turn = _dig(session, "audio", "input", "turn_detection")
    if not present or not isinstance(turn, Mapping):
        return False
    return turn.get("create_response", True) is not False


def output_has_audio(session: Mapping[str, Any]) -> bool:
    modalities = session.get("output_modalities") or ["audio"]
    return "audio" in modalities
