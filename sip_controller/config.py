"""Settings: a YAML file under ``SIPCTL_*`` env overrides; secrets only from the environment.

Every failure is a :class:`ConfigError` whose lines name the field path, the bad value and the fix.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Callable
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

from sip_controller.agent.profile import AgentProfile, Strict, Transcription, TurnDetection
from sip_controller.agent.validation import BETA_FIELDS
from sip_controller.calls.pricing import Pricing

__all__ = [
    "AgentProfile",
    "ConfigError",
    "Limits",
    "Secrets",
    "Settings",
    "Transcription",
    "TurnDetection",
    "load_settings",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONFIG_PATH = Path("config/sipctl.yaml")

#: Keys that do not belong in the config, and what to write instead (beta-era session fields, secrets).
MIGRATION_HINTS: dict[str, str] = {
    **BETA_FIELDS,
    "openai_api_key": "secrets are read only from the environment: set OPENAI_API_KEY and delete this key",
    "openai_webhook_secret": "secrets are read only from the environment: set OPENAI_WEBHOOK_SECRET and "
    "delete this key",
    "api_key": "secrets are read only from the environment: set OPENAI_API_KEY and delete this key",
    "webhook_secret": "secrets are read only from the environment: set OPENAI_WEBHOOK_SECRET and delete this key",
}



class ConfigError(Exception):
    """An invalid configuration; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


_NUMBER_PATTERN = re.compile(r"^\+?[0-9*?]+$")


