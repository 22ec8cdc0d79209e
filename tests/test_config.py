"""Tests for sip_controller.config: YAML under SIPCTL_* env, readable ConfigErrors, secrets from env only."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pydantic
import pytest

from sip_controller.agent.preflight import load_checked
from sip_controller.agent.validation import GA_VOICES
from sip_controller.config import (
    DEFAULT_BASE_URL,
    AgentProfile,
    ConfigError,
    Limits,
    Secrets,
    Settings,
    TurnDetection,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray SIPCTL_*/OPENAI_* variables, and a working directory without config/sipctl.yaml."""
    for name in list(os.environ):
        if name.upper().startswith(("SIPCTL_", "OPENAI_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def write_yaml(tmp_path: Path, text: str, name: str = "sipctl.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    """Every problem the full load (types and the session preflight) reports for the file."""
    with pytest.raises(ConfigError) as info:
        load_checked(path)
    return info.value.problems


def the_problem(problems: list[str], needle: str) -> str:
    """The single problem line mentioning ``needle``."""
    hits = [p for p in problems if needle in p]
    assert len(hits) == 1, problems
    return hits[0]


# ---- defaults and sources --------------------------------------------------------------------------------


def test_defaults_load_without_any_file() -> None:
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.default_profile == "default"
    assert set(settings.profiles) == {"default"}
    profile = settings.profile()
    assert profile == AgentProfile()
    assert profile.model == "gpt-realtime-2.1"
    assert profile.voice == "marin"
    assert profile.codec == "pcmu"
    assert profile.tools == ("end_call",)
    assert settings.limits == Limits()
    assert settings.limits.max_concurrent_calls == 100


def test_default_config_path_is_used_when_present(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    write_yaml(tmp_path / "config", "port: 9001\n")
    assert load_settings().port == 9001


def test_sipctl_config_env_points_at_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, "port: 9002\n", name="elsewhere.yaml")
    monkeypatch.setenv("SIPCTL_CONFIG", str(path))
    assert load_settings().port == 9002


def test_yaml_file_is_loaded(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
host: 0.0.0.0
port: 8080
log_level: debug
default_profile: sales
profiles:
  sales:
    voice: cedar
    codec: pcma
    instructions: Sell things politely.
    greeting: null
    turn_detection:
      type: semantic_vad
      eagerness: high
    transcription: null
  support:
    codec: negotiated
    instructions: Help callers.
limits:
  max_concurrent_calls: 7
  hangup_close_wait_s: 1.5
""",
    )
    settings = load_settings(path)
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.log_level == "debug"
    assert settings.default_profile == "sales"
    sales = settings.profile()
    assert sales.voice == "cedar"
    assert sales.codec == "pcma"
    assert sales.instructions == "Sell things politely."
    assert sales.greeting is None
    assert sales.transcription is None
    assert sales.turn_detection == TurnDetection(type="semantic_vad", eagerness="high")
    assert settings.profile("support").codec == "negotiated"
    assert settings.limits.max_concurrent_calls == 7
    assert settings.limits.hangup_close_wait_s == 1.5
    # untouched limits keep their defaults
    assert settings.limits.recent_calls == Limits().recent_calls


def test_example_config_in_the_repo_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "sipctl.example.yaml"
    settings = load_settings(example)
    assert settings.default_profile in settings.profiles


def test_env_overrides_beat_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(
        tmp_path,
        """
port: 8080
profiles:
  default:
    voice: marin
    instructions: From the YAML file.
limits:
  max_concurrent_calls: 50
  recent_calls: 10
""",
    )
    monkeypatch.setenv("SIPCTL_PORT", "9999")
    monkeypatch.setenv("SIPCTL_LIMITS__MAX_CONCURRENT_CALLS", "200")
    monkeypatch.setenv("SIPCTL_PROFILES__DEFAULT__VOICE", "cedar")
    settings = load_settings(path)
    assert settings.port == 9999
    assert settings.limits.max_concurrent_calls == 200
    assert settings.limits.recent_calls == 10  # nested env merges into the YAML, not over it
    profile = settings.profile("default")
    assert profile.voice == "cedar"
    assert profile.instructions == "From the YAML file."


def test_env_overrides_without_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPCTL_LIMITS__MAX_CONCURRENT_CALLS", "3")
    monkeypatch.setenv("SIPCTL_PROFILES__DEFAULT__VOICE", "sage")
    settings = load_settings()
    assert settings.limits.max_concurrent_calls == 3
    assert settings.profile().voice == "sage"


def test_invalid_env_override_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPCTL_LIMITS__MAX_CONCURRENT_CALLS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    line = the_problem(info.value.problems, "limits.max_concurrent_calls")
    assert "greater than or equal to 1" in line


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError):
        settings.port = 1  # type: ignore[misc]


def test_init_arguments_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPCTL_PORT", "9999")
    assert Settings(port=1234).port == 1234


# ---- problems: one readable line each, field path and fix ------------------------------------------------


def test_beta_temperature_names_path_and_fix(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "profiles:\n  default:\n    temperature: 0.8\n")
    line = the_problem(problems_of(path), "temperature")
    assert line.startswith("profiles.default.temperature:")
    assert "removed" in line
    assert "delete it" in line


def test_beta_modalities_points_at_output_modalities(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "profiles:\n  default:\n    modalities: [audio, text]\n")
    line = the_problem(problems_of(path), "modalities")
    assert line.startswith("profiles.default.modalities:")
    assert "output_modalities" in line


def test_beta_audio_format_points_at_codec(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "profiles:\n  default:\n    output_audio_format: g711_ulaw\n")
    line = the_problem(problems_of(path), "output_audio_format")
    assert line.startswith("profiles.default.output_audio_format:")
    assert "codec" in line


def test_unknown_voice(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "profiles:\n  default:\n    voice: nova\n")
    line = the_problem(problems_of(path), "voice")
    assert line.startswith("profiles.default.voice:")
    assert "'nova'" in line
    for voice in GA_VOICES:
        assert voice in line


def test_custom_voice_id_is_allowed() -> None:
    assert AgentProfile(voice="voice_abc123").voice == "voice_abc123"


def test_bad_codec(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "profiles:\n  default:\n    codec: g711_ulaw\n")
    line = the_problem(problems_of(path), "codec")
    assert line.startswith("profiles.default.codec:")
    assert "'g711_ulaw'" in line
    for codec in ("pcmu", "pcma", "negotiated"):
        assert codec in line


def test_unknown_tool(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "profiles:\n  default:\n    tools: [end_call, web_search]\n")
    line = the_problem(problems_of(path), "tools")
    assert line.startswith("profiles.default.tools:")
    assert "web_search" in line
    assert "available: end_call" in line


def test_duplicate_tool() -> None:
    with pytest.raises(pydantic.ValidationError, match="once"):
        AgentProfile(tools=("end_call", "end_call"))


@pytest.mark.parametrize("yaml_value", ['""', '"   \\n  "'])
def test_empty_instructions(tmp_path: Path, yaml_value: str) -> None:
    path = write_yaml(tmp_path, f"profiles:\n  default:\n    instructions: {yaml_value}\n")
    line = the_problem(problems_of(path), "instructions")
    assert line.startswith("profiles.default.instructions:")
    assert "non-empty" in line
    assert "Value error" not in line


def test_unknown_default_profile(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "default_profile: sales\nprofiles:\n  support:\n    voice: ash\n")
    line = the_problem(problems_of(path), "default_profile")
    assert "'sales'" in line
    assert "support" in line


def test_no_profiles_at_all(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "profiles: {}\n")
    line = the_problem(problems_of(path), "profiles")
    assert "at least one agent profile" in line


@pytest.mark.parametrize(
    ("yaml_text", "path_prefix", "env_name"),
    [
        ("openai_api_key: sk-123\n", "openai_api_key:", "OPENAI_API_KEY"),
        ("openai_webhook_secret: whsec_abc\n", "openai_webhook_secret:", "OPENAI_WEBHOOK_SECRET"),
        ("profiles:\n  default:\n    api_key: sk-123\n", "profiles.default.api_key:", "OPENAI_API_KEY"),
    ],
)
def test_secret_in_yaml_is_refused(tmp_path: Path, yaml_text: str, path_prefix: str, env_name: str) -> None:
    path = write_yaml(tmp_path, yaml_text)
    problems = problems_of(path)
    line = the_problem(problems, path_prefix)
    assert line.startswith(path_prefix)
    assert env_name in line
    assert "environment" in line
    # the secret value itself is not echoed back
    assert not any("sk-123" in p or "whsec_abc" in p for p in problems)


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "limits:\n  max_calls: 5\n")
    line = the_problem(problems_of(path), "max_calls")
    assert line.startswith("limits.max_calls:")
    assert "unknown field" in line


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    line = the_problem(problems_of(missing), "nope.yaml")
    assert "does not exist" in line


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "profiles:\n  default: [unclosed\n")
    line = the_problem(problems_of(path), "not valid YAML")
    assert str(path) in line


def test_yaml_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- a\n- b\n")
    line = the_problem(problems_of(path), "mapping")
    assert "list" in line


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "")
    assert load_settings(path).profile() == AgentProfile()


def test_all_field_problems_are_reported(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
port: 70000
profiles:
  default:
    temperature: 0.7
    modalities: [audio]
    voice: nova
    codec: ulaw
    tools: [web_search]
    instructions: "  "
""",
    )
    problems = problems_of(path)
    for field in ("port", "temperature", "modalities", "voice", "codec", "tools", "instructions"):
        the_problem(problems, field)
    assert len(problems) == 7
    err = ConfigError(problems)
    for p in problems:
        assert p in str(err)


def test_unknown_default_profile_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    """All problems are reported at once, not the first batch only (fix one, rerun, find the next)."""
    path = write_yaml(
        tmp_path,
        "default_profile: sales\nprofiles:\n  support:\n    voice: nova\n",
    )
    problems = problems_of(path)
    the_problem(problems, "profiles.support.voice")
    the_problem(problems, "default_profile")


# ---- secrets -----------------------------------------------------------------------------------------------

SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


def test_secrets_from_env_defaults() -> None:
    secrets = Secrets.from_env({})
    assert secrets.openai_api_key is None
    assert secrets.webhook_secrets == ()
    assert secrets.openai_base_url == DEFAULT_BASE_URL == "https://api.openai.com/v1"


def test_secrets_from_env_reads_everything() -> None:
    secrets = Secrets.from_env(
        {
            "OPENAI_API_KEY": " sk-test \n",
            "OPENAI_WEBHOOK_SECRET": SECRET_A,
            "OPENAI_BASE_URL": "http://127.0.0.1:9000/v1/",
        }
    )
    assert secrets.openai_api_key is not None
    assert secrets.openai_api_key.get_secret_value() == "sk-test"
    assert [s.get_secret_value() for s in secrets.webhook_secrets] == [SECRET_A]
    assert secrets.openai_base_url == "http://127.0.0.1:9000/v1"
    assert "sk-test" not in repr(secrets)
    assert SECRET_A not in repr(secrets)


def test_secrets_from_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proc")
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET_B)
    secrets = Secrets.from_env()
    assert secrets.openai_api_key is not None
    assert secrets.openai_api_key.get_secret_value() == "sk-proc"
    assert [s.get_secret_value() for s in secrets.webhook_secrets] == [SECRET_B]


def test_webhook_secrets_comma_separated_for_rotation() -> None:
    secrets = Secrets.from_env({"OPENAI_WEBHOOK_SECRET": f" {SECRET_A} , {SECRET_B},,"})
    assert [s.get_secret_value() for s in secrets.webhook_secrets] == [SECRET_A, SECRET_B]


def test_webhook_secret_without_prefix_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Secrets.from_env({"OPENAI_WEBHOOK_SECRET": f"{SECRET_A},MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    line = the_problem(info.value.problems, "OPENAI_WEBHOOK_SECRET")
    assert "#2" in line
    assert "whsec_" in line
    assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in str(info.value)


def test_bad_base_url_and_bad_secret_are_both_reported() -> None:
    with pytest.raises(ConfigError) as info:
        Secrets.from_env({"OPENAI_BASE_URL": "api.openai.com/v1", "OPENAI_WEBHOOK_SECRET": "nope"})
    the_problem(info.value.problems, "OPENAI_BASE_URL")
    the_problem(info.value.problems, "OPENAI_WEBHOOK_SECRET")


def test_blank_base_url_means_default() -> None:
    assert Secrets.from_env({"OPENAI_BASE_URL": "   "}).openai_base_url == DEFAULT_BASE_URL


def test_require_for_serving_lists_what_is_missing() -> None:
    with pytest.raises(ConfigError) as info:
        Secrets.from_env({}).require_for_serving()
    assert len(info.value.problems) == 2
    the_problem(info.value.problems, "OPENAI_API_KEY")
    the_problem(info.value.problems, "OPENAI_WEBHOOK_SECRET")

    with pytest.raises(ConfigError) as info:
        Secrets.from_env({"OPENAI_API_KEY": "sk-x"}).require_for_serving()
    assert len(info.value.problems) == 1
    the_problem(info.value.problems, "OPENAI_WEBHOOK_SECRET")


def test_require_for_serving_passes_with_key_and_secret() -> None:
    secrets = Secrets.from_env({"OPENAI_API_KEY": "sk-x", "OPENAI_WEBHOOK_SECRET": SECRET_A})
    secrets.require_for_serving()
    assert secrets.openai_api_key is not None


# ---- one validation, one path style (issue 14, item 13) ------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "field", "fix"),
    [
        ("routes:\n  - {profile: default, dialed: ['18005550100']}\n", "routes[0].dialed[0]", "'+18005550100'"),
        ("routes:\n  - {profile: default, dialed: ['+1800*', '0800*']}\n", "routes[0].dialed[1]", "country code"),
        ("callers:\n  deny: ['1900*']\n", "callers.deny[0]", "'+1900*'"),
    ],
)
def test_a_number_pattern_without_plus_can_never_match_and_is_refused(
    tmp_path: Path, yaml_text: str, field: str, fix: str
) -> None:
    line = the_problem(problems_of(write_yaml(tmp_path, yaml_text)), field)
    assert line.startswith(f"{field}: ")
    assert "never match" in line
    assert fix in line


def test_a_pattern_that_can_never_match_and_a_mistyped_one_are_both_reported(tmp_path: Path) -> None:
    """Every problem in one run: the type error on one entry does not hide the pattern error on another."""
    found = problems_of(write_yaml(tmp_path, "callers:\n  allow: ['18005550100', 5]\n"))
    never = the_problem(found, "callers.allow[0]")
    assert never.startswith("callers.allow[0]: ")
    assert "never match" in never
    assert "'+18005550100'" in never
    assert the_problem(found, "callers.allow[1]").startswith("callers.allow[1]: Input should be a valid string")


TWO_BAD_TOOLS = """\
profiles:
  default:
    tools:
      - end_call
      - {type: http, name: lookup, description: Look up an order, url: "https://tools.example.com", timeout_s: 0}
      - {type: python, name: book, description: Book a slot, handler: "not a handler"}
"""


def test_errors_inside_http_and_python_tools_keep_their_index_and_every_bad_tool_is_reported(
    tmp_path: Path,
) -> None:
    found = problems_of(write_yaml(tmp_path, TWO_BAD_TOOLS))
    timeout = the_problem(found, "timeout_s")
    assert timeout.startswith("profiles.default.tools[1].timeout_s: "), found
    handler = the_problem(found, "handler")
    assert handler.startswith("profiles.default.tools[2].handler: "), found
    assert "package.module:function" in handler


def test_wildcard_patterns_still_match_everything(tmp_path: Path) -> None:
    settings, _ = load_checked(write_yaml(tmp_path, "callers:\n  deny: ['*']\n  allow: ['?1415*']\n"))
    assert settings.callers.deny == ("*",)


def test_dedupe_ttl_below_the_signature_tolerance_is_refused(tmp_path: Path) -> None:
    from sip_controller.service.intake import TOLERANCE_S

    line = the_problem(problems_of(write_yaml(tmp_path, "limits:\n  dedupe_ttl_s: 299\n")), "dedupe_ttl_s")
    assert line.startswith("limits.dedupe_ttl_s: ")
    assert f"at least {TOLERANCE_S}" in line
    assert "replay" in line
    assert "(got 299)" in line
    assert load_settings(write_yaml(tmp_path, f"limits:\n  dedupe_ttl_s: {TOLERANCE_S}\n")).limits.dedupe_ttl_s == 300


def test_list_positions_are_written_in_brackets_everywhere(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "routes:\n  - {profile: nope, dialed: ['+1800*']}\n  - {profile: default, header: Foo, values: [a]}\n"
        "profiles:\n  default:\n    tools: [end_call, {type: web_search}]\n",
    )
    found = problems_of(path)
    assert found
    for problem in found:
        where = problem.split(": ", 1)[0]
        assert not re.search(r"\.\d", where), problem


def test_a_validator_message_that_names_the_value_is_not_followed_by_it_again(tmp_path: Path) -> None:
    line = the_problem(problems_of(write_yaml(tmp_path, "routes:\n  - {profile: default, dialed: [abc]}\n")), "abc")
    assert line.count("abc") == 1, line


# ---- where a value came from (issue 14, item 15) ---------------------------------------------------------------


def test_an_environment_override_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPCTL_LIMITS__MAX_CONCURRENT_CALLS", "abc")
    with pytest.raises(ConfigError) as info:
        load_settings()
    (line,) = info.value.problems
    assert line.startswith("SIPCTL_LIMITS__MAX_CONCURRENT_CALLS (limits.max_concurrent_calls): ")


def test_a_json_environment_override_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPCTL_ROUTES", '[{"profile": "default", "dialed": ["+1800*"], "extra": 1}]')
    with pytest.raises(ConfigError) as info:
        load_settings()
    (line,) = info.value.problems
    assert line.startswith("SIPCTL_ROUTES (routes[0].extra): unknown field")


def test_a_yaml_value_beside_a_json_environment_override_is_named_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIPCTL_LIMITS", '{"recent_calls": 5}')
    with pytest.raises(ConfigError) as info:
        load_settings(write_yaml(tmp_path, "limits:\n  max_concurrent_calls: abc\n"))
    (line,) = info.value.problems
    assert line.startswith("limits.max_concurrent_calls: ")


def test_a_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "port: 1\nprofiles:\n  default:\n    voice: [marin\n")
    (line,) = problems_of(path)
    assert "\n" not in line
    assert re.match(rf"^{re.escape(str(path))}:4:\d+: ", line), line


def test_an_explicit_missing_path_is_named_as_the_config_option(tmp_path: Path) -> None:
    (line,) = problems_of(tmp_path / "nope.yaml")
    assert line.startswith("--config: ")
