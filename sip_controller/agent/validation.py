"""Every known session-config trap, checked before a phone rings and on every session change during a call.

Pure: :func:`check_session` inspects a GA session object (an ``/accept`` body or a ``session.update`` patch)
and returns :class:`Finding` items whose ``path`` is a dotted path inside that body. Callers translate the
path to where the operator wrote the value (see ``profiles.py``'s use in ``config``) and decide what an
error means (refuse to start, refuse to send).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Context:
    """What a check needs to know besides the body itself."""

    today: date
    #: a ``session.update`` patch (fields may be absent) rather than a full accept body
    update: bool = False
    #: the profile explicitly allows ``audio/pcm`` (never right for a phone trunk)
    allow_pcm: bool = False
    #: the profile explicitly sends VAD tuning on ``/accept`` despite the SIP reports
    vad_on_accept: bool = False
    #: for updates during a call: the effective model, and whether the caller has heard audio yet
    model: str | None = None
    audio_started: bool = False


GA_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
CURRENT_MODELS = ("gpt-realtime-2.1", "gpt-realtime-2.1-mini", "gpt-realtime-2", "gpt-realtime-1.5")
MODEL_SHUTDOWN = date(2027, 1, 20)
#: models shutting down on MODEL_SHUTDOWN, and what replaces each
RETIRING_MODELS = {
    "gpt-realtime": "gpt-realtime-2.1",
    "gpt-realtime-2025-08-28": "gpt-realtime-2.1",
    "gpt-realtime-mini": "gpt-realtime-2.1-mini",
    "gpt-realtime-mini-2025-12-15": "gpt-realtime-2.1-mini",
}
PROMPT_SHUTDOWN = date(2026, 11, 30)
MAX_OUTPUT_TOKENS = 4096
SIP_DEFERRED_VAD_FIELDS = ("threshold", "prefix_padding_ms", "silence_duration_ms")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
HOSTED_TOOLS = frozenset(
    {"web_search", "web_search_preview", "file_search", "code_interpreter", "computer_use", "computer_use_preview",
     "image_generation", "local_shell", "shell", "apply_patch", "custom"}
)

TOP_LEVEL = frozenset(
    {"type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice", "max_output_tokens",
     "truncation", "reasoning", "parallel_tool_calls", "tracing", "include", "prompt"}
)
BETA_FIELDS: dict[str, str] = {
    "temperature": (
        "`temperature` was removed from the GA Realtime API (the beta allowed only 0.6-1.2 and lower values "
        "failed or produced noise); delete it"
    ),
    "modalities": "`modalities` is beta-only; the GA field is `output_modalities` (['audio'] for a phone call)",
    "voice": (
        "a top-level `voice` is answered 200 and then breaks the call; the voice belongs at audio.output.voice "
        "(set the profile's `voice`)"
    ),
    "input_audio_format": (
        "`input_audio_format` is beta-only; the GA path is audio.input.format = {type: audio/pcmu} "
        "(set the profile's `codec`)"
    ),
    "output_audio_format": (
        "`output_audio_format` is beta-only; the GA path is audio.output.format = {type: audio/pcmu} "
        "(set the profile's `codec`)"
    ),
    "turn_detection": (
        "a top-level `turn_detection` is beta-only; the GA path is audio.input.turn_detection "
        "(set the profile's `turn_detection`)"
    ),
    "input_audio_transcription": (
        "`input_audio_transcription` is beta-only; the GA path is audio.input.transcription "
        "(set the profile's `transcription`)"
    ),
    "input_audio_noise_reduction": (
        "`input_audio_noise_reduction` is beta-only; the GA path is audio.input.noise_reduction "
        "(set the profile's `noise_reduction`)"
    ),
    "max_response_output_tokens": "`max_response_output_tokens` is beta-only; the GA name is `max_output_tokens`",
}
BETA_FORMATS = {"g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma", "pcm16": "audio/pcm"}
FORMAT_TYPES = ("audio/pcmu", "audio/pcma", "audio/pcm")


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


_REASONING_MODEL = re.compile(r"gpt-realtime-2(\.\d+)?(-mini)?(-\d{4}-\d{2}-\d{2})?")


def is_reasoning_model(model: str) -> bool:
    """gpt-realtime-2, -2.1, -2.1-mini and their dated snapshots (not gpt-realtime-2025-08-28)."""
    return _REASONING_MODEL.fullmatch(model) is not None


class _Checker:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.found: list[Finding] = []

    def error(self, path: str, message: str) -> None:
        self.found.append(Finding(path, message, "error"))

    def warn(self, path: str, message: str) -> None:
        self.found.append(Finding(path, message, "warning"))

    # ---- top level ------------------------------------------------------------------------------------

    def session(self, body: Mapping[str, Any]) -> None:
        ctx = self.ctx
        if body.get("type") != "realtime":
            self.error("type", f'every session object needs type "realtime" (got {body.get("type")!r})')
        for key in body:
            if key in BETA_FIELDS:
                self.error(key, BETA_FIELDS[key])
            elif key not in TOP_LEVEL:
                self.error(key, "not a GA Realtime session field (OpenAI answers 400 unknown_parameter); delete it")
        model = body.get("model")
        if ctx.update and "model" in body:
            self.error("model", "the model cannot change during a call; leave it out of session updates")
        elif isinstance(model, str):
            self.model(model)
        elif not ctx.update:
            self.error("model", f"a model name is required (got {model!r}); e.g. gpt-realtime-2.1")
        effective_model = model if isinstance(model, str) else ctx.model
        if "instructions" in body or not ctx.update:
            instructions = body.get("instructions")
            if not isinstance(instructions, str) or not instructions.strip():
                self.error("instructions", "instructions must be a non-empty string; describe what the agent does")
        if "output_modalities" in body:
            self.modalities(body["output_modalities"])
        audio = body.get("audio")
        if audio is not None or "audio" in body:
            self.audio(audio)
        tools = body.get("tools")
        names = self.tools(tools) if "tools" in body else set()
        if "tool_choice" in body:
            self.tool_choice(body["tool_choice"], names, "tools" in body)
        if "max_output_tokens" in body:
            self.max_tokens(body["max_output_tokens"])
        if "truncation" in body:
            self.truncation(body["truncation"])
        for key in ("reasoning", "parallel_tool_calls"):
            if key in body and effective_model is not None and not is_reasoning_model(effective_model):
                self.error(key, f"`{key}` is only for gpt-realtime-2* models (model is {effective_model!r}); "
                           "delete it or use gpt-realtime-2.1")
        if "reasoning" in body:
            self.reasoning(body["reasoning"])
        if "parallel_tool_calls" in body and not isinstance(body["parallel_tool_calls"], bool):
            self.error("parallel_tool_calls", f"must be true or false (got {body['parallel_tool_calls']!r})")
        if "prompt" in body:
            self.prompt(body["prompt"])
        self.codec_rules(body)

    def model(self, model: str) -> None:
        today = self.ctx.today
        if "realtime-preview" in model:
            self.error("model", f"{model!r} is a preview model and has been shut down; use gpt-realtime-2.1")
        elif model in RETIRING_MODELS or model.startswith("gpt-audio-mini"):
            replacement = RETIRING_MODELS.get(model, "gpt-realtime-2.1-mini")
            if today >= MODEL_SHUTDOWN:
                self.error("model", f"{model!r} was shut down on {MODEL_SHUTDOWN.isoformat()}; use {replacement}")
            else:
                self.warn("model", f"{model!r} shuts down on {MODEL_SHUTDOWN.isoformat()}; move to {replacement}")
        elif model not in CURRENT_MODELS:
            self.warn("model", f"{model!r} is not a known Realtime model ({', '.join(CURRENT_MODELS)})")

    def modalities(self, value: Any) -> None:
        if value == ["audio"]:
            return
        if value == ["text"]:
            self.error("output_modalities", "['text'] makes the agent silent on a phone call; use ['audio'] "
                       "(audio answers come with their transcript)")
        else:
            self.error("output_modalities", f"must be ['audio'] or ['text'], not both (got {value!r}); "
                       "use ['audio'] for a phone call")

    # ---- audio ----------------------------------------------------------------------------------------

    def audio(self, audio: Any) -> None:
        if not isinstance(audio, Mapping):
            self.error("audio", f"must be an object with `input` and `output` (got {audio!r})")
            return
        for key in audio:
            if key not in ("input", "output"):
                self.error(f"audio.{key}", "not a GA field; audio has only `input` and `output`")
        for side, allowed in (("input", ("format", "transcription", "noise_reduction", "turn_detection")),
                              ("output", ("format", "voice", "speed"))):
            part = audio.get(side)
            if part is None:
                continue
            if not isinstance(part, Mapping):
                self.error(f"audio.{side}", f"must be an object (got {part!r})")
                continue
            for key in part:
                if key not in allowed:
                    hint = "; the voice goes at audio.output.voice" if key == "voice" else ""
                    self.error(f"audio.{side}.{key}", f"not a GA field of audio.{side}{hint}")
            if "format" in part:
                self.format(part["format"], f"audio.{side}.format")
        inp, out = _obj(audio.get("input")), _obj(audio.get("output"))
        if "voice" in out:
            self.voice(out["voice"])
        if "speed" in out:
            self.number(out["speed"], "audio.output.speed", 0.25, 1.5)
        if "transcription" in inp:
            self.transcription(inp["transcription"])
        if "noise_reduction" in inp:
            nr = inp["noise_reduction"]
            if nr is not None and not (isinstance(nr, Mapping) and nr.get("type") in ("near_field", "far_field")
                                       and set(nr) <= {"type"}):
                self.error("audio.input.noise_reduction",
                           f"must be null or {{type: near_field | far_field}} (got {nr!r})")
        if "turn_detection" in inp:
            self.turn_detection(inp["turn_detection"])

    def format(self, fmt: Any, path: str) -> None:
        if fmt is None:
            self.error(path, "never null (OpenAI answers 400): omit it to negotiate, or set {type: audio/pcmu}")
            return
        if isinstance(fmt, str):
            ga = BETA_FORMATS.get(fmt, fmt)
            self.error(path, f"{fmt!r} is a beta-style string; the GA format is an object: {{type: {ga}}}")
            return
        if not isinstance(fmt, Mapping):
            self.error(path, f"must be an object like {{type: audio/pcmu}} (got {fmt!r})")
            return
        kind = fmt.get("type")
        if not isinstance(kind, str):
            self.error(f"{path}.type", f"must be one of {', '.join(FORMAT_TYPES)} (got {kind!r})")
            return
        if kind in BETA_FORMATS:
            self.error(f"{path}.type", f"{kind!r} is the beta name; the GA type is {BETA_FORMATS[kind]!r}")
            return
        if kind not in FORMAT_TYPES:
            self.error(f"{path}.type", f"must be one of {', '.join(FORMAT_TYPES)} (got {kind!r}); "
                       "a Twilio trunk uses audio/pcmu")
            return
        extra = set(fmt) - {"type", "rate"}
        if extra:
            self.error(path, f"unknown field(s) {sorted(extra)}; a format has only `type` (and `rate` for audio/pcm)")
        if kind == "audio/pcm":
            if fmt.get("rate") != 24000:
                self.error(f"{path}.rate", f"audio/pcm needs rate: 24000 (got {fmt.get('rate')!r})")
            if not self.ctx.allow_pcm:
                self.error(path, "audio/pcm is wrong for a phone trunk (G.711 on the wire); use codec pcmu, "
                           "or set allow_pcm: true if you really mean it")
        elif "rate" in fmt:
            self.error(f"{path}.rate", f"only audio/pcm takes a rate; delete it for {kind}")

    def codec_rules(self, body: Mapping[str, Any]) -> None:
        audio = _obj(body.get("audio"))
        inp, out = _obj(audio.get("input")), _obj(audio.get("output"))
        has_in, has_out = "format" in inp, "format" in out
        if has_in != has_out:
            missing = "audio.output.format" if has_in else "audio.input.format"
            self.error(missing, "state the format on both sides or on neither (negotiated); one-sided formats "
                       "have turned SIP audio to static")
        elif has_in and isinstance(inp["format"], Mapping) and isinstance(out["format"], Mapping):
            a, b = inp["format"].get("type"), out["format"].get("type")
            if a != b:
                self.error("audio.output.format", f"input ({a}) and output ({b}) formats must agree")
        if "tools" in body and not has_in:
            self.error("tools", "tools without audio.input.format and audio.output.format stated: calls have "
                       "turned to static this way; use codec pcmu (or pcma), or no tools with a negotiated codec")

    def voice(self, voice: Any) -> None:
        path = "audio.output.voice"
        if self.ctx.update and self.ctx.audio_started:
            self.error(path, "the voice cannot change after the caller has heard audio; leave it out")
        if isinstance(voice, str):
            if voice not in GA_VOICES:
                hint = " (a custom voice is {id: voice_…})" if voice.startswith("voice_") else ""
                self.error(path, f"unknown voice {voice!r}; use one of {', '.join(GA_VOICES)}{hint}")
        elif isinstance(voice, Mapping):
            vid = voice.get("id")
            if not (isinstance(vid, str) and vid.startswith("voice_") and set(voice) == {"id"}):
                self.error(path, f"a custom voice is {{id: 'voice_…'}} (got {dict(voice)!r})")
        else:
            self.error(path, f"must be a voice name or {{id: 'voice_…'}} (got {voice!r})")

    def transcription(self, value: Any) -> None:
        path = "audio.input.transcription"
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.error(path, f"must be null or an object with `model` (got {value!r})")
            return
        if not isinstance(value.get("model"), str) or not value["model"]:
            self.error(f"{path}.model", "a transcription model is required, e.g. gpt-4o-mini-transcribe")
        for key in value:
            if key not in ("model", "language", "prompt"):
                self.error(f"{path}.{key}", "not a GA transcription field (model, language, prompt)")

    def turn_detection(self, td: Any) -> None:
        path = "audio.input.turn_detection"
        if td is None:
            return
        if not isinstance(td, Mapping):
            self.error(path, f"must be null or an object with `type` (got {td!r})")
            return
        kind = td.get("type")
        common = {"type", "create_response", "interrupt_response"}
        if kind == "server_vad":
            allowed = common | {"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"}
        elif kind == "semantic_vad":
            allowed = common | {"eagerness"}
        else:
            self.error(f"{path}.type", f"must be server_vad or semantic_vad (got {kind!r})")
            return
        for key in td:
            if key not in allowed:
                self.error(f"{path}.{key}", f"not a field of {kind}")
        for key in ("create_response", "interrupt_response"):
            if key in td and not isinstance(td[key], bool):
                self.error(f"{path}.{key}", f"must be true or false (got {td[key]!r})")
        if kind == "server_vad":
            if "threshold" in td:
                self.number(td["threshold"], f"{path}.threshold", 0.0, 1.0)
            for key in ("prefix_padding_ms", "silence_duration_ms"):
                if key in td:
                    self.number(td[key], f"{path}.{key}", 0, 10_000, integer=True)
            idle = td.get("idle_timeout_ms")
            if idle is not None:
                self.number(idle, f"{path}.idle_timeout_ms", 5000, 30000, integer=True)
            if not self.ctx.update and not self.ctx.vad_on_accept:
                for key in SIP_DEFERRED_VAD_FIELDS:
                    if key in td:
                        self.error(f"{path}.{key}", "OpenAI is reported to refuse this on /accept for SIP calls; "
                                   "set it in the profile's turn_detection (sent by session.update after attach) "
                                   "or set vad_on_accept: true")
        elif "eagerness" in td and td["eagerness"] not in ("low", "medium", "high", "auto"):
            self.error(f"{path}.eagerness", f"must be low, medium, high or auto (got {td['eagerness']!r})")

    # ---- tools ----------------------------------------------------------------------------------------

    def tools(self, tools: Any) -> set[str]:
        names: set[str] = set()
        if not isinstance(tools, list):
            self.error("tools", f"must be a list (got {tools!r})")
            return names
        for i, tool in enumerate(tools):
            path = f"tools[{i}]"
            if not isinstance(tool, Mapping):
                self.error(path, f"must be an object with a `type` (got {tool!r})")
                continue
            kind = tool.get("type")
            if kind == "function":
                name = tool.get("name")
                if isinstance(name, str) and name in names:
                    self.error(f"{path}.name", f"duplicate tool name {name!r}; tool names must be unique")
                self.function_tool(tool, path)
                if isinstance(name, str):
                    names.add(name)
            elif kind == "mcp":
                self.mcp_tool(tool, path)
            elif isinstance(kind, str) and kind in HOSTED_TOOLS:
                self.error(f"{path}.type", f"{kind!r} is not available here: the Realtime API supports only "
                           "function and MCP tools")
            else:
                self.error(f"{path}.type", f"must be function or mcp (got {kind!r}); the Realtime API supports "
                           "only function and MCP tools")
        return names

    def function_tool(self, tool: Mapping[str, Any], path: str) -> None:
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            self.error(f"{path}.name", f"must match ^[a-zA-Z0-9_-]{{1,64}}$ (got {name!r})")
        description = tool.get("description")
        if not isinstance(description, str) or not description.strip():
            self.error(f"{path}.description", "a description is required: it is how the model knows when to call it")
        if "strict" in tool:
            self.error(f"{path}.strict", "`strict` is not supported by the Realtime API; delete it")
        for key in tool:
            if key not in ("type", "name", "description", "parameters", "strict"):
                self.error(f"{path}.{key}", "not a field of a function tool (type, name, description, parameters)")
        params = tool.get("parameters")
        if params is None:
            return
        if not isinstance(params, Mapping) or params.get("type") != "object":
            self.error(f"{path}.parameters", "must be a JSON Schema object ({type: object, properties: …})")
            return
        try:
            Draft202012Validator.check_schema(dict(params))
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            self.error(f"{path}.parameters", f"not a valid JSON Schema at {where}: {exc.message}")

    def mcp_tool(self, tool: Mapping[str, Any], path: str) -> None:
        allowed = {"type", "server_label", "server_url", "connector_id", "server_description", "allowed_tools",
                   "require_approval", "headers", "authorization"}
        for key in tool:
            if key not in allowed:
                self.error(f"{path}.{key}", "not a field of an MCP tool")
        if not isinstance(tool.get("server_label"), str) or not tool["server_label"]:
            self.error(f"{path}.server_label", "an MCP tool needs a server_label")
        if ("server_url" in tool) == ("connector_id" in tool):
            self.error(path, "an MCP tool needs exactly one of server_url or connector_id")
        elif "server_url" in tool and not str(tool["server_url"]).startswith("https://"):
            self.error(f"{path}.server_url", f"must be an https:// URL (got {tool['server_url']!r})")

    def tool_choice(self, choice: Any, names: set[str], tools_present: bool) -> None:
        if choice in ("auto", "none", "required"):
            return
        if isinstance(choice, Mapping) and choice.get("type") == "function":
            name = choice.get("name")
            # an update without `tools` keeps the session's tools, which this check cannot see
            if (tools_present or not self.ctx.update) and not (isinstance(name, str) and name in names):
                known = ", ".join(sorted(names)) or "none"
                self.error("tool_choice.name", f"names the unknown tool {name!r}; known function tools: {known}")
            return
        if isinstance(choice, Mapping) and choice.get("type") == "mcp":
            return
        self.error("tool_choice", f"must be auto, none, required or {{type: function, name}} (got {choice!r})")

    # ---- scalars --------------------------------------------------------------------------------------

    def number(self, value: Any, path: str, low: float, high: float, *, integer: bool = False) -> None:
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if integer else "a number"
            self.error(path, f"must be {kind} between {low:g} and {high:g} (got {value!r})")
        elif not low <= value <= high:
            self.error(path, f"{value!r} is out of range {low:g}-{high:g}")

    def max_tokens(self, value: Any) -> None:
        if value == "inf":
            return
        self.number(value, "max_output_tokens", 1, MAX_OUTPUT_TOKENS, integer=True)

    def truncation(self, value: Any) -> None:
        if value in ("auto", "disabled"):
            return
        if isinstance(value, Mapping) and value.get("type") == "retention_ratio":
            self.number(value.get("retention_ratio"), "truncation.retention_ratio", 0.0, 1.0)
            return
        self.error("truncation", f"must be auto, disabled or {{type: retention_ratio, retention_ratio}} "
                   f"(got {value!r})")

    def reasoning(self, value: Any) -> None:
        efforts = ("minimal", "low", "medium", "high", "xhigh")
        if not isinstance(value, Mapping) or value.get("effort") not in efforts:
            self.error("reasoning.effort", f"must be one of {', '.join(efforts)} (got {value!r})")

    def prompt(self, value: Any) -> None:
        today = self.ctx.today
        if today >= PROMPT_SHUTDOWN:
            self.error("prompt", f"stored prompts were shut down on {PROMPT_SHUTDOWN.isoformat()}; put the text in "
                       "`instructions`")
        else:
            self.warn("prompt", f"stored prompts shut down on {PROMPT_SHUTDOWN.isoformat()}; put the text in "
                      "`instructions`")


def check_session(body: Mapping[str, Any], ctx: Context) -> list[Finding]:
    """All findings for an accept body (``ctx.update`` False) or a ``session.update`` session patch."""
    checker = _Checker(ctx)
    checker.session(body)
    return checker.found


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]
