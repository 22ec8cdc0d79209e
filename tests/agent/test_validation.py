"""Tests for sip_controller.agent.validation: every known session-config trap, with exact paths and messages."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.agent.validation import Context, Finding, check_session, errors

TODAY = date(2026, 11, 22)
ACCEPT = Context(today=TODAY)
UPDATE = Context(today=TODAY, update=True)
PCMU = {"type": "audio/pcmu"}
GA_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")

Expected = list[tuple[str, str, str]]


def got(body: dict[str, Any], ctx: Context = ACCEPT) -> Expected:
    return [(f.path, f.severity, f.message) for f in check_session(body, ctx)]


def base(**fields: Any) -> dict[str, Any]:
    """A minimal valid accept body (codec negotiated), plus ``fields``."""
    body: dict[str, Any] = {"type": "realtime", "model": "gpt-realtime-2.1", "instructions": "Answer the phone."}
    body.update(fields)
    return body


def phone(**fields: Any) -> dict[str, Any]:
    """A minimal valid accept body with the codec stated on both sides, plus ``fields``."""
    return base(**{"audio": {"input": {"format": dict(PCMU)}, "output": {"format": dict(PCMU)}}, **fields})


def audio(inp: dict[str, Any] | None = None, out: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    sides: dict[str, Any] = {}
    if inp is not None:
        sides["input"] = inp
    if out is not None:
        sides["output"] = out
    return base(**{"audio": sides, **fields})


def update(**fields: Any) -> dict[str, Any]:
    return {"type": "realtime", **fields}


def fn(name: str | None = "lookup_order", **fields: Any) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "type": "function",
        "name": name,
        "description": "Look up an order by its number.",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
    }
    tool.update(fields)
    return tool


def vad(**fields: Any) -> dict[str, Any]:
    return {"type": "server_vad", **fields}


def realistic_accept_body() -> dict[str, Any]:
    return {
        "type": "realtime",
        "model": "gpt-realtime-2.1",
        "instructions": "You are the front desk of Example Dental. Book, move and cancel appointments.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en", "prompt": "dental terms"},
                "noise_reduction": {"type": "far_field"},
                "turn_detection": {
                    "type": "server_vad",
                    "create_response": True,
                    "interrupt_response": True,
                    "idle_timeout_ms": 8000,
                },
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
        },
        "tools": [
            fn("lookup_order"),
            fn("book-appointment", description="Book an appointment.", parameters={"type": "object"}),
            {
                "type": "mcp",
                "server_label": "calendar",
                "server_url": "https://mcp.example.com/sse",
                "allowed_tools": ["free_slots"],
                "require_approval": "never",
            },
        ],
        "tool_choice": "auto",
        "max_output_tokens": 1024,
        "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
        "reasoning": {"effort": "low"},
        "parallel_tool_calls": False,
        "tracing": "auto",
        "include": ["item.input_audio_transcription.logprobs"],
    }


# ---- valid bodies -------------------------------------------------------------------------------------


def test_realistic_accept_body_has_no_findings() -> None:
    assert check_session(realistic_accept_body(), ACCEPT) == []


def test_realistic_accept_body_is_also_a_valid_update_without_model() -> None:
    body = realistic_accept_body()
    del body["model"]
    assert check_session(body, Context(today=TODAY, update=True, model="gpt-realtime-2.1")) == []


def test_minimal_update_has_no_findings() -> None:
    assert check_session(update(instructions="Now speak Spanish."), UPDATE) == []


def test_finding_str_and_errors_helper() -> None:
    findings = [Finding("model", "m", "warning"), Finding("type", "t")]
    assert str(findings[1]) == "type: t"
    assert findings[1].severity == "error"
    assert errors(findings) == [Finding("type", "t", "error")]


# ---- beta-era fields ----------------------------------------------------------------------------------

TEMPERATURE_MSG = (
    "`temperature` was removed from the GA Realtime API (the beta allowed only 0.6-1.2 and lower values "
    "failed or produced noise); delete it"
)

BETA_CASES = [
    pytest.param({"temperature": 0.8}, [("temperature", "error", TEMPERATURE_MSG)], id="temperature"),
    pytest.param(
        {"modalities": ["audio", "text"]},
        [("modalities", "error",
          "`modalities` is beta-only; the GA field is `output_modalities` (['audio'] for a phone call)")],
        id="modalities",
    ),
    pytest.param(
        {"voice": "alloy"},
        [("voice", "error",
          "a top-level `voice` is answered 200 and then breaks the call; the voice belongs at audio.output.voice "
          "(set the profile's `voice`)")],
        id="top-level-voice",
    ),
    pytest.param(
        {"input_audio_format": "g711_ulaw"},
        [("input_audio_format", "error",
          "`input_audio_format` is beta-only; the GA path is audio.input.format = {type: audio/pcmu} "
          "(set the profile's `codec`)")],
        id="input_audio_format",
    ),
    pytest.param(
        {"output_audio_format": "g711_ulaw"},
        [("output_audio_format", "error",
          "`output_audio_format` is beta-only; the GA path is audio.output.format = {type: audio/pcmu} "
          "(set the profile's `codec`)")],
        id="output_audio_format",
    ),
    pytest.param(
        {"turn_detection": {"type": "server_vad"}},
        [("turn_detection", "error",
          "a top-level `turn_detection` is beta-only; the GA path is audio.input.turn_detection "
          "(set the profile's `turn_detection`)")],
        id="top-level-turn_detection",
    ),
    pytest.param(
        {"input_audio_transcription": {"model": "whisper-1"}},
        [("input_audio_transcription", "error",
          "`input_audio_transcription` is beta-only; the GA path is audio.input.transcription "
          "(set the profile's `transcription`)")],
        id="input_audio_transcription",
    ),
    pytest.param(
        {"input_audio_noise_reduction": {"type": "near_field"}},
        [("input_audio_noise_reduction", "error",
          "`input_audio_noise_reduction` is beta-only; the GA path is audio.input.noise_reduction "
          "(set the profile's `noise_reduction`)")],
        id="input_audio_noise_reduction",
    ),
    pytest.param(
        {"max_response_output_tokens": 500},
        [("max_response_output_tokens", "error",
          "`max_response_output_tokens` is beta-only; the GA name is `max_output_tokens`")],
        id="max_response_output_tokens",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), BETA_CASES)
def test_beta_field_on_accept(fields: dict[str, Any], expected: Expected) -> None:
    assert got(base(**fields)) == expected


@pytest.mark.parametrize(("fields", "expected"), BETA_CASES)
def test_beta_field_in_update(fields: dict[str, Any], expected: Expected) -> None:
    assert got(update(**fields), UPDATE) == expected


def test_temperature_message_explains_removal_and_beta_range() -> None:
    [finding] = check_session(base(temperature=0.3), ACCEPT)
    assert "removed from the GA" in finding.message
    assert "0.6-1.2" in finding.message


@pytest.mark.parametrize(
    ("beta", "ga"), [("g711_ulaw", "audio/pcmu"), ("g711_alaw", "audio/pcma"), ("pcm16", "audio/pcm")]
)
def test_beta_format_string(beta: str, ga: str) -> None:
    msg = f"{beta!r} is a beta-style string; the GA format is an object: {{type: {ga}}}"
    assert got(audio({"format": beta}, {"format": beta})) == [
        ("audio.input.format", "error", msg),
        ("audio.output.format", "error", msg),
    ]


@pytest.mark.parametrize(
    ("beta", "ga"), [("g711_ulaw", "audio/pcmu"), ("g711_alaw", "audio/pcma"), ("pcm16", "audio/pcm")]
)
def test_beta_format_type(beta: str, ga: str) -> None:
    msg = f"{beta!r} is the beta name; the GA type is {ga!r}"
    assert got(audio({"format": {"type": beta}}, {"format": {"type": beta}})) == [
        ("audio.input.format.type", "error", msg),
        ("audio.output.format.type", "error", msg),
    ]


# ---- codec --------------------------------------------------------------------------------------------

ONE_SIDED = (
    "state the format on both sides or on neither (negotiated); one-sided formats have turned SIP audio to static"
)
PCM_ON_TRUNK = (
    "audio/pcm is wrong for a phone trunk (G.711 on the wire); use codec pcmu, or set allow_pcm: true if you "
    "really mean it"
)
NULL_FORMAT = "never null (OpenAI answers 400): omit it to negotiate, or set {type: audio/pcmu}"
TOOLS_WITHOUT_CODEC = (
    "tools without audio.input.format and audio.output.format stated: calls have turned to static this way; "
    "use codec pcmu (or pcma), or no tools with a negotiated codec"
)
PCM24 = {"type": "audio/pcm", "rate": 24000}
ALLOW_PCM = Context(today=TODAY, allow_pcm=True)

CODEC_CASES = [
    pytest.param(base(), ACCEPT, [], id="negotiated-no-formats"),
    pytest.param(phone(), ACCEPT, [], id="pcmu-both"),
    pytest.param(audio({"format": {"type": "audio/pcma"}}, {"format": {"type": "audio/pcma"}}), ACCEPT, [],
                 id="pcma-both"),
    pytest.param(
        audio({"format": dict(PCMU)}, {"format": {"type": "audio/pcma"}}), ACCEPT,
        [("audio.output.format", "error", "input (audio/pcmu) and output (audio/pcma) formats must agree")],
        id="disagree",
    ),
    pytest.param(audio({"format": dict(PCMU)}, {"voice": "marin"}), ACCEPT,
                 [("audio.output.format", "error", ONE_SIDED)], id="input-only"),
    pytest.param(audio(None, {"format": dict(PCMU)}), ACCEPT,
                 [("audio.input.format", "error", ONE_SIDED)], id="output-only"),
    pytest.param(update(audio={"input": {"format": dict(PCMU)}}), UPDATE,
                 [("audio.output.format", "error", ONE_SIDED)], id="input-only-update"),
    pytest.param(audio({"format": dict(PCM24)}, {"format": dict(PCM24)}), ALLOW_PCM, [], id="pcm-allowed"),
    pytest.param(
        audio({"format": dict(PCM24)}, {"format": dict(PCM24)}), ACCEPT,
        [("audio.input.format", "error", PCM_ON_TRUNK), ("audio.output.format", "error", PCM_ON_TRUNK)],
        id="pcm-not-allowed",
    ),
    pytest.param(
        audio({"format": {"type": "audio/pcm"}}, {"format": {"type": "audio/pcm"}}), ALLOW_PCM,
        [("audio.input.format.rate", "error", "audio/pcm needs rate: 24000 (got None)"),
         ("audio.output.format.rate", "error", "audio/pcm needs rate: 24000 (got None)")],
        id="pcm-without-rate",
    ),
    pytest.param(
        audio({"format": {"type": "audio/pcm", "rate": 16000}}, {"format": dict(PCM24)}), ALLOW_PCM,
        [("audio.input.format.rate", "error", "audio/pcm needs rate: 24000 (got 16000)")],
        id="pcm-wrong-rate",
    ),
    pytest.param(
        audio({"format": {"type": "audio/pcmu", "rate": 8000}}, {"format": dict(PCMU)}), ACCEPT,
        [("audio.input.format.rate", "error", "only audio/pcm takes a rate; delete it for audio/pcmu")],
        id="rate-on-pcmu",
    ),
    pytest.param(
        audio({"format": None}, {"format": None}), ACCEPT,
        [("audio.input.format", "error", NULL_FORMAT), ("audio.output.format", "error", NULL_FORMAT)],
        id="null-both",
    ),
    pytest.param(
        audio({"format": None}, {"format": dict(PCMU)}), ACCEPT,
        [("audio.input.format", "error", NULL_FORMAT)],
        id="null-input",
    ),
    pytest.param(
        audio({"format": {"type": "audio/opus"}}, {"format": {"type": "audio/opus"}}), ACCEPT,
        [("audio.input.format.type", "error",
          "must be one of audio/pcmu, audio/pcma, audio/pcm (got 'audio/opus'); a Twilio trunk uses audio/pcmu"),
         ("audio.output.format.type", "error",
          "must be one of audio/pcmu, audio/pcma, audio/pcm (got 'audio/opus'); a Twilio trunk uses audio/pcmu")],
        id="unknown-type",
    ),
    pytest.param(
        audio({"format": {"type": "audio/pcmu", "channels": 1}}, {"format": dict(PCMU)}), ACCEPT,
        [("audio.input.format", "error",
          "unknown field(s) ['channels']; a format has only `type` (and `rate` for audio/pcm)")],
        id="format-extra-field",
    ),
    pytest.param(base(tools=[fn()]), ACCEPT, [("tools", "error", TOOLS_WITHOUT_CODEC)], id="tools-no-codec-accept"),
    pytest.param(update(tools=[fn()]), UPDATE, [("tools", "error", TOOLS_WITHOUT_CODEC)], id="tools-no-codec-update"),
    pytest.param(phone(tools=[fn()]), ACCEPT, [], id="tools-with-codec-accept"),
    pytest.param(
        update(tools=[fn()], audio={"input": {"format": dict(PCMU)}, "output": {"format": dict(PCMU)}}), UPDATE, [],
        id="tools-with-codec-update",
    ),
]


@pytest.mark.parametrize(("body", "ctx", "expected"), CODEC_CASES)
def test_codec(body: dict[str, Any], ctx: Context, expected: Expected) -> None:
    assert got(body, ctx) == expected


# ---- voice --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", GA_VOICES)
def test_every_ga_voice_is_accepted(voice: str) -> None:
    assert got(phone(audio={"input": {"format": PCMU}, "output": {"format": PCMU, "voice": voice}})) == []


UNKNOWN_VOICE = "unknown voice {!r}; use one of alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin, cedar"

VOICE_CASES = [
    pytest.param({"id": "voice_1234abcd"}, ACCEPT, [], id="custom-id"),
    pytest.param("nova", ACCEPT, [("audio.output.voice", "error", UNKNOWN_VOICE.format("nova"))], id="nova"),
    pytest.param("Marin", ACCEPT, [("audio.output.voice", "error", UNKNOWN_VOICE.format("Marin"))], id="case"),
    pytest.param(
        "voice_1234", ACCEPT,
        [("audio.output.voice", "error", UNKNOWN_VOICE.format("voice_1234") + " (a custom voice is {id: voice_…})")],
        id="custom-id-as-string",
    ),
    pytest.param(
        {"id": "abc"}, ACCEPT,
        [("audio.output.voice", "error", "a custom voice is {id: 'voice_…'} (got {'id': 'abc'})")],
        id="custom-bad-id",
    ),
    pytest.param(
        {"id": "voice_1", "name": "x"}, ACCEPT,
        [("audio.output.voice", "error", "a custom voice is {id: 'voice_…'} (got {'id': 'voice_1', 'name': 'x'})")],
        id="custom-extra-field",
    ),
    pytest.param(
        5, ACCEPT, [("audio.output.voice", "error", "must be a voice name or {id: 'voice_…'} (got 5)")],
        id="number",
    ),
    pytest.param(
        None, ACCEPT, [("audio.output.voice", "error", "must be a voice name or {id: 'voice_…'} (got None)")],
        id="null",
    ),
]


@pytest.mark.parametrize(("voice", "ctx", "expected"), VOICE_CASES)
def test_voice(voice: Any, ctx: Context, expected: Expected) -> None:
    assert got(phone(audio={"input": {"format": PCMU}, "output": {"format": PCMU, "voice": voice}}), ctx) == expected


def test_voice_change_after_audio_started_is_an_error() -> None:
    ctx = Context(today=TODAY, update=True, audio_started=True)
    assert got(update(audio={"output": {"voice": "cedar"}}), ctx) == [
        ("audio.output.voice", "error", "the voice cannot change after the caller has heard audio; leave it out"),
    ]


def test_voice_change_before_audio_started_is_fine() -> None:
    ctx = Context(today=TODAY, update=True, audio_started=False)
    assert got(update(audio={"output": {"voice": "cedar"}}), ctx) == []


def test_update_without_voice_after_audio_started_is_fine() -> None:
    ctx = Context(today=TODAY, update=True, audio_started=True)
    assert got(update(audio={"output": {"speed": 1.2}}), ctx) == []


# ---- tools --------------------------------------------------------------------------------------------

ONLY_FUNCTION_AND_MCP = "the Realtime API supports only function and MCP tools"
BAD_NAME = "must match ^[a-zA-Z0-9_-]{{1,64}}$ (got {!r})"
NEEDS_DESCRIPTION = "a description is required: it is how the model knows when to call it"
NOT_SCHEMA_OBJECT = "must be a JSON Schema object ({type: object, properties: …})"
MCP_ONE_OF = "an MCP tool needs exactly one of server_url or connector_id"

TOOL_CASES = [
    pytest.param([fn()], [], id="valid-function"),
    pytest.param([fn(parameters=None)], [], id="function-without-parameters"),
    pytest.param([fn("a" * 64)], [], id="name-64-chars"),
    pytest.param([fn("A-b_9")], [], id="name-all-classes"),
    *[
        pytest.param(
            [{"type": hosted}],
            [("tools[0].type", "error", f"{hosted!r} is not available here: {ONLY_FUNCTION_AND_MCP}")],
            id=f"hosted-{hosted}",
        )
        for hosted in ("web_search", "file_search", "code_interpreter", "computer_use_preview", "image_generation")
    ],
    pytest.param(
        [{"type": "retrieval"}],
        [("tools[0].type", "error", f"must be function or mcp (got 'retrieval'); {ONLY_FUNCTION_AND_MCP}")],
        id="unknown-type",
    ),
    pytest.param(
        [{"name": "x"}],
        [("tools[0].type", "error", f"must be function or mcp (got None); {ONLY_FUNCTION_AND_MCP}")],
        id="missing-type",
    ),
    pytest.param(["lookup"], [("tools[0]", "error", "must be an object with a `type` (got 'lookup')")],
                 id="not-an-object"),
    pytest.param([fn("look up")], [("tools[0].name", "error", BAD_NAME.format("look up"))], id="name-space"),
    pytest.param([fn("")], [("tools[0].name", "error", BAD_NAME.format(""))], id="name-empty"),
    pytest.param([fn("a" * 65)], [("tools[0].name", "error", BAD_NAME.format("a" * 65))], id="name-65-chars"),
    pytest.param([fn("lookup.order")], [("tools[0].name", "error", BAD_NAME.format("lookup.order"))],
                 id="name-dot"),
    pytest.param([fn("lookup\n")], [("tools[0].name", "error", BAD_NAME.format("lookup\n"))],
                 id="name-trailing-newline"),
    pytest.param([fn(name=None)], [("tools[0].name", "error", BAD_NAME.format(None))], id="name-missing"),
    pytest.param(
        [fn("lookup"), fn("lookup")],
        [("tools[1].name", "error", "duplicate tool name 'lookup'; tool names must be unique")],
        id="duplicate-name",
    ),
    pytest.param([fn(description=None)], [("tools[0].description", "error", NEEDS_DESCRIPTION)],
                 id="description-missing"),
    pytest.param([fn(description="   ")], [("tools[0].description", "error", NEEDS_DESCRIPTION)],
                 id="description-blank"),
    pytest.param(
        [fn(strict=True)],
        [("tools[0].strict", "error", "`strict` is not supported by the Realtime API; delete it")],
        id="strict",
    ),
    pytest.param(
        [fn(returns="string")],
        [("tools[0].returns", "error", "not a field of a function tool (type, name, description, parameters)")],
        id="function-unknown-field",
    ),
    pytest.param([fn(parameters={"type": "string"})], [("tools[0].parameters", "error", NOT_SCHEMA_OBJECT)],
                 id="parameters-not-object-type"),
    pytest.param([fn(parameters=[{"type": "object"}])], [("tools[0].parameters", "error", NOT_SCHEMA_OBJECT)],
                 id="parameters-list"),
    pytest.param([fn(parameters={"properties": {}})], [("tools[0].parameters", "error", NOT_SCHEMA_OBJECT)],
                 id="parameters-no-type"),
    pytest.param(
        [fn(parameters={"type": "object", "properties": {"order": {"type": "strin"}}})],
        [("tools[0].parameters", "error",
          "not a valid JSON Schema at properties/order/type: 'strin' is not valid under any of the given schemas")],
        id="schema-bad-type",
    ),
    pytest.param(
        [fn(parameters={"type": "object", "required": "order"})],
        [("tools[0].parameters", "error", "not a valid JSON Schema at required: 'order' is not of type 'array'")],
        id="schema-required-not-array",
    ),
    pytest.param(
        [fn(), fn("b", parameters={"type": "object", "properties": {"n": {"minLength": -1}}})],
        [("tools[1].parameters", "error",
          "not a valid JSON Schema at properties/n/minLength: -1 is less than the minimum of 0")],
        id="schema-error-second-tool",
    ),
    pytest.param(
        [{"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com"}], [], id="mcp-url",
    ),
    pytest.param([{"type": "mcp", "server_label": "crm", "connector_id": "connector_gmail"}], [],
                 id="mcp-connector"),
    pytest.param(
        [{"type": "mcp", "server_url": "https://mcp.example.com"}],
        [("tools[0].server_label", "error", "an MCP tool needs a server_label")],
        id="mcp-no-label",
    ),
    pytest.param(
        [{"type": "mcp", "server_label": "", "server_url": "https://mcp.example.com"}],
        [("tools[0].server_label", "error", "an MCP tool needs a server_label")],
        id="mcp-empty-label",
    ),
    pytest.param(
        [{"type": "mcp", "server_label": "crm"}], [("tools[0]", "error", MCP_ONE_OF)], id="mcp-neither",
    ),
    pytest.param(
        [{"type": "mcp", "server_label": "crm", "server_url": "https://m.example.com", "connector_id": "c"}],
        [("tools[0]", "error", MCP_ONE_OF)],
        id="mcp-both",
    ),
    pytest.param(
        [{"type": "mcp", "server_label": "crm", "server_url": "http://m.example.com"}],
        [("tools[0].server_url", "error", "must be an https:// URL (got 'http://m.example.com')")],
        id="mcp-http",
    ),
    pytest.param(
        [{"type": "mcp", "server_label": "crm", "connector_id": "c", "strict": True}],
        [("tools[0].strict", "error", "not a field of an MCP tool")],
        id="mcp-unknown-field",
    ),
]


@pytest.mark.parametrize(("tools", "expected"), TOOL_CASES)
def test_tools(tools: list[Any], expected: Expected) -> None:
    assert got(phone(tools=tools)) == expected


def test_tools_not_a_list() -> None:
    assert got(phone(tools={"type": "function"})) == [
        ("tools", "error", "must be a list (got {'type': 'function'})"),
    ]


TOOL_CHOICE_CASES = [
    pytest.param(phone(tools=[fn()], tool_choice="required"), ACCEPT, [], id="required"),
    pytest.param(phone(tools=[fn()], tool_choice="none"), ACCEPT, [], id="none"),
    pytest.param(phone(tools=[fn()], tool_choice={"type": "function", "name": "lookup_order"}), ACCEPT, [],
                 id="known-function"),
    pytest.param(
        phone(tools=[fn(), fn("cancel")], tool_choice={"type": "function", "name": "refund"}), ACCEPT,
        [("tool_choice.name", "error", "names the unknown tool 'refund'; known function tools: cancel, lookup_order")],
        id="unknown-function",
    ),
    pytest.param(
        phone(tool_choice={"type": "function", "name": "refund"}), ACCEPT,
        [("tool_choice.name", "error", "names the unknown tool 'refund'; known function tools: none")],
        id="function-on-accept-without-tools",
    ),
    # a session.update that does not restate tools keeps the earlier ones: nothing to check against
    pytest.param(update(tool_choice={"type": "function", "name": "refund"}), UPDATE, [], id="update-no-tools"),
    pytest.param(
        phone(tool_choice="always"), ACCEPT,
        [("tool_choice", "error", "must be auto, none, required or {type: function, name} (got 'always')")],
        id="bad-string",
    ),
]


@pytest.mark.parametrize(("body", "ctx", "expected"), TOOL_CHOICE_CASES)
def test_tool_choice(body: dict[str, Any], ctx: Context, expected: Expected) -> None:
    assert got(body, ctx) == expected


# ---- models -------------------------------------------------------------------------------------------

RETIRING = [
    ("gpt-realtime", "gpt-realtime-2.1"),
    ("gpt-realtime-2025-08-28", "gpt-realtime-2.1"),
    ("gpt-realtime-mini", "gpt-realtime-2.1-mini"),
    ("gpt-realtime-mini-2025-12-15", "gpt-realtime-2.1-mini"),
    ("gpt-audio-mini", "gpt-realtime-2.1-mini"),
    ("gpt-audio-mini-2025-10-06", "gpt-realtime-2.1-mini"),
]


@pytest.mark.parametrize("model", ["gpt-realtime-2.1", "gpt-realtime-2.1-mini", "gpt-realtime-2", "gpt-realtime-1.5"])
def test_current_models_are_fine(model: str) -> None:
    assert got(base(model=model)) == []


@pytest.mark.parametrize(
    "model", ["gpt-4o-realtime-preview", "gpt-4o-realtime-preview-2024-12-17", "gpt-4o-mini-realtime-preview"]
)
def test_preview_model_is_an_error(model: str) -> None:
    assert got(base(model=model)) == [
        ("model", "error", f"{model!r} is a preview model and has been shut down; use gpt-realtime-2.1"),
    ]


@pytest.mark.parametrize(("model", "replacement"), RETIRING)
def test_retiring_model_warns_before_shutdown(model: str, replacement: str) -> None:
    ctx = Context(today=date(2027, 1, 19))
    assert got(base(model=model), ctx) == [
        ("model", "warning", f"{model!r} shuts down on 2027-01-20; move to {replacement}"),
    ]


@pytest.mark.parametrize("today", [date(2027, 1, 20), date(2027, 6, 1)])
@pytest.mark.parametrize(("model", "replacement"), RETIRING)
def test_retiring_model_is_an_error_from_shutdown(model: str, replacement: str, today: date) -> None:
    assert got(base(model=model), Context(today=today)) == [
        ("model", "error", f"{model!r} was shut down on 2027-01-20; use {replacement}"),
    ]


def test_unknown_model_warns() -> None:
    assert got(base(model="gpt-5")) == [
        ("model", "warning",
         "'gpt-5' is not a known Realtime model (gpt-realtime-2.1, gpt-realtime-2.1-mini, gpt-realtime-2, "
         "gpt-realtime-1.5)"),
    ]


def test_model_required_on_accept() -> None:
    body = base()
    del body["model"]
    assert got(body) == [("model", "error", "a model name is required (got None); e.g. gpt-realtime-2.1")]


def test_model_in_update_is_an_error() -> None:
    assert got(update(model="gpt-realtime-2.1"), UPDATE) == [
        ("model", "error", "the model cannot change during a call; leave it out of session updates"),
    ]


def only_for_reasoning(key: str, model: str) -> tuple[str, str, str]:
    return (key, "error", f"`{key}` is only for gpt-realtime-2* models (model is {model!r}); "
            "delete it or use gpt-realtime-2.1")


@pytest.mark.parametrize("model", ["gpt-realtime-2.1", "gpt-realtime-2.1-mini", "gpt-realtime-2"])
def test_reasoning_fields_on_reasoning_models(model: str) -> None:
    assert got(base(model=model, reasoning={"effort": "high"}, parallel_tool_calls=True)) == []


def test_reasoning_fields_on_older_model() -> None:
    body = base(model="gpt-realtime-1.5", reasoning={"effort": "low"}, parallel_tool_calls=True)
    assert got(body) == [
        only_for_reasoning("reasoning", "gpt-realtime-1.5"),
        only_for_reasoning("parallel_tool_calls", "gpt-realtime-1.5"),
    ]


def test_reasoning_on_dated_gpt_realtime_snapshot() -> None:
    # gpt-realtime-2025-08-28 is the first GA gpt-realtime snapshot, not a gpt-realtime-2 model
    model = "gpt-realtime-2025-08-28"
    ctx = Context(today=date(2026, 11, 22))
    assert got(base(model=model, reasoning={"effort": "low"}), ctx) == [
        ("model", "warning", f"{model!r} shuts down on 2027-01-20; move to gpt-realtime-2.1"),
        only_for_reasoning("reasoning", model),
    ]


def test_reasoning_in_update_uses_the_calls_model() -> None:
    ctx = Context(today=TODAY, update=True, model="gpt-realtime-1.5")
    expected = [only_for_reasoning("parallel_tool_calls", "gpt-realtime-1.5")]
    assert got(update(parallel_tool_calls=False), ctx) == expected
    ctx2 = Context(today=TODAY, update=True, model="gpt-realtime-2.1")
    assert got(update(parallel_tool_calls=False), ctx2) == []


def test_reasoning_effort_must_be_known() -> None:
    assert got(base(reasoning={"effort": "max"})) == [
        ("reasoning.effort", "error", "must be one of minimal, low, medium, high, xhigh (got {'effort': 'max'})"),
    ]


# ---- stored prompt ------------------------------------------------------------------------------------


def test_prompt_warns_before_shutdown() -> None:
    assert got(base(prompt={"id": "pmpt_123"}), Context(today=date(2026, 11, 29))) == [
        ("prompt", "warning", "stored prompts shut down on 2026-11-30; put the text in `instructions`"),
    ]


@pytest.mark.parametrize("today", [date(2026, 11, 30), date(2026, 12, 1)])
def test_prompt_is_an_error_from_shutdown(today: date) -> None:
    assert got(base(prompt={"id": "pmpt_123"}), Context(today=today)) == [
        ("prompt", "error", "stored prompts were shut down on 2026-11-30; put the text in `instructions`"),
    ]


# ---- ranges and types ---------------------------------------------------------------------------------

TD = "audio.input.turn_detection"
NONEMPTY = "instructions must be a non-empty string; describe what the agent does"
VAD_UPDATE = Context(today=TODAY, update=True)


def td_update(**fields: Any) -> dict[str, Any]:
    return update(audio={"input": {"turn_detection": vad(**fields)}})


def td_semantic(**fields: Any) -> dict[str, Any]:
    return update(audio={"input": {"turn_detection": {"type": "semantic_vad", **fields}}})


def speed(value: Any) -> dict[str, Any]:
    return update(audio={"output": {"speed": value}})


RANGE_CASES = [
    # idle_timeout_ms 5000-30000 or null (not one of the SIP-deferred fields, so checked on an accept body)
    pytest.param(audio({"turn_detection": vad(idle_timeout_ms=5000)}), ACCEPT, [], id="idle-5000"),
    pytest.param(audio({"turn_detection": vad(idle_timeout_ms=30000)}), ACCEPT, [], id="idle-30000"),
    pytest.param(audio({"turn_detection": vad(idle_timeout_ms=None)}), ACCEPT, [], id="idle-null"),
    pytest.param(audio({"turn_detection": vad(idle_timeout_ms=4999)}), ACCEPT,
                 [(f"{TD}.idle_timeout_ms", "error", "4999 is out of range 5000-30000")], id="idle-4999"),
    pytest.param(audio({"turn_detection": vad(idle_timeout_ms=30001)}), ACCEPT,
                 [(f"{TD}.idle_timeout_ms", "error", "30001 is out of range 5000-30000")], id="idle-30001"),
    pytest.param(audio({"turn_detection": vad(idle_timeout_ms=True)}), ACCEPT,
                 [(f"{TD}.idle_timeout_ms", "error", "must be an integer between 5000 and 30000 (got True)")],
                 id="idle-bool"),
    pytest.param(audio({"turn_detection": vad(idle_timeout_ms="8000")}), ACCEPT,
                 [(f"{TD}.idle_timeout_ms", "error", "must be an integer between 5000 and 30000 (got '8000')")],
                 id="idle-string"),
    # speed 0.25-1.5
    pytest.param(speed(0.25), UPDATE, [], id="speed-0.25"),
    pytest.param(speed(1.5), UPDATE, [], id="speed-1.5"),
    pytest.param(speed(1), UPDATE, [], id="speed-int-1"),
    pytest.param(speed(0.24), UPDATE, [("audio.output.speed", "error", "0.24 is out of range 0.25-1.5")],
                 id="speed-0.24"),
    pytest.param(speed(1.51), UPDATE, [("audio.output.speed", "error", "1.51 is out of range 0.25-1.5")],
                 id="speed-1.51"),
    pytest.param(speed(True), UPDATE,
                 [("audio.output.speed", "error", "must be a number between 0.25 and 1.5 (got True)")],
                 id="speed-bool"),
    pytest.param(speed("fast"), UPDATE,
                 [("audio.output.speed", "error", "must be a number between 0.25 and 1.5 (got 'fast')")],
                 id="speed-string"),
    # threshold 0-1 (in an update, where VAD tuning is allowed)
    pytest.param(td_update(threshold=0), UPDATE, [], id="threshold-0"),
    pytest.param(td_update(threshold=1), UPDATE, [], id="threshold-1"),
    pytest.param(td_update(threshold=0.0), UPDATE, [], id="threshold-0.0"),
    pytest.param(td_update(threshold=1.0), UPDATE, [], id="threshold-1.0"),
    pytest.param(td_update(threshold=-0.1), UPDATE, [(f"{TD}.threshold", "error", "-0.1 is out of range 0-1")],
                 id="threshold-negative"),
    pytest.param(td_update(threshold=1.01), UPDATE, [(f"{TD}.threshold", "error", "1.01 is out of range 0-1")],
                 id="threshold-above-1"),
    pytest.param(td_update(threshold=True), UPDATE,
                 [(f"{TD}.threshold", "error", "must be a number between 0 and 1 (got True)")], id="threshold-bool"),
    pytest.param(td_update(silence_duration_ms=-1), UPDATE,
                 [(f"{TD}.silence_duration_ms", "error", "-1 is out of range 0-10000")], id="silence-negative"),
    pytest.param(td_update(prefix_padding_ms=300.5), UPDATE,
                 [(f"{TD}.prefix_padding_ms", "error", "must be an integer between 0 and 10000 (got 300.5)")],
                 id="padding-float"),
    # eagerness
    *[pytest.param(td_semantic(eagerness=e), UPDATE, [], id=f"eagerness-{e}") for e in ("low", "medium", "high",
                                                                                          "auto")],
    pytest.param(td_semantic(eagerness="fast"), UPDATE,
                 [(f"{TD}.eagerness", "error", "must be low, medium, high or auto (got 'fast')")], id="eagerness-bad"),
    pytest.param(td_semantic(eagerness=None), UPDATE,
                 [(f"{TD}.eagerness", "error", "must be low, medium, high or auto (got None)")], id="eagerness-null"),
    # max_output_tokens 1-4096 or "inf"
    pytest.param(base(max_output_tokens=1), ACCEPT, [], id="tokens-1"),
    pytest.param(base(max_output_tokens=4096), ACCEPT, [], id="tokens-4096"),
    pytest.param(base(max_output_tokens="inf"), ACCEPT, [], id="tokens-inf"),
    pytest.param(base(max_output_tokens=0), ACCEPT,
                 [("max_output_tokens", "error", "0 is out of range 1-4096")], id="tokens-0"),
    pytest.param(base(max_output_tokens=4097), ACCEPT,
                 [("max_output_tokens", "error", "4097 is out of range 1-4096")], id="tokens-4097"),
    pytest.param(base(max_output_tokens=True), ACCEPT,
                 [("max_output_tokens", "error", "must be an integer between 1 and 4096 (got True)")],
                 id="tokens-bool"),
    pytest.param(base(max_output_tokens=100.5), ACCEPT,
                 [("max_output_tokens", "error", "must be an integer between 1 and 4096 (got 100.5)")],
                 id="tokens-float"),
    pytest.param(base(max_output_tokens="infinite"), ACCEPT,
                 [("max_output_tokens", "error", "must be an integer between 1 and 4096 (got 'infinite')")],
                 id="tokens-bad-string"),
    # instructions
    pytest.param(base(instructions=""), ACCEPT, [("instructions", "error", NONEMPTY)], id="instructions-empty"),
    pytest.param(base(instructions=" \n\t"), ACCEPT, [("instructions", "error", NONEMPTY)],
                 id="instructions-blank"),
    pytest.param(base(instructions=None), ACCEPT, [("instructions", "error", NONEMPTY)], id="instructions-null"),
    pytest.param(base(instructions=["hi"]), ACCEPT, [("instructions", "error", NONEMPTY)],
                 id="instructions-list"),
    pytest.param({"type": "realtime", "model": "gpt-realtime-2.1"}, ACCEPT, [("instructions", "error", NONEMPTY)],
                 id="instructions-missing-on-accept"),
    pytest.param(update(instructions=""), UPDATE, [("instructions", "error", NONEMPTY)],
                 id="instructions-empty-in-update"),
    # booleans are really bool: 1 is not a bool
    pytest.param(td_update(create_response=1), UPDATE,
                 [(f"{TD}.create_response", "error", "must be true or false (got 1)")], id="create_response-1"),
    pytest.param(td_semantic(interrupt_response="yes"), UPDATE,
                 [(f"{TD}.interrupt_response", "error", "must be true or false (got 'yes')")],
                 id="interrupt_response-string"),
    pytest.param(td_update(create_response=False, interrupt_response=True), UPDATE, [], id="vad-bools-ok"),
    pytest.param(base(parallel_tool_calls=1), ACCEPT,
                 [("parallel_tool_calls", "error", "must be true or false (got 1)")], id="parallel-1"),
    # truncation
    pytest.param(base(truncation="disabled"), ACCEPT, [], id="truncation-disabled"),
    pytest.param(base(truncation={"type": "retention_ratio", "retention_ratio": 1.5}), ACCEPT,
                 [("truncation.retention_ratio", "error", "1.5 is out of range 0-1")], id="retention-1.5"),
    pytest.param(base(truncation="sometimes"), ACCEPT,
                 [("truncation", "error",
                   "must be auto, disabled or {type: retention_ratio, retention_ratio} (got 'sometimes')")],
                 id="truncation-bad"),
    # output_modalities
    pytest.param(base(output_modalities=["text"]), ACCEPT,
                 [("output_modalities", "error", "['text'] makes the agent silent on a phone call; use ['audio'] "
                   "(audio answers come with their transcript)")], id="modalities-text"),
    pytest.param(base(output_modalities=["audio", "text"]), ACCEPT,
                 [("output_modalities", "error", "must be ['audio'] or ['text'], not both "
                   "(got ['audio', 'text']); use ['audio'] for a phone call")], id="modalities-both"),
]


@pytest.mark.parametrize(("body", "ctx", "expected"), RANGE_CASES)
def test_ranges_and_types(body: dict[str, Any], ctx: Context, expected: Expected) -> None:
    assert got(body, ctx) == expected


# ---- VAD tuning on /accept ----------------------------------------------------------------------------

VAD_ON_ACCEPT = (
    "OpenAI is reported to refuse this on /accept for SIP calls; set it in the profile's turn_detection "
    "(sent by session.update after attach) or set vad_on_accept: true"
)
VAD_VALUES = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


@pytest.mark.parametrize(("field", "value"), VAD_VALUES.items())
def test_vad_tuning_on_accept_is_an_error(field: str, value: Any) -> None:
    assert got(audio({"turn_detection": vad(**{field: value})})) == [(f"{TD}.{field}", "error", VAD_ON_ACCEPT)]


@pytest.mark.parametrize(("field", "value"), VAD_VALUES.items())
def test_vad_tuning_on_accept_allowed_with_vad_on_accept(field: str, value: Any) -> None:
    ctx = Context(today=TODAY, vad_on_accept=True)
    assert got(audio({"turn_detection": vad(**{field: value})}), ctx) == []


def test_vad_tuning_allowed_in_update() -> None:
    assert got(td_update(**VAD_VALUES), UPDATE) == []


def test_vad_tuning_all_three_on_accept() -> None:
    assert got(audio({"turn_detection": vad(**VAD_VALUES)})) == [
        (f"{TD}.{field}", "error", VAD_ON_ACCEPT) for field in VAD_VALUES
    ]


# ---- type, unknown fields -----------------------------------------------------------------------------

NOT_GA = "not a GA Realtime session field (OpenAI answers 400 unknown_parameter); delete it"

SHAPE_CASES = [
    pytest.param({k: v for k, v in base().items() if k != "type"}, ACCEPT,
                 [("type", "error", 'every session object needs type "realtime" (got None)')], id="type-missing"),
    pytest.param(base(type="session"), ACCEPT,
                 [("type", "error", "every session object needs type \"realtime\" (got 'session')")],
                 id="type-wrong"),
    pytest.param({"instructions": "Now in Spanish."}, UPDATE,
                 [("type", "error", 'every session object needs type "realtime" (got None)')],
                 id="type-missing-in-update"),
    pytest.param(base(foo=1), ACCEPT, [("foo", "error", NOT_GA)], id="unknown-top-level"),
    pytest.param(base(session_id="x"), ACCEPT, [("session_id", "error", NOT_GA)], id="unknown-top-level-2"),
    pytest.param(update(speed=1.0), UPDATE, [("speed", "error", NOT_GA)], id="unknown-top-level-update"),
    pytest.param(base(audio=None), ACCEPT,
                 [("audio", "error", "must be an object with `input` and `output` (got None)")], id="audio-null"),
    pytest.param(base(audio={"input": {}, "output": {}, "format": "x"}), ACCEPT,
                 [("audio.format", "error", "not a GA field; audio has only `input` and `output`")],
                 id="audio-unknown"),
    pytest.param(audio({"voice": "marin"}), ACCEPT,
                 [("audio.input.voice", "error",
                   "not a GA field of audio.input; the voice goes at audio.output.voice")],
                 id="input-voice"),
    pytest.param(audio({"speed": 1.0}), ACCEPT,
                 [("audio.input.speed", "error", "not a GA field of audio.input")], id="input-speed"),
    pytest.param(audio(None, {"transcription": None}), ACCEPT,
                 [("audio.output.transcription", "error", "not a GA field of audio.output")], id="output-unknown"),
    pytest.param(audio("pcmu"), ACCEPT,  # type: ignore[arg-type]
                 [("audio.input", "error", "must be an object (got 'pcmu')")], id="input-not-object"),
    pytest.param(audio({"turn_detection": vad(eagerness="low")}), ACCEPT,
                 [(f"{TD}.eagerness", "error", "not a field of server_vad")], id="server-vad-eagerness"),
    pytest.param(audio({"turn_detection": {"type": "semantic_vad", "idle_timeout_ms": 6000}}), ACCEPT,
                 [(f"{TD}.idle_timeout_ms", "error", "not a field of semantic_vad")], id="semantic-idle-timeout"),
    pytest.param(td_semantic(threshold=0.5), UPDATE,
                 [(f"{TD}.threshold", "error", "not a field of semantic_vad")], id="semantic-threshold"),
    pytest.param(audio({"turn_detection": {"type": "none"}}), ACCEPT,
                 [(f"{TD}.type", "error", "must be server_vad or semantic_vad (got 'none')")], id="vad-type"),
    pytest.param(audio({"turn_detection": None}), ACCEPT, [], id="vad-null"),
    pytest.param(audio({"turn_detection": "server_vad"}), ACCEPT,
                 [(TD, "error", "must be null or an object with `type` (got 'server_vad')")], id="vad-string"),
    pytest.param(audio({"transcription": {"model": "whisper-1", "temperature": 0}}), ACCEPT,
                 [("audio.input.transcription.temperature", "error",
                   "not a GA transcription field (model, language, prompt)")], id="transcription-unknown"),
    pytest.param(audio({"transcription": {"language": "en"}}), ACCEPT,
                 [("audio.input.transcription.model", "error",
                   "a transcription model is required, e.g. gpt-4o-mini-transcribe")], id="transcription-no-model"),
    pytest.param(audio({"transcription": None}), ACCEPT, [], id="transcription-null"),
    pytest.param(audio({"noise_reduction": None}), ACCEPT, [], id="noise-null"),
    pytest.param(audio({"noise_reduction": {"type": "loud"}}), ACCEPT,
                 [("audio.input.noise_reduction", "error",
                   "must be null or {type: near_field | far_field} (got {'type': 'loud'})")], id="noise-bad"),
]


@pytest.mark.parametrize(("body", "ctx", "expected"), SHAPE_CASES)
def test_type_and_unknown_fields(body: dict[str, Any], ctx: Context, expected: Expected) -> None:
    assert got(body, ctx) == expected


# ---- robustness ---------------------------------------------------------------------------------------

UNHASHABLE_CASES = [
    pytest.param(phone(audio={"input": {"format": {"type": ["audio/pcmu"]}},
                              "output": {"format": {"type": ["audio/pcmu"]}}}), id="format-type-list"),
    pytest.param(phone(tools=[{"type": ["function"]}]), id="tool-type-list"),
    pytest.param(phone(tools=[{"type": {"function": True}}]), id="tool-type-dict"),
    pytest.param(phone(tools=[fn()], tool_choice={"type": "function", "name": ["lookup_order"]}),
                 id="tool-choice-name-list"),
]


@pytest.mark.parametrize("body", UNHASHABLE_CASES)
def test_unhashable_values_are_findings_not_crashes(body: dict[str, Any]) -> None:
    findings = check_session(body, ACCEPT)
    assert findings
    assert all(f.severity == "error" for f in findings)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
#: every key and tag string the checker looks at, so random bodies reach deep into the rules
VOCABULARY = (
    "type", "model", "instructions", "output_modalities", "audio", "input", "output", "format", "rate", "voice",
    "speed", "transcription", "noise_reduction", "turn_detection", "threshold", "idle_timeout_ms", "eagerness",
    "create_response", "tools", "name", "description", "parameters", "strict", "server_label", "server_url",
    "connector_id", "tool_choice", "max_output_tokens", "truncation", "retention_ratio", "reasoning", "effort",
    "parallel_tool_calls", "prompt", "id", "properties", "required", "temperature", "voice_x",
    "realtime", "function", "mcp", "audio/pcmu", "audio/pcm", "g711_ulaw", "server_vad", "semantic_vad",
    "web_search", "retention_ratio", "gpt-realtime", "gpt-realtime-2.1", "object", "inf",
)
KEYS = st.sampled_from(VOCABULARY) | st.text(max_size=6)
JSON = st.recursive(
    JSON_SCALARS | st.sampled_from(VOCABULARY),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)
CONTEXTS = st.builds(
    Context,
    today=st.dates(min_value=date(2026, 1, 1), max_value=date(2028, 1, 1)),
    update=st.booleans(),
    allow_pcm=st.booleans(),
    vad_on_accept=st.booleans(),
    model=st.none() | st.sampled_from(["gpt-realtime-2.1", "gpt-realtime-1.5", "x"]),
    audio_started=st.booleans(),
)


def assert_well_formed(findings: list[Finding]) -> None:
    for finding in findings:
        assert isinstance(finding, Finding)
        assert isinstance(finding.path, str)
        assert isinstance(finding.message, str)
        assert finding.message
        assert finding.severity in ("error", "warning")


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(body=st.dictionaries(KEYS, JSON, max_size=8), ctx=CONTEXTS)
def test_check_session_never_raises_on_arbitrary_bodies(body: dict[str, Any], ctx: Context) -> None:
    assert_well_formed(check_session(body, ctx))


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(
    inp=st.dictionaries(st.sampled_from(["format", "transcription", "noise_reduction", "turn_detection"]), JSON),
    out=st.dictionaries(st.sampled_from(["format", "voice", "speed"]), JSON),
    tools=st.lists(st.dictionaries(KEYS, JSON, max_size=5), max_size=3),
    tool_choice=JSON,
    ctx=CONTEXTS,
)
def test_check_session_never_raises_on_shaped_bodies(
    inp: dict[str, Any], out: dict[str, Any], tools: list[Any], tool_choice: Any, ctx: Context
) -> None:
    body = base(audio={"input": inp, "output": out}, tools=tools, tool_choice=tool_choice)
    assert_well_formed(check_session(body, ctx))
