"""The simulator's pure parts: OpenAI's session rules, patch merging, audio state, usage, expectations."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip_controller.simulator import (
    CallSpec,
    Expectation,
    SimCall,
    Simulator,
    check_expectations,
    new_webhook_secret,
    validate_session,
)
from sip_controller.simulator.events import UsageMeter, assistant_seconds, caller_seconds, trim_words
from sip_controller.simulator.rules import (
    assess_audio,
    auto_response_enabled,
    default_session,
    merge_patch,
    worse,
)

PCMU = {"type": "audio/pcmu"}
FUNCTION = {"type": "function", "name": "end_call", "parameters": {"type": "object", "properties": {}}}


def realtime(**fields: Any) -> dict[str, Any]:
    return {"type": "realtime", **fields}


VALID = [
    pytest.param(realtime(), id="type-only"),
    pytest.param(
        realtime(
            model="gpt-realtime-2.1",
            instructions="Be brief.",
            output_modalities=["audio"],
            audio={
                "input": {
                    "format": PCMU,
                    "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                    "noise_reduction": {"type": "near_field"},
                    "turn_detection": {"type": "semantic_vad", "eagerness": "low", "create_response": True},
                },
                "output": {"format": PCMU, "voice": "marin", "speed": 1.1},
            },
            tools=[FUNCTION, {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com"}],
            tool_choice={"type": "function", "name": "end_call"},
            max_output_tokens="inf",
            truncation={"type": "retention_ratio", "retention_ratio": 0.8},
            reasoning={"effort": "low"},
            parallel_tool_calls=False,
            tracing="auto",
            include=["item.input_audio_transcription.logprobs"],
            prompt=None,
        ),
        id="everything",
    ),
    pytest.param(realtime(audio={"input": {"turn_detection": None, "transcription": None}}), id="nulls"),
    pytest.param(realtime(audio={"output": {"format": {"type": "audio/pcm", "rate": 24000}}}), id="pcm-24k"),
    pytest.param(realtime(audio={"output": {"voice": {"id": "voice_123"}}}), id="custom-voice"),
    pytest.param(realtime(max_output_tokens=4096, tool_choice="required"), id="limits"),
    pytest.param(realtime(max_output_tokens=1), id="one-token"),
    pytest.param(realtime(audio={"output": {"speed": 0.25}}), id="slowest"),
    pytest.param(realtime(audio={"output": {"speed": 1.5}}), id="fastest"),
    pytest.param(realtime(audio={"input": {"noise_reduction": {"type": "far_field"}}}), id="far-field"),
    pytest.param(realtime(audio={"input": {"noise_reduction": None}}), id="no-noise-reduction"),
    pytest.param(realtime(reasoning={"effort": "xhigh"}, parallel_tool_calls=True), id="reasoning"),
    pytest.param(
        realtime(
            tools=[
                {"type": "mcp", "server_label": "docs", "connector_id": "connector_googledrive"},
                {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com", "headers": {}},
            ]
        ),
        id="mcp-url-or-connector",
    ),
    pytest.param(
        realtime(
            tools=[
                {
                    "type": "function",
                    "name": "look-up_Order-42",
                    "parameters": {
                        "type": "object",
                        "properties": {"id": {"type": "string", "pattern": "^[0-9]+$"}},
                        "required": ["id"],
                        "additionalProperties": False,
                    },
                },
                {"type": "function", "name": "x" * 64, "parameters": {}},
            ]
        ),
        id="function-schemas",
    ),
]


@pytest.mark.parametrize("body", VALID)
def test_valid_session_configs_pass(body: dict[str, Any]) -> None:
    assert validate_session(body, reject_vad_tuning=True) is None


INVALID = [
    pytest.param(realtime(voice="marin"), "unknown_parameter", "voice", id="flat-voice-outside-accept"),
    pytest.param(
        realtime(input_audio_transcription=None), "unknown_parameter", "input_audio_transcription", id="beta"
    ),
    pytest.param(
        realtime(max_response_output_tokens=100), "unknown_parameter", "max_response_output_tokens", id="b2"
    ),
    pytest.param(
        realtime(output_modalities=["audio", "text"]), "invalid_value", "output_modalities", id="modalities"
    ),
    pytest.param(realtime(instructions=5), "invalid_type", "instructions", id="instructions-type"),
    pytest.param(
        realtime(audio={"input": {"format": {}}}),
        "missing_required_parameter",
        "audio.input.format.type",
        id="format-without-type",
    ),
    pytest.param(
        realtime(audio={"input": {"format": {"type": "audio/pcm"}}}),
        "missing_required_parameter",
        "audio.input.format.rate",
        id="pcm-without-rate",
    ),
    pytest.param(
        realtime(audio={"input": {"format": {"type": "audio/pcmu", "rate": 8000}}}),
        "unknown_parameter",
        "audio.input.format.rate",
        id="pcmu-with-rate",
    ),
    pytest.param(realtime(audio={"speaker": {}}), "unknown_parameter", "audio.speaker", id="audio-key"),
    pytest.param(
        realtime(audio={"input": {"vad": {}}}), "unknown_parameter", "audio.input.vad", id="input-key"
    ),
    pytest.param(
        realtime(audio={"output": {"voice": "nova"}}), "invalid_value", "audio.output.voice", id="voice"
    ),
    pytest.param(
        realtime(audio={"output": {"speed": 2.0}}),
        "decimal_above_max_value",
        "audio.output.speed",
        id="speed",
    ),
    pytest.param(
        realtime(audio={"input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": 100}}}),
        "unknown_parameter",
        "audio.input.turn_detection.prefix_padding_ms",
        id="vad-prefix",
    ),
    pytest.param(
        realtime(audio={"input": {"turn_detection": {"type": "loud_vad"}}}),
        "invalid_value",
        "audio.input.turn_detection.type",
        id="vad-type",
    ),
    pytest.param(
        realtime(audio={"input": {"turn_detection": {"type": "semantic_vad", "idle_timeout_ms": 6000}}}),
        "unknown_parameter",
        "audio.input.turn_detection.idle_timeout_ms",
        id="semantic-idle",
    ),
    pytest.param(
        realtime(tools=[{"type": "file_search"}]), "invalid_value", "tools[0].type", id="file-search"
    ),
    pytest.param(
        realtime(tools=[{"name": "x"}]), "missing_required_parameter", "tools[0].type", id="tool-no-type"
    ),
    pytest.param(
        realtime(tools=[{"type": "mcp"}]), "missing_required_parameter", "tools[0].server_label", id="mcp"
    ),
    pytest.param(realtime(tool_choice="any"), "invalid_value", "tool_choice", id="tool-choice"),
    pytest.param(realtime(max_output_tokens=0), "integer_below_min_value", "max_output_tokens", id="tokens"),
    pytest.param(realtime(reasoning={"effort": "max"}), "invalid_value", "reasoning.effort", id="effort"),
    pytest.param(
        realtime(audio={"output": {"speed": 0.2}}), "decimal_below_min_value", "audio.output.speed", id="slow"
    ),
    pytest.param(
        realtime(audio={"output": {"voice": {"id": 5}}}), "invalid_type", "audio.output.voice.id", id="voice-id"
    ),
    pytest.param(
        realtime(audio={"input": {"noise_reduction": {"type": "studio"}}}),
        "invalid_value",
        "audio.input.noise_reduction.type",
        id="noise",
    ),
    pytest.param(
        realtime(max_output_tokens=4097), "integer_above_max_value", "max_output_tokens", id="tokens-high"
    ),
    pytest.param(realtime(max_output_tokens="infinite"), "invalid_value", "max_output_tokens", id="tokens-str"),
    pytest.param(realtime(parallel_tool_calls="yes"), "invalid_type", "parallel_tool_calls", id="parallel"),
    pytest.param(
        realtime(audio={"output": {"format": "g711_ulaw"}}), "invalid_type", "audio.output.format", id="beta-str"
    ),
    pytest.param(
        realtime(audio={"input": {"format": "pcm16"}}), "invalid_type", "audio.input.format", id="beta-pcm16"
    ),
    pytest.param(
        realtime(audio={"output": {"format": {"type": "g711_ulaw"}}}),
        "invalid_value",
        "audio.output.format.type",
        id="beta-type",
    ),
    pytest.param(
        realtime(audio={"input": {"format": {"type": "pcm16"}}}),
        "invalid_value",
        "audio.input.format.type",
        id="beta-pcm16-type",
    ),
    pytest.param(
        realtime(tools=[FUNCTION, {**FUNCTION, "name": "get.weather"}]),
        "invalid_value",
        "tools[1].name",
        id="name-dot",
    ),
    pytest.param(realtime(tools=[{**FUNCTION, "name": ""}]), "invalid_value", "tools[0].name", id="name-empty"),
    pytest.param(
        realtime(tools=[{**FUNCTION, "name": "x" * 65}]), "invalid_value", "tools[0].name", id="name-long"
    ),
    pytest.param(realtime(tools=[FUNCTION, FUNCTION]), "invalid_value", "tools[1].name", id="duplicate"),
    pytest.param(
        realtime(tools=[{**FUNCTION, "parameters": {"type": "string"}}]),
        "invalid_function_parameters",
        "tools[0].parameters",
        id="schema-not-object",
    ),
    pytest.param(
        realtime(tools=[{**FUNCTION, "parameters": "{}"}]), "invalid_type", "tools[0].parameters", id="schema-str"
    ),
    pytest.param(
        realtime(tools=[{"type": "mcp", "server_label": "crm"}]),
        "missing_required_parameter",
        "tools[0].server_url",
        id="mcp-no-server",
    ),
    pytest.param(
        realtime(
            tools=[{"type": "mcp", "server_label": "crm", "server_url": "https://x.example", "connector_id": "c"}]
        ),
        "invalid_value",
        "tools[0].connector_id",
        id="mcp-both",
    ),
    pytest.param(
        realtime(tool_choice={"type": "function", "name": "end_call"}),
        "invalid_value",
        "tool_choice",
        id="choice-without-tools",
    ),
    pytest.param(
        realtime(tools=[FUNCTION], tool_choice={"type": "function", "name": "transfer"}),
        "invalid_value",
        "tool_choice",
        id="choice-unknown",
    ),
]


@pytest.mark.parametrize(("body", "code", "param"), INVALID)
def test_invalid_session_configs_name_the_parameter(body: dict[str, Any], code: str, param: str) -> None:
    error = validate_session(body, reject_vad_tuning=True)
    assert error is not None
    assert (error.status, error.type, error.code, error.param) == (400, "invalid_request_error", code, param)
    assert error.body() == {
        "error": {"message": error.message, "type": error.type, "code": code, "param": param}
    }


def test_flat_voice_passes_only_where_openai_lets_it_through() -> None:
    assert validate_session(realtime(voice="marin"), allow_flat_voice=True) is None


def test_vad_tuning_is_allowed_unless_the_accept_quirk_applies() -> None:
    body = realtime(audio={"input": {"turn_detection": {"type": "server_vad", "threshold": 0.6}}})
    assert validate_session(body, reject_vad_tuning=False) is None
    error = validate_session(body, reject_vad_tuning=True)
    assert error is not None
    assert error.param == "audio.input.turn_detection.threshold"


def test_session_update_params_are_prefixed() -> None:
    missing = validate_session({"instructions": "x"}, prefix="session.")
    assert missing is not None
    assert (missing.code, missing.param, missing.message) == (
        "missing_required_parameter",
        "session.type",
        "Missing required parameter: 'session.type'.",
    )
    unknown = validate_session(realtime(temperature=0.8), prefix="session.")
    assert unknown is not None
    assert unknown.param == "session.temperature"


def test_function_name_pattern_message_is_openai_shaped() -> None:
    error = validate_session(realtime(tools=[{**FUNCTION, "name": "end call"}]), prefix="session.")
    assert error is not None
    assert error.param == "session.tools[0].name"
    assert error.message == (
        "Invalid 'session.tools[0].name': string does not match pattern. "
        "Expected a string that matches the pattern '^[a-zA-Z0-9_-]{1,64}$'."
    )


def test_tool_choice_is_checked_against_the_session_an_update_patches() -> None:
    session = merge_patch(default_session("sess_1", 0), realtime(tools=[FUNCTION]))
    choice = {"type": "function", "name": "end_call"}
    assert validate_session(realtime(tool_choice=choice), prefix="session.", session=session) is None
    missing = validate_session(realtime(tool_choice=choice), prefix="session.")
    assert missing is not None
    assert (missing.code, missing.param) == ("invalid_value", "session.tool_choice")
    assert "end_call" in missing.message
    replaced = realtime(tools=[{**FUNCTION, "name": "transfer"}], tool_choice=choice)
    error = validate_session(replaced, prefix="session.", session=session)  # the patch's tools win
    assert error is not None
    assert error.param == "session.tool_choice"
    assert validate_session(realtime(tool_choice="none"), prefix="session.", session=session) is None


def test_merge_patch_merges_objects_and_replaces_the_rest() -> None:
    base = default_session("sess_1", 0)
    patch = {
        "type": "realtime",
        "instructions": "New",
        "tools": [FUNCTION],
        "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 900}}},
    }
    before = copy.deepcopy(base)
    merged = merge_patch(base, patch)
    assert base == before  # inputs untouched
    assert merged["instructions"] == "New"
    assert merged["tools"] == [FUNCTION]
    turn = merged["audio"]["input"]["turn_detection"]
    assert turn["silence_duration_ms"] == 900
    assert turn["threshold"] == 0.5
    assert merged["audio"]["output"]["voice"] == "alloy"
    semantic = merge_patch(merged, {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    assert semantic["audio"]["input"]["turn_detection"] == {"type": "semantic_vad"}  # a new type replaces
    off = merge_patch(merged, {"audio": {"input": {"turn_detection": None}}})
    assert off["audio"]["input"]["turn_detection"] is None
    assert auto_response_enabled(merged)
    assert not auto_response_enabled(off)
    no_auto = merge_patch(merged, {"audio": {"input": {"turn_detection": {"create_response": False}}}})
    assert not auto_response_enabled(no_auto)


json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_obj = st.recursive(
    st.dictionaries(st.text(max_size=4), json_leaf, max_size=4),
    lambda inner: st.dictionaries(st.text(max_size=4), inner | json_leaf, max_size=4),
    max_leaves=12,
)


@given(json_obj, json_obj)
def test_merge_patch_keeps_every_patched_leaf(base: dict[str, Any], patch: dict[str, Any]) -> None:
    merged = merge_patch(base, patch)
    assert set(merged) == set(base) | set(patch)
    for key, value in patch.items():
        if not isinstance(value, dict):
            assert merged[key] == value
    assert merge_patch(merged, patch) == merged  # applying a patch twice changes nothing more


@pytest.mark.parametrize(
    ("patch", "state"),
    [
        pytest.param(realtime(), "clean", id="negotiated"),
        pytest.param(realtime(tools=[FUNCTION]), "static", id="tools-without-formats"),
        pytest.param(
            realtime(tools=[], audio={"input": {"format": PCMU}, "output": {"format": PCMU}}),
            "clean",
            id="tools-with-formats",
        ),
        pytest.param(realtime(audio={"output": {"format": {"type": "audio/pcma"}}}), "static", id="mismatch"),
        pytest.param(
            realtime(
                audio={
                    "input": {"format": {"type": "audio/pcma"}},
                    "output": {"format": {"type": "audio/pcma"}},
                }
            ),
            "clean",
            id="pcma-both",
        ),
    ],
)
def test_assess_audio(patch: dict[str, Any], state: str) -> None:
    effective = merge_patch(default_session("sess_1", 0), patch)
    assert assess_audio(patch, effective) == state


def test_audio_never_heals() -> None:
    assert worse("clean", "static") == "static"
    assert worse("static", "clean") == "static"
    assert worse("static", "broken") == "broken"
    assert worse("broken", "static") == "broken"


def test_durations_and_usage_are_plausible() -> None:
    assert caller_seconds("one two three") == pytest.approx(0.9)
    assert assistant_seconds("Hi") == 0.5
    assert assistant_seconds("one two three four") == pytest.approx(1.2)
    assert trim_words(" ".join(str(i) for i in range(40))).split() == [str(i) for i in range(30)]
    meter = UsageMeter()
    session = default_session("sess_1", 0)
    meter.caller_spoke("What are your hours", 1.2)
    first = meter.bill(session, out_text="Nine to five.", out_audio_seconds=0.9)
    assert first["output_token_details"] == {"text_tokens": 3, "audio_tokens": 18}
    assert first["input_token_details"]["audio_tokens"] == 12
    assert first["input_token_details"]["cached_tokens"] == 0
    meter.caller_spoke(" ".join(["word"] * 200), 60.0)
    second = meter.bill(session, out_text="Okay.", out_audio_seconds=0.5)
    details = second["input_token_details"]
    assert details["audio_tokens"] == 12 + 18 + 600  # earlier caller and assistant audio is billed again
    assert 0 <= details["cached_tokens_details"]["audio_tokens"] <= 12
    assert second["input_tokens"] == details["text_tokens"] + details["audio_tokens"]
    assert second["total_tokens"] == second["input_tokens"] + second["output_tokens"]


def _ended_call(**fields: Any) -> SimCall:
    spec = CallSpec(name="c", expect=Expectation(**fields.pop("expect")))
    call = SimCall(call_id="rtc_x", name="c", spec=spec, webhook_id="wh_x", event_id="evt_x", placed_at=0.0)
    for key, value in fields.items():
        setattr(call, key, value)
    return call


def test_check_expectations_reports_each_mismatch() -> None:
    expect = {
        "ended_reason": "agent_end_call",
        "ended_by": "agent",
        "accept_count": 1,
        "audio_state": "clean",
        "greeting_heard": True,
        "hangup_after_audio": True,
        "transcript_contains": ["goodbye"],
    }
    good = _ended_call(
        expect=expect,
        ended_by="agent",
        accept_count=1,
        greeting_heard=True,
        hangup_count=1,
        hangup_gap_s=0.02,
        last_audio_stopped_at=1.0,
        transcripts=[{"role": "assistant", "text": "Goodbye!", "t": 1.0}],
    )
    assert check_expectations(good) == []
    bad = _ended_call(expect=expect, ended_by="caller", accept_count=2, audio_state="static")
    problems = check_expectations(bad)
    assert len(problems) == 6
    for field_name in (
        "ended_by",
        "accept_count",
        "audio_state",
        "greeting_heard",
        "hangup_after_audio",
        "goodbye",
    ):
        assert any(field_name in problem for problem in problems), field_name
    assert not any("ended_reason" in problem for problem in problems)
    assert check_expectations(_ended_call(expect={"ended_by": "agent"}, ended_by="agent")) == []
    no_expect = SimCall(
        call_id="x", name="x", spec=CallSpec(name="x"), webhook_id="w", event_id="e", placed_at=0
    )
    assert check_expectations(no_expect) == []


def test_max_hangup_after_error() -> None:
    expect = {"max_hangup_after_error_s": 1.5}
    fast = _ended_call(expect=expect, first_error_at=2.0, hangup_at=3.0)
    assert fast.hangup_after_error_s == 1.0
    assert check_expectations(fast) == []
    exact = _ended_call(expect=expect, first_error_at=2.0, hangup_at=3.5)
    assert check_expectations(exact) == []
    slow = _ended_call(expect=expect, first_error_at=2.0, hangup_at=4.0)
    (problem,) = check_expectations(slow)
    assert "max_hangup_after_error_s" in problem
    assert "2.0" in problem
    no_hangup = _ended_call(expect=expect, first_error_at=2.0, ended_by="caller")
    assert no_hangup.hangup_after_error_s is None
    (problem,) = check_expectations(no_hangup)
    assert "no agent hangup" in problem
    no_error = _ended_call(expect=expect, hangup_at=4.0, ended_by="agent")
    assert no_error.hangup_after_error_s is None
    (problem,) = check_expectations(no_error)
    assert "no server error" in problem
    with pytest.raises(ValueError, match="greater than or equal"):
        Expectation(max_hangup_after_error_s=-1)


def test_simulator_refuses_a_negative_update_delay() -> None:
    with pytest.raises(ValueError, match="session_update_delay"):
        Simulator(webhook_secret=new_webhook_secret(), session_update_delay=-0.1)
