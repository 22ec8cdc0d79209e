"""Settings: a YAML file under ``SIPCTL_*`` env overrides; secrets only from the environment.

Every failure is a :class:`ConfigError` whose lines name the field path, the bad value and the fix.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from sip_controller import tools

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONFIG_PATH = Path("config/sipctl.yaml")

#: Fields from the beta Realtime API (or written in the wrong place) and what to write instead.
MIGRATION_HINTS: dict[str, str] = {
    "temperature": (
        "`temperature` was removed from the GA Realtime API (the beta allowed only 0.6-1.2 and lower "
        "values failed or produced noise); delete it"
    ),
    "modalities": "`modalities` is beta-only; the GA field is `output_modalities` (['audio'] or ['text'])",
    "input_audio_format": "`input_audio_format` is beta-only; set the profile's `codec` (pcmu, pcma, negotiated)",
    "output_audio_format": "`output_audio_format` is beta-only; set the profile's `codec` (pcmu, pcma, negotiated)",
    "input_audio_transcription": "`input_audio_transcription` is beta-only; use the profile's `transcription`",
    "max_response_output_tokens": "`max_response_output_tokens` is beta-only; the GA name is `max_output_tokens`",
    "input_audio_noise_reduction": "`input_audio_noise_reduction` is beta-only; the GA path is "
    "audio.input.noise_reduction",
    "openai_api_key": "secrets are read only from the environment: set OPENAI_API_KEY and delete this key",
    "openai_webhook_secret": "secrets are read only from the environment: set OPENAI_WEBHOOK_SECRET and "
    "delete this key",
    "api_key": "secrets are read only from the environment: set OPENAI_API_KEY and delete this key",
    "webhook_secret": "secrets are read only from the environment: set OPENAI_WEBHOOK_SECRET and delete this key",
}

GA_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
#: Turn-detection fields users report OpenAI refusing on /accept for SIP calls; sent by session.update instead.
SIP_DEFERRED_VAD_FIELDS = ("threshold", "prefix_padding_ms", "silence_duration_ms")


class ConfigError(Exception):
    """An invalid configuration; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnDetection(_Strict):
    """``audio.input.turn_detection``; VAD tuning fields are applied by session.update after attach."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0)
    silence_duration_ms: int | None = Field(default=None, ge=0)
    idle_timeout_ms: int | None = Field(default=None, ge=5000, le=30000)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool = True
    interrupt_response: bool = True


class Transcription(_Strict):
    """``audio.input.transcription``: transcribe the caller's side."""

    model: str = "gpt-4o-mini-transcribe"
    language: str | None = None
    prompt: str | None = None


class AgentProfile(_Strict):
    """One phone agent: what the model is told, how it sounds, and what it may do."""

    model: str = "gpt-realtime-2.1"
    instructions: str = (
        "You are a friendly phone assistant. Keep answers short: this is a phone call. "
        "When the caller says goodbye or has nothing else, say a short goodbye and call end_call."
    )
    voice: str = "marin"
    greeting: str | None = "Hello! Thanks for calling. How can I help you today?"
    turn_detection: TurnDetection | None = TurnDetection()
    transcription: Transcription | None = Transcription()
    codec: Literal["pcmu", "pcma", "negotiated"] = "pcmu"
    tools: tuple[str, ...] = ("end_call",)
    tool_choice: Literal["auto", "none", "required"] = "auto"
    goodbye_timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("instructions")
    @classmethod
    def _instructions_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("instructions must not be empty; describe what the agent does")
        return value

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in tools.BUILTIN_TOOLS]
        if unknown:
            raise ValueError(f"unknown tool(s) {unknown}; available: {', '.join(sorted(tools.BUILTIN_TOOLS))}")
        if len(set(value)) != len(value):
            raise ValueError("each tool may be listed once")
        return value

    @field_validator("voice")
    @classmethod
    def _known_voice(cls, value: str) -> str:
        if value not in GA_VOICES and not value.startswith("voice_"):
            raise ValueError(f"unknown voice; use one of {', '.join(GA_VOICES)} or a custom 'voice_…' id")
        return value


class Limits(_Strict):
    max_concurrent_calls: int = Field(default=100, ge=1)
    dedupe_ttl_s: float = Field(default=3600.0, gt=0)
    recent_calls: int = Field(default=200, ge=0)
    webhook_max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    hangup_close_wait_s: float = Field(default=3.0, gt=0)


_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("sipctl_yaml_path", default=None)


