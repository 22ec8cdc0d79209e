"""Twilio's contracts in the environment: TWILIO_*, OPENAI_PROJECT_ID, SIPCTL_PUBLIC_URL, and the twilio section."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from sip_controller.agent import preflight
from sip_controller.config import DEFAULT_TWILIO_API_BASE_URL, ConfigError, Secrets, Settings, TwilioSettings

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "f" * 32
KEY_SID = "SK" + "89abcdef01234567" * 2
ENV = {
    "TWILIO_ACCOUNT_SID": SID,
    "TWILIO_AUTH_TOKEN": TOKEN,
    "OPENAI_PROJECT_ID": "proj_abc123",
    "SIPCTL_PUBLIC_URL": "https://calls.example.com/",
}


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Secrets.from_env(env)
    return caught.value.problems


def test_twilio_is_off_without_its_variables() -> None:
    assert Secrets.from_env({}).twilio is None


def test_twilio_credentials_from_the_environment() -> None:
    twilio = Secrets.from_env(ENV).twilio
    assert twilio is not None
    assert twilio.account_sid == SID
    assert twilio.public_url == "https://calls.example.com"  # the trailing slash dropped
    assert twilio.api_base_url == DEFAULT_TWILIO_API_BASE_URL
    assert twilio.openai_project_id == "proj_abc123"
    assert twilio.rest_auth() == (SID, TOKEN)
    assert TOKEN not in repr(twilio)


def test_an_api_key_pair_authenticates_the_rest_calls() -> None:
    twilio = Secrets.from_env({**ENV, "TWILIO_API_KEY_SID": KEY_SID, "TWILIO_API_KEY_SECRET": "s3cret-value"}).twilio
    assert twilio is not None
    assert twilio.rest_auth() == (KEY_SID, "s3cret-value")


def test_the_api_base_url_points_at_a_stand_in() -> None:
    twilio = Secrets.from_env({**ENV, "TWILIO_API_BASE_URL": "http://127.0.0.1:9/"}).twilio
    assert twilio is not None
    assert twilio.api_base_url == "http://127.0.0.1:9"


def test_twilio_without_the_project_id_is_refused_naming_the_variable_and_the_fix() -> None:
    env = dict(ENV)
    del env["OPENAI_PROJECT_ID"]
    [problem] = problems(env)
    assert problem.startswith("OPENAI_PROJECT_ID is not set but Twilio is configured")
    assert "proj_" in problem
    assert "platform.openai.com" in problem


def test_twilio_without_the_public_url_is_refused() -> None:
    env = dict(ENV)
    del env["SIPCTL_PUBLIC_URL"]
    [problem] = problems(env)
    assert problem.startswith("SIPCTL_PUBLIC_URL is not set but Twilio is configured")
    assert "https://" in problem


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://calls.example.com", "is not an https URL"),
        ("https://calls.example.com/?a=1", "no query or fragment"),
        ("ftp://x", "is not an https URL"),
    ],
)
def test_a_bad_public_url_is_named_with_its_value(url: str, why: str) -> None:
    [problem] = problems({**ENV, "SIPCTL_PUBLIC_URL": url})
    assert problem.startswith("SIPCTL_PUBLIC_URL:")
    assert why in problem
    assert url in problem


def test_plain_http_on_loopback_is_allowed_for_tests_and_the_demo() -> None:
    twilio = Secrets.from_env({**ENV, "SIPCTL_PUBLIC_URL": "http://127.0.0.1:8000"}).twilio
    assert twilio is not None


def test_the_auth_token_is_required_even_with_an_api_key() -> None:
    env = {**ENV, "TWILIO_API_KEY_SID": KEY_SID, "TWILIO_API_KEY_SECRET": "x"}
    del env["TWILIO_AUTH_TOKEN"]
    [problem] = problems(env)
    assert problem.startswith("TWILIO_AUTH_TOKEN is not set")
    assert "signs its webhooks" in problem


def test_half_an_api_key_pair_is_refused() -> None:
    [problem] = problems({**ENV, "TWILIO_API_KEY_SID": KEY_SID})
    assert problem.startswith("TWILIO_API_KEY_SECRET is not set")


def test_every_problem_at_once_and_no_secret_repeated() -> None:
    found = problems({
        "TWILIO_ACCOUNT_SID": "nonsense", "TWILIO_AUTH_TOKEN": "tok-SECRET", "OPENAI_PROJECT_ID": "project-1",
        "TWILIO_API_KEY_SID": "SKshort", "TWILIO_API_KEY_SECRET": "key-SECRET",
    })  # fmt: skip
    assert [p.split(":")[0].split(" ")[0] for p in found] == [
        "TWILIO_ACCOUNT_SID", "TWILIO_API_KEY_SID", "OPENAI_PROJECT_ID", "SIPCTL_PUBLIC_URL",
    ]  # fmt: skip
    assert not any("SECRET" in p for p in found)


def test_twilio_variables_without_the_account_sid_are_named() -> None:
    [problem] = problems({"TWILIO_AUTH_TOKEN": TOKEN})
    assert problem.startswith("TWILIO_ACCOUNT_SID is not set but TWILIO_AUTH_TOKEN is")


def test_the_twilio_settings_section() -> None:
    settings = Settings(twilio=TwilioSettings(from_number="+14155550100", do_not_call=("+1900*",)))
    assert settings.twilio.ring_timeout_s == 30
    with pytest.raises(pydantic.ValidationError, match=r"E\.164"):
        TwilioSettings(from_number="4155550100")
    with pytest.raises(pydantic.ValidationError, match="can never match"):
        TwilioSettings(do_not_call=("0044*",))
    assert settings.twilio.batch_retain_days == 90  # finished outbound batches, then swept (#16)
    assert TwilioSettings(batch_retain_days=None).batch_retain_days is None  # kept forever
    for days in (0, -1, 36_501):
        with pytest.raises(pydantic.ValidationError, match="batch_retain_days"):
            TwilioSettings(batch_retain_days=days)


def test_the_commented_twilio_example_is_a_valid_config_once_uncommented(tmp_path: Path) -> None:
    """config/sipctl.example.yaml ends with a commented twilio section and a profile that places calls: uncommented
    and added to the example, check-config passes on it and reads what the comments say."""
    example = Path(__file__).resolve().parent.parent / "config" / "sipctl.example.yaml"
    text = example.read_text()
    commented = text[text.index("# Twilio Programmable Voice") :].splitlines()
    start, twilio_at = commented.index("#   profiles:"), commented.index("# twilio:")
    profile_yaml = "\n".join(line.removeprefix("#   ") for line in commented[start:twilio_at])
    twilio_yaml = "\n".join(line.removeprefix("# ") for line in commented[twilio_at:] if line.startswith("# "))
    data = yaml.safe_load(text)
    data["profiles"].update(yaml.safe_load(profile_yaml)["profiles"])
    data.update(yaml.safe_load(twilio_yaml))
    path = tmp_path / "sipctl.yaml"
    path.write_text(yaml.safe_dump(data))
    result = preflight.validate(path)
    assert (result.errors, [str(w) for w in result.warnings]) == ([], [])
    assert result.settings is not None
    assert result.settings.twilio == TwilioSettings(from_number="+14155550100", do_not_call=("+1900*",),
                                                    ring_timeout_s=30)  # fmt: skip
    reminders = result.settings.profiles["reminders"]
    assert reminders.variables == ("first_name", "date")
    assert reminders.outbound.machine_detection == "DetectMessageEnd"
