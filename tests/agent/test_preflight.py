"""Preflight: every profile's exact accept body and deferred update are checked, problems point at the config."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip_controller.agent import session
from sip_controller.agent.preflight import check_profile, config_path, load_checked, notes
from sip_controller.agent.validation import GA_VOICES
from sip_controller.config import AgentProfile, ConfigError, Settings, TurnDetection
from sip_controller.simulator.rules import assess_audio, merge_patch, validate_session

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 11, 22)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sipctl.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, today: date = TODAY) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_checked(path, today=today)
    return info.value.problems


def test_the_broken_example_reports_every_trap_at_once() -> None:
    found = problems(ROOT / "config" / "examples" / "broken.yaml")
    expected_paths = [
        "profiles.support.instructions: uses {{header:X-Customer-Name}}",
        "profiles.support.instructions: unknown placeholder {{their_problem}}",
        "profiles.support.session.temperature:",
        "profiles.support.session.modalities:",
        "profiles.support.session.voice:",
        "profiles.support.session.input_audio_format:",
        "profiles.support.model:",
        "profiles.support.codec:",
        "profiles.support.voice:",
        "profiles.support.speed:",
        "profiles.support.turn_detection.idle_timeout_ms:",
        "profiles.support.tools[1].type:",
        "profiles.support.tools[2].name:",
        "profiles.support.tools[2].description:",
        "profiles.support.tools[2].strict:",
        "profiles.support.tools[2].parameters:",
        "profiles.support.tool_choice.name:",
        "profiles.support.reasoning_effort:",
    ]
    for prefix in expected_paths:
        assert sum(p.startswith(prefix) for p in found) == 1, (prefix, found)
    assert len(found) == len(expected_paths)


def test_the_example_config_passes_with_a_note_about_deferred_vad() -> None:
    settings, warnings = load_checked(ROOT / "config" / "sipctl.example.yaml", today=TODAY)
    assert warnings == []
    assert any("session.update" in n for n in notes(settings))


def test_type_errors_and_session_rules_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  default:\n    codec: ulaw\n    voice: nova\n    speed: 9\n")
    found = problems(path)
    assert [p.split(":", 1)[0] for p in found] == [
        "profiles.default.codec",
        "profiles.default.voice",
        "profiles.default.speed",
    ]


def test_session_block_problems_point_into_the_session_block(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  default:\n    session:\n      audio: {output: {voice: robot}}\n")
    (line,) = problems(path)
    assert line.startswith("profiles.default.session.audio.output.voice: unknown voice 'robot'")


def test_retiring_model_warns_before_its_shutdown_and_fails_after(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  default:\n    model: gpt-realtime\n")
    _, warnings = load_checked(path, today=date(2027, 1, 19))
    assert [str(w) for w in warnings] == [
        "profiles.default.model: 'gpt-realtime' shuts down on 2027-01-20; move to gpt-realtime-2.1"
    ]
    assert problems(path, today=date(2027, 1, 20)) == [
        "profiles.default.model: 'gpt-realtime' was shut down on 2027-01-20; use gpt-realtime-2.1"
    ]


def test_stored_prompt_warns_until_its_shutdown(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  default:\n    prompt: {id: pmpt_123}\n")
    _, warnings = load_checked(path, today=date(2026, 11, 29))
    assert [w.path for w in warnings] == ["profiles.default.prompt"]
    assert "2026-11-30" in warnings[0].message
    (line,) = problems(path, today=date(2026, 11, 30))
    assert line.startswith("profiles.default.prompt: stored prompts were shut down on 2026-11-30")


def test_function_tool_without_a_handler_is_a_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "profiles:\n  default:\n    tools:\n      - end_call\n"
        "      - {type: function, name: lookup, description: Look up an order, "
        "parameters: {type: object, properties: {id: {type: string}}}}\n",
    )
    _, warnings = load_checked(path, today=TODAY)
    assert [w.path for w in warnings] == ["profiles.default.tools[1]"]
    assert "no handler" in warnings[0].message


def test_negotiated_codec_with_tools_is_refused_and_without_tools_is_fine() -> None:
    with_tools = check_profile("p", AgentProfile(codec="negotiated"), TODAY)
    assert [(f.path, f.severity) for f in with_tools] == [("profiles.p.tools", "error")]
    assert check_profile("p", AgentProfile(codec="negotiated", tools=()), TODAY) == []


def test_vad_on_accept_sends_tuning_on_accept_and_nothing_later() -> None:
    profile = AgentProfile(turn_detection=TurnDetection(threshold=0.6), vad_on_accept=True)
    assert session.accept_body(profile)["audio"]["input"]["turn_detection"]["threshold"] == 0.6
    assert session.deferred_vad_patch(profile) is None
    assert check_profile("p", profile, TODAY) == []


def test_instruction_template_with_allowed_header_passes() -> None:
    profile = AgentProfile(instructions="Customer {{ header:X-Customer-Id }}.", template_headers=("x-customer-id",))
    assert check_profile("p", profile, TODAY) == []


@pytest.mark.parametrize(
    ("body_path", "expected"),
    [
        ("audio.output.voice", "profiles.p.voice"),
        ("audio.input.format.type", "profiles.p.codec"),
        ("audio.output.format", "profiles.p.codec"),
        ("audio.input.turn_detection.idle_timeout_ms", "profiles.p.turn_detection.idle_timeout_ms"),
        ("tools[2].name", "profiles.p.tools[2].name"),
        ("reasoning.effort", "profiles.p.reasoning_effort"),
        ("temperature", "profiles.p.session.temperature"),
    ],
)
def test_config_path_maps_body_paths_back_to_profile_fields(body_path: str, expected: str) -> None:
    assert config_path("p", AgentProfile(), body_path) == expected


def test_config_path_prefers_the_session_block_when_it_wrote_the_value() -> None:
    profile = AgentProfile(session={"audio": {"output": {"voice": "ash"}}, "tools": [{"type": "mcp"}]})
    assert config_path("p", profile, "audio.output.voice") == "profiles.p.session.audio.output.voice"
    assert config_path("p", profile, "tools[0].server_label") == "profiles.p.session.tools[0].server_label"
    assert config_path("p", profile, "audio.output.speed") == "profiles.p.speed"


def test_settings_level_problems_use_settings_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "default_profile: nope\nprofiles:\n  a: {voice: nova}\n")
    found = problems(path)
    assert any(p.startswith("default_profile: 'nope' is not a profile") for p in found)
    assert any(p.startswith("profiles.a.voice: unknown voice 'nova'") for p in found)


# ---- the property: what passes preflight, the OpenAI stand-in takes without static ------------------------

MCP_TOOL: dict[str, Any] = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://mcp.example.com/sse",
    "require_approval": "never",
}

profiles = st.builds(
    AgentProfile,
    model=st.sampled_from(["gpt-realtime-2.1", "gpt-realtime-2.1-mini", "gpt-realtime-2", "gpt-realtime-1.5"]),
    voice=st.sampled_from([*GA_VOICES, "voice_custom123"]),
    speed=st.none() | st.floats(0.1, 2.0),
    codec=st.sampled_from(["pcmu", "pcma", "negotiated", "pcm"]),
    tools=st.sampled_from([(), ("end_call",), ("end_call", MCP_TOOL), (MCP_TOOL,)]),
    turn_detection=st.none()
    | st.builds(
        TurnDetection,
        type=st.sampled_from(["server_vad", "semantic_vad"]),
        threshold=st.none() | st.floats(-0.5, 1.5),
        silence_duration_ms=st.none() | st.integers(0, 2000),
        idle_timeout_ms=st.none() | st.integers(1000, 40000),
        eagerness=st.none() | st.sampled_from(["low", "auto", "eager"]),
    ),
    noise_reduction=st.none() | st.sampled_from(["near_field", "far_field"]),
    max_output_tokens=st.none() | st.integers(-5, 5000) | st.just("inf"),
    reasoning_effort=st.none() | st.sampled_from(["low", "high", "extreme"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=profiles)
def test_any_profile_that_passes_preflight_is_taken_by_the_simulator_without_static(profile: AgentProfile) -> None:
    findings = check_profile("p", profile, TODAY)
    if any(f.severity == "error" for f in findings):
        return
    body = session.accept_body(profile)
    assert validate_session(body, reject_vad_tuning=True) is None
    effective = dict(body)
    assert assess_audio(body, effective) == "clean"
    patch = session.deferred_vad_patch(profile)
    if patch is not None:
        update = session.session_patch(profile, patch)
        assert validate_session(update, prefix="session.", session=effective) is None
        effective = merge_patch(effective, update)
        assert assess_audio(update, effective) == "clean"


def test_the_property_is_not_vacuous() -> None:
    """The default profile and a tuned one pass: the property above really checks real bodies."""
    for profile in (AgentProfile(), AgentProfile(turn_detection=TurnDetection(threshold=0.4))):
        assert check_profile("p", profile, TODAY) == []
    assert Settings().profiles["default"] == AgentProfile()


# ---- what OpenAI really allows (issue 15) ----------------------------------------------------------------------


def test_a_max_duration_past_58_minutes_is_refused_naming_the_field_the_value_and_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  default:\n    watchdogs: {max_duration_s: 3590}\n")
    (line,) = problems(path)
    assert line.startswith("profiles.default.watchdogs.max_duration_s: ")
    assert "3590" in line  # the value
    assert "60 minutes" in line  # why
    assert "at most 3480" in line  # the fix
    ok = write(tmp_path, "profiles:\n  default:\n    watchdogs: {max_duration_s: 3480}\n")
    settings, _ = load_checked(ok, today=TODAY)
    assert settings.profile().watchdogs.max_duration_s == 3480


def test_a_max_duration_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIPCTL_PROFILES__DEFAULT__WATCHDOGS__MAX_DURATION_S", "7200")
    (line,) = problems(write(tmp_path, "profiles:\n  default: {}\n"))
    variable, path = "SIPCTL_PROFILES__DEFAULT__WATCHDOGS__MAX_DURATION_S", "profiles.default.watchdogs.max_duration_s"
    assert line.startswith(f"{variable} ({path}): ")
    assert "7200" in line


def test_hold_mode_without_caller_transcription_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  default:\n    tools: [end_call, wait_on_hold]\n    transcription: null\n")
    (line,) = problems(path)
    assert line.startswith("profiles.default.transcription: ")
    assert "wait_on_hold" in line
    assert "gpt-4o-mini-transcribe" in line  # the fix


def test_hold_mode_with_transcription_turned_off_in_the_session_block_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "profiles:\n  default:\n    tools: [end_call, wait_on_hold]\n"
        "    session: {audio: {input: {transcription: null}}}\n",
    )
    (line,) = problems(path)
    assert line.startswith("profiles.default.session.audio.input.transcription: ")
    assert "wait_on_hold" in line


def test_transcription_off_without_hold_mode_is_fine() -> None:
    assert check_profile("p", AgentProfile(transcription=None), TODAY) == []
    with_hold = AgentProfile(tools=("end_call", "wait_on_hold"))
    assert check_profile("p", with_hold, TODAY) == []