class _Sourced(BaseSettings):
    """Reads, in priority order: explicit arguments, ``SIPCTL_*`` env, then the YAML file being loaded."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _yaml_path.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


class Settings(_Sourced):
    """Non-secret settings. Priority: explicit arguments > ``SIPCTL_*`` env > YAML file > defaults."""

    model_config = SettingsConfigDict(
        env_prefix="SIPCTL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    default_profile: str = "default"
    profiles: dict[str, AgentProfile] = Field(default_factory=lambda: {"default": AgentProfile()})
    limits: Limits = Limits()

    @field_validator("profiles")
    @classmethod
    def _some_profile(cls, value: dict[str, AgentProfile]) -> dict[str, AgentProfile]:
        if not value:
            raise ValueError("at least one agent profile is required")
        return value

    def profile(self, name: str | None = None) -> AgentProfile:
        return self.profiles[name or self.default_profile]



class Secrets(BaseModel):
    """Secrets and endpoints read only from the environment, never from YAML."""

    model_config = ConfigDict(frozen=True)

    openai_api_key: SecretStr | None = None
    webhook_secrets: tuple[SecretStr, ...] = ()
    openai_base_url: str = DEFAULT_BASE_URL

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Secrets:
        env = dict(os.environ if environ is None else environ)
        key = env.get("OPENAI_API_KEY", "").strip()
        raw_secrets = env.get("OPENAI_WEBHOOK_SECRET", "")
        secrets = tuple(SecretStr(s.strip()) for s in raw_secrets.split(",") if s.strip())
        base = env.get("OPENAI_BASE_URL", "").strip() or DEFAULT_BASE_URL
        problems = []
        if not base.startswith(("http://", "https://")):
            problems.append(f"OPENAI_BASE_URL: {base!r} is not an http(s) URL; e.g. {DEFAULT_BASE_URL}")
        for i, s in enumerate(secrets):
            if not s.get_secret_value().startswith("whsec_"):
                problems.append(
                    f"OPENAI_WEBHOOK_SECRET: secret #{i + 1} does not start with 'whsec_'; copy the "
                    "signing secret shown when the webhook was created"
                )
        if problems:
            raise ConfigError(problems)
        return cls(
            openai_api_key=SecretStr(key) if key else None,
            webhook_secrets=secrets,
            openai_base_url=base.rstrip("/"),
        )

    def require_for_serving(self) -> None:
        problems = []
        if self.openai_api_key is None:
            problems.append("OPENAI_API_KEY is not set; export your project's API key")
        if not self.webhook_secrets:
            problems.append(
                "OPENAI_WEBHOOK_SECRET is not set; export the webhook's signing secret (whsec_…), "
                "several separated by commas while rotating"
            )
        if problems:
            raise ConfigError(problems)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _describe(error: Any) -> str:
    loc: tuple[int | str, ...] = tuple(error.get("loc", ()))
    path = _format_loc(loc)
    last = str(loc[-1]) if loc else ""
    if error.get("type") == "extra_forbidden":
        hint = MIGRATION_HINTS.get(last)
        if hint:
            return f"{path}: {hint}"
        return f"{path}: unknown field (value {error.get('input')!r}); check the spelling or delete it"
    msg = str(error.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    return f"{path}: {msg} (got {error.get('input')!r})"


def problems_from(exc: ValidationError) -> list[str]:
    return [_describe(e) for e in exc.errors()]


def load_settings(path: Path | str | None = None) -> Settings:
    """Load settings from ``path`` (or ``SIPCTL_CONFIG``, or ``config/sipctl.yaml`` if present) under env."""
    if path is None:
        env_path = os.environ.get("SIPCTL_CONFIG", "").strip()
        if env_path:
            path = env_path
        elif DEFAULT_CONFIG_PATH.is_file():
            path = DEFAULT_CONFIG_PATH
    yaml_path = Path(path) if path is not None else None
    if yaml_path is not None:
        _check_yaml_file(yaml_path)
    token = _yaml_path.set(yaml_path)
    try:
        problems: list[str] = []
        settings: Settings | None = None
        try:
            settings = Settings()
        except ValidationError as exc:
            problems.extend(problems_from(exc))
        problems.extend(_profile_name_problems())
        if problems:
            raise ConfigError(problems)
        assert settings is not None
        return settings
    finally:
        _yaml_path.reset(token)


class _ProfileNames(_Sourced):
    """Just the profile names, read from the same sources, so a bad default_profile is reported together
    with every other problem (the full Settings may not validate)."""

    model_config = SettingsConfigDict(env_prefix="SIPCTL_", env_nested_delimiter="__", extra="ignore")

    default_profile: Any = "default"
    profiles: Any = None


def _profile_name_problems() -> list[str]:
    try:
        names = _ProfileNames()
    except ValidationError:
        return []
    if not isinstance(names.profiles, dict) or not isinstance(names.default_profile, str):
        return []  # absent (built-in default profile) or mistyped (reported by Settings itself)
    if names.default_profile in names.profiles:
        return []
    return [
        f"default_profile: {names.default_profile!r} is not a profile; "
        f"use one of {', '.join(sorted(map(str, names.profiles))) or '(none defined)'}"
    ]


def _check_yaml_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError([f"SIPCTL_CONFIG: {str(path)!r} does not exist; point it at a YAML config file"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of settings, got {type(data).__name__}"])