class Route(Strict):
    """Send calls to ``profile`` when the dialled number matches one of ``dialed`` (E.164 with ``*`` and ``?``
    wildcards, e.g. ``+1800555*``) or, with ``header``, when that allow-listed ``X-`` header's value matches
    one of ``values``. Routes are tried in order; no match means ``default_profile``."""

    profile: str
    dialed: tuple[str, ...] = ()
    header: str | None = None
    values: tuple[str, ...] = ()

    @field_validator("dialed")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not _NUMBER_PATTERN.match(p)]
        if bad:
            raise ValueError(f"dialled-number patterns are E.164 with * and ? wildcards, e.g. +1800555* (got {bad})")
        return value

    @field_validator("header")
    @classmethod
    def _custom_header(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith("x-"):
            raise ValueError("only custom X- headers can route calls (standard ones are set by the network)")
        return value


class Callers(Strict):
    """Caller screening by number (from ``From``, else ``P-Asserted-Identity``), E.164 patterns with wildcards.
    ``deny`` wins; a non-empty ``allow`` admits only matching callers. Refused calls get ``reject_status``."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    reject_status: int = Field(default=603, ge=400, le=699)
    #: calls whose caller ID is withheld or unreadable: "allow" (rate-limited together by
    #: limits.anonymous_calls_per_minute) or "reject" with reject_status
    anonymous: Literal["allow", "reject"] = "allow"

    @field_validator("allow", "deny")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not _NUMBER_PATTERN.match(p)]
        if bad:
            raise ValueError(f"caller patterns are E.164 with * and ? wildcards, e.g. +1415* (got {bad})")
        return value


class ReportEndpoint(Strict):
    """An operator endpoint receiving ``call.started`` / ``call.ended`` events (Standard Webhooks-signed).
    ``secret_env`` names the environment variable holding its ``whsec_…`` signing secret (never the secret
    itself); without it the events go out unsigned."""

    url: str
    secret_env: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("an http(s) URL is required, e.g. https://ops.example.com/hooks/calls")
        return value

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError(
                "the name of an environment variable (e.g. SIPCTL_REPORT_SECRET) holding the whsec_… secret, "
                "not the secret itself"
            )
        return value


class Reports(Strict):
    """The end-of-call report: a local JSONL call log and signed event webhooks to the operator."""

    #: append one JSON line per finished call here (parent directories are created); None: no call log
    jsonl_path: str | None = None
    #: show callers as ``+1415***0123`` in reports and the call log
    mask_caller: bool = True
    endpoints: tuple[ReportEndpoint, ...] = ()
    events: tuple[Literal["call.started", "call.ended"], ...] = ("call.started", "call.ended")
    #: one delivery attempt (connect + send + answer)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: attempts per event and endpoint (transport errors, 429 and 5xx are retried with jittered backoff)
    max_attempts: int = Field(default=5, ge=1, le=20)
    #: deliveries (and call-log lines) waiting; when full the oldest is dropped with a warning
    queue_size: int = Field(default=1000, ge=1)
    #: on shutdown, how long queued reports may still be delivered and written
    flush_timeout_s: float = Field(default=10.0, gt=0)


class Limits(Strict):
    max_concurrent_calls: int = Field(default=100, ge=1)
    #: accepts running at once (each may be retrying within its ring budget)
    max_accepts_in_flight: int = Field(default=50, ge=1)
    #: calls per minute from one caller number before SIP 603; 0 turns the limit off
    caller_calls_per_minute: int = Field(default=10, ge=0)
    #: calls per minute from ALL callers without a number (withheld caller ID), one shared bucket; 0 = off
    anonymous_calls_per_minute: int = Field(default=10, ge=0)
    #: how long after the webhook an accept may still be retried (the caller hears ringing meanwhile)
    ring_budget_s: float = Field(default=8.0, gt=0, le=60)
    #: on SIGTERM: how long live calls may go on before their spoken wrap-up and hangup
    drain_timeout_s: float = Field(default=300.0, ge=0)
    #: after drain_timeout_s: time for the wrap-up line and the hangup before tasks are cancelled
    drain_wrap_up_s: float = Field(default=15.0, gt=0)
    #: webhooks while draining: "redeliver" answers 503 (OpenAI retries, another replica takes it);
    #: "reject" refuses the call with SIP 503
    drain_mode: Literal["redeliver", "reject"] = "redeliver"
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
    #: uvicorn's per-request access lines (query strings are cut), through the same log pipeline
    access_log: bool = False
    default_profile: str = "default"
    profiles: dict[str, AgentProfile] = Field(default_factory=lambda: {"default": AgentProfile()})
    limits: Limits = Limits()
    routes: tuple[Route, ...] = ()
    callers: Callers = Callers()
    pricing: Pricing = Pricing()
    reports: Reports = Reports()

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
    #: bearer token of the admin API and the live-calls page; both are off when unset
    admin_token: SecretStr | None = None

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
        admin = env.get("SIPCTL_ADMIN_TOKEN", "").strip()
        if admin and len(admin) < 16:
            problems.append("SIPCTL_ADMIN_TOKEN: use at least 16 random characters (e.g. `openssl rand -hex 24`)")
            admin = ""
        if problems:
            raise ConfigError(problems)
        return cls(
            admin_token=SecretStr(admin) if admin else None,
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


#: checks a profile beyond its types: (name, profile, fields already reported as invalid) -> problems
ProfileCheck = Callable[[str, AgentProfile, frozenset[str]], list[str]]


def load_settings(path: Path | str | None = None, *, profile_check: ProfileCheck | None = None) -> Settings:
    """Load settings from ``path`` (or ``SIPCTL_CONFIG``, or ``config/sipctl.yaml`` if present) under env.

    Every problem is reported at once: type errors, a bad ``default_profile``, and what ``profile_check``
    finds, which also runs on the valid part of a profile whose other fields have type errors.
    """
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
        raw = _raw_profiles()
        problems.extend(_profile_name_problems(raw))
        if profile_check is not None:
            if settings is not None:
                for name, profile in settings.profiles.items():
                    problems.extend(profile_check(name, profile, frozenset()))
            elif raw is not None and isinstance(raw.profiles, dict):
                for name, data in raw.profiles.items():
                    partial = _best_effort_profile(data)
                    if partial is not None:
                        problems.extend(profile_check(str(name), *partial))
        if problems:
            raise ConfigError(problems)
        assert settings is not None
        return settings
    finally:
        _yaml_path.reset(token)


class _RawProfiles(_Sourced):
    """The profiles as written, read from the same sources, so that problems are still found and reported
    together when the full Settings does not validate."""

    model_config = SettingsConfigDict(env_prefix="SIPCTL_", env_nested_delimiter="__", extra="ignore")

    default_profile: Any = "default"
    profiles: Any = None


def _raw_profiles() -> _RawProfiles | None:
    try:
        return _RawProfiles()
    except ValidationError:
        return None


def _best_effort_profile(data: Any) -> tuple[AgentProfile, frozenset[str]] | None:
    """The profile with its invalid fields dropped (back to defaults), and the names of those fields."""
    if not isinstance(data, dict):
        return None
    fields = dict(data)
    dropped: set[str] = set()
    while True:
        try:
            return AgentProfile.model_validate(fields), frozenset(dropped)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & set(fields)
            if not bad:
                return None
            for key in bad:
                fields.pop(key)
            dropped |= bad


def _profile_name_problems(names: _RawProfiles | None) -> list[str]:
    if names is None or not isinstance(names.profiles, dict) or not isinstance(names.default_profile, str):
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
