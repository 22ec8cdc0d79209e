"""Tests for sip_controller.agent.session: the accept body and session.update events sent to OpenAI."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.agent import session
from sip_controller.agent.validation import SIP_DEFERRED_VAD_FIELDS
from sip_controller.config import AgentProfile, Transcription, TurnDetection

Codec = Literal["pcmu", "pcma", "negotiated"]

GA_TOP_LEVEL_FIELDS = {
    "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice", "max_output_tokens",
    "truncation", "reasoning", "parallel_tool_calls", "tracing", "include",
}  # fmt: skip
BETA_FIELDS = {
    "voice", "modalities", "temperature", "input_audio_format", "output_audio_format",
    "input_audio_transcription", "turn_detection", "input_audio_noise_reduction", "max_response_output_tokens",
}  # fmt: skip


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key path, value) pair in a JSON-like object."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = f"{path}.{key}" if path else str(key)
            yield sub, value
            yield from walk(value, sub)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from walk(value, f"{path}[{i}]")


TUNED = TurnDetection(threshold=0.6, prefix_padding_ms=200, silence_duration_ms=700, idle_timeout_ms=8000)


# ---- accept body -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "mime"), [("pcmu", "audio/pcmu"), ("pcma", "audio/pcma")])
def test_accept_body_states_the_codec_on_both_sides(codec: Codec, mime: str) -> None:
    body = session.accept_body(AgentProfile(codec=codec))
    assert body["audio"]["input"]["format"] == {"type": mime}
    assert body["audio"]["output"]["format"] == {"type": mime}
    assert body["audio"]["input"]["format"] == body["audio"]["output"]["format"]
    # two separate objects: mutating one side never changes the other
    assert body["audio"]["input"]["format"] is not body["audio"]["output"]["format"]


def test_accept_body_does_not_share_the_codec_table() -> None:
    body = session.accept_body(AgentProfile(codec="pcmu"))
    body["audio"]["input"]["format"]["type"] = "mutated"
    body["audio"]["output"]["format"]["type"] = "mutated"
    assert session.CODEC_FORMATS["pcmu"] == {"type": "audio/pcmu"}
    assert session.accept_body(AgentProfile(codec="pcmu"))["audio"]["input"]["format"] == {"type": "audio/pcmu"}


def test_negotiated_codec_has_no_format_anywhere() -> None:
    body = session.accept_body(AgentProfile(codec="negotiated"))
    keys = [path for path, _ in walk(body)]
    assert not any(path.endswith("format") for path in keys), keys
    assert "format" not in json.dumps(body)
    assert session.audio_format(AgentProfile(codec="negotiated")) is None


def test_accept_body_shape_for_default_profile() -> None:
    profile = AgentProfile()
    body = session.accept_body(profile)
    assert body["type"] == "realtime"
    assert body["model"] == profile.model
    assert body["instructions"] == profile.instructions
    assert body["tool_choice"] == "auto"
    assert set(body) <= GA_TOP_LEVEL_FIELDS
    assert not set(body) & BETA_FIELDS
    assert body["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert body["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "create_response": True,
        "interrupt_response": True,
    }
    json.dumps(body)  # JSON-serialisable as is


def test_voice_lives_only_at_audio_output_voice() -> None:
    body = session.accept_body(AgentProfile(voice="cedar"))
    assert "voice" not in body
    assert body["audio"]["output"]["voice"] == "cedar"
    voice_paths = [path for path, _ in walk(body) if path.endswith("voice")]
    assert voice_paths == ["audio.output.voice"]


def test_accept_body_end_call_tool() -> None:
    body = session.accept_body(AgentProfile())
    tools_ = body["tools"]
    assert [t["name"] for t in tools_] == ["end_call"]
    tool = tools_[0]
    assert tool["type"] == "function"
    assert isinstance(tool["description"], str)
    assert tool["description"]
    assert "strict" not in tool
    params = tool["parameters"]
    assert params["type"] == "object"
    assert isinstance(params["properties"], dict)
    assert "reason" in params["properties"]


def test_accept_body_without_tools() -> None:
    body = session.accept_body(AgentProfile(tools=(), tool_choice="none"))
    # no `tools` key at all: an empty list still counts as "tools" for the static-audio trap
    assert "tools" not in body
    assert "tool_choice" not in body


def test_accept_body_transcription_and_vad_can_be_off() -> None:
    body = session.accept_body(AgentProfile(transcription=None, turn_detection=None))
    assert body["audio"]["input"]["transcription"] is None
    assert body["audio"]["input"]["turn_detection"] is None


def test_accept_body_transcription_fields() -> None:
    profile = AgentProfile(transcription=Transcription(model="whisper-1", language="de", prompt="Namen"))
    body = session.accept_body(profile)
    assert body["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "de", "prompt": "Namen"}


def test_vad_tuning_never_in_the_accept_body() -> None:
    body = session.accept_body(AgentProfile(turn_detection=TUNED))
    td = body["audio"]["input"]["turn_detection"]
    for name in SIP_DEFERRED_VAD_FIELDS:
        assert name not in td
    assert set(SIP_DEFERRED_VAD_FIELDS) == {"threshold", "prefix_padding_ms", "silence_duration_ms"}
    # automatic answers are held until the session.update carrying the tuning is confirmed
    assert td == {"type": "server_vad", "idle_timeout_ms": 8000, "create_response": False, "interrupt_response": True}
    patch = session.deferred_vad_patch(AgentProfile(turn_detection=TUNED))
    assert patch is not None
    assert patch["audio"]["input"]["turn_detection"]["create_response"] is True


@settings(max_examples=60, deadline=None)
@given(
    codec=st.sampled_from(["pcmu", "pcma", "negotiated"]),
    vad_type=st.sampled_from(["server_vad", "semantic_vad"]),
    threshold=st.none() | st.floats(0.0, 1.0),
    prefix=st.none() | st.integers(0, 2000),
    silence=st.none() | st.integers(0, 5000),
    idle=st.none() | st.integers(5000, 30000),
    eagerness=st.none() | st.sampled_from(["low", "medium", "high", "auto"]),
    transcribe=st.booleans(),
)
def test_accept_body_invariants(
    codec: Codec,
    vad_type: Literal["server_vad", "semantic_vad"],
    threshold: float | None,
    prefix: int | None,
    silence: int | None,
    idle: int | None,
    eagerness: Literal["low", "medium", "high", "auto"] | None,
    transcribe: bool,
) -> None:
    td = TurnDetection(
        type=vad_type,
        threshold=threshold,
        prefix_padding_ms=prefix,
        silence_duration_ms=silence,
        idle_timeout_ms=idle,
        eagerness=eagerness,
    )
    profile = AgentProfile(codec=codec, turn_detection=td, transcription=Transcription() if transcribe else None)
    body = session.accept_body(profile)
    assert body["type"] == "realtime"
    assert "voice" not in body
    paths = dict(walk(body))
    # never a null format, never a VAD tuning field, no beta fields
    assert not any(p.endswith("format") and v is None for p, v in paths.items())
    for p in paths:
        assert p.rsplit(".", 1)[-1] not in SIP_DEFERRED_VAD_FIELDS, p
    assert not set(body) & BETA_FIELDS
    fmt_in = body["audio"]["input"].get("format")
    fmt_out = body["audio"]["output"].get("format")
    assert fmt_in == fmt_out
    assert (fmt_in is None) == (codec == "negotiated")
    out_td = body["audio"]["input"]["turn_detection"]
    if vad_type == "semantic_vad":
        assert "idle_timeout_ms" not in out_td
    else:
        assert "eagerness" not in out_td


def test_semantic_vad_drops_idle_timeout() -> None:
    td = TurnDetection(type="semantic_vad", idle_timeout_ms=6000, eagerness="high", threshold=0.3)
    body = session.accept_body(AgentProfile(turn_detection=td))
    assert body["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
        "interrupt_response": True,
    }
    assert session.deferred_vad_patch(AgentProfile(turn_detection=td)) is None


def test_server_vad_drops_eagerness() -> None:
    td = TurnDetection(type="server_vad", eagerness="low")
    body = session.accept_body(AgentProfile(turn_detection=td))
    assert "eagerness" not in body["audio"]["input"]["turn_detection"]


# ---- deferred VAD patch ------------------------------------------------------------------------------------


def test_deferred_vad_patch_carries_the_tuning() -> None:
    patch = session.deferred_vad_patch(AgentProfile(turn_detection=TUNED))
    assert patch == {
        "audio": {
            "input": {
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.6,
                    "prefix_padding_ms": 200,
                    "silence_duration_ms": 700,
                    "idle_timeout_ms": 8000,
                    "create_response": True,
                    "interrupt_response": True,
                }
            }
        }
    }


def test_deferred_vad_patch_only_the_set_fields() -> None:
    patch = session.deferred_vad_patch(AgentProfile(turn_detection=TurnDetection(silence_duration_ms=600)))
    assert patch is not None
    td = patch["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 600
    assert "threshold" not in td
    assert "prefix_padding_ms" not in td
    assert td["type"] == "server_vad"


def test_no_deferred_patch_without_tuning() -> None:
    assert session.deferred_vad_patch(AgentProfile()) is None
    assert session.deferred_vad_patch(AgentProfile(turn_detection=None)) is None


# ---- session.update ----------------------------------------------------------------------------------------


def test_session_update_with_tools_restates_the_codec() -> None:
    profile = AgentProfile(codec="pcmu")
    tool = {"type": "function", "name": "end_call", "description": "x", "parameters": {"type": "object"}}
    event = session.session_update(profile, {"tools": [tool]}, event_id="evt_1")
    assert event["type"] == "session.update"
    assert event["event_id"] == "evt_1"
    s = event["session"]
    assert s["type"] == "realtime"
    assert s["tools"] == [tool]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcmu"}


def test_session_update_keeps_other_audio_fields_and_pins_the_profile_codec() -> None:
    profile = AgentProfile(codec="pcma")
    patch: dict[str, Any] = {
        "audio": {
            "input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}, "format": {"type": "audio/pcmu"}},
            "output": {"voice": "cedar"},
        }
    }
    before = copy.deepcopy(patch)
    s = session.session_update(profile, patch, event_id="e")["session"]
    assert s["type"] == "realtime"
    assert s["audio"]["input"]["turn_detection"] == {"type": "server_vad", "threshold": 0.7}
    assert s["audio"]["output"]["voice"] == "cedar"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcma"}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcma"}
    assert patch == before  # the caller's patch is not mutated


def test_session_update_negotiated_adds_no_format() -> None:
    event = session.session_update(AgentProfile(codec="negotiated"), {"instructions": "hi"}, event_id="e")
    assert event["session"] == {"type": "realtime", "instructions": "hi"}


def test_session_update_of_deferred_patch() -> None:
    profile = AgentProfile(turn_detection=TUNED)
    patch = session.deferred_vad_patch(profile)
    assert patch is not None
    s = session.session_update(profile, patch, event_id="e")["session"]
    assert s["type"] == "realtime"
    assert s["audio"]["input"]["turn_detection"]["threshold"] == 0.6
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcmu"}


_json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
_side = st.dictionaries(st.sampled_from(["format", "voice", "turn_detection", "transcription"]), _json_leaf, max_size=3)
_audio = st.fixed_dictionaries({}, optional={"input": _side, "output": _side})
_patches = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["realtime", "transcription"]) | st.none(),
        "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": st.text(max_size=5)})),
        "instructions": st.text(max_size=10),
        "tool_choice": st.sampled_from(["auto", "none"]),
        "audio": _audio,
    },
)


@settings(max_examples=80, deadline=None)
@given(codec=st.sampled_from(["pcmu", "pcma", "negotiated"]), patch=_patches)
def test_session_update_is_always_type_realtime(codec: Codec, patch: dict[str, Any]) -> None:
    profile = AgentProfile(codec=codec)
    s = session.session_update(profile, patch, event_id="e")["session"]
    assert s["type"] == "realtime"
    fmt = session.audio_format(profile)
    if fmt is not None:
        assert s["audio"]["input"]["format"] == fmt
        assert s["audio"]["output"]["format"] == fmt
    for key in ("tools", "instructions", "tool_choice"):
        if key in patch:
            assert s[key] == patch[key]


def test_session_update_type_cannot_be_overridden_by_the_patch() -> None:
    """A patch copied from a session object (or built wrongly) must not replace ``type: realtime``."""
    event = session.session_update(AgentProfile(), {"type": None, "instructions": "x"}, event_id="e")
    assert event["session"]["type"] == "realtime"
    assert event["session"]["instructions"] == "x"


def test_accept_bodies_are_built_once_per_profile_and_copied_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # an empty cache: earlier tests fill the bounded one (1,024 profiles), and a full cache keeps nothing new
    monkeypatch.setattr(session, "_BODY_CACHE", {})
    profile = AgentProfile(instructions="Base instructions.")
    first = session.accept_body(profile, instructions="For caller one.")
    second = session.accept_body(profile, instructions="For caller two.")
    plain = session.accept_body(profile)
    assert (first["instructions"], second["instructions"], plain["instructions"]) == (
        "For caller one.", "For caller two.", "Base instructions.")
    assert first is not second
    assert first["audio"] is second["audio"]  # the shared, read-only part
    assert first["audio"]["output"]["format"] == {"type": "audio/pcmu"}
