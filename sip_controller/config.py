"""Settings: a YAML file under ``SIPCTL_*`` env overrides; secrets only from the environment.

Every failure is a :class:`ConfigError` whose lines name where the value came from (the field path, and the
environment variable when one set it), the bad value and the fix. List positions are written in brackets
(``routes[0].profile``), mapping keys after dots (``profiles.sales.voice``), everywhere.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
import math
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from standardwebhooks import Webhook

from sip_controller.agent.analysis import AnalysisSettings
from sip_controller.agent.profile import AgentProfile, Strict, Transcription, TurnDetection
from sip_controller.agent.validation import BETA_FIELDS
from sip_controller.calls.pricing import Pricing

__all__ = [
    "AgentProfile",
    "ConfigError",
    "Limits",
    "Loaded",
    "Secrets",
    "Settings",
    "StoreSettings",
    "Transcription",
    "TurnDetection",
    "TwilioCredentials",
    "TwilioSettings",
    "load",
    "load_settings",
    "webhook_secret_problem",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONFIG_PATH = Path("config/sipctl.yaml")
ENV_PREFIX = "SIPCTL_"
#: how old a signed webhook may be (Standard Webhooks' tolerance, the one the intake applies)
WEBHOOK_TOLERANCE_S = 300

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
    """An invalid configuration; ``problems`` holds one readable line per problem. One problem reads as that
    one line; several as a list under ``invalid configuration:``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def webhook_secret_problem(secret: str) -> str | None:
    """Why ``secret`` is not a Standard Webhooks signing secret (``whsec_`` + base64 of the key), or None.
    The answer never repeats the secret."""
    if not secret.startswith("whsec_"):
        return "does not start with 'whsec_'"
    body = secret.removeprefix("whsec_")
    if not body:
        return "has nothing after 'whsec_' (a signing secret is 'whsec_' followed by base64)"
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        Webhook(secret)  # what the intake and the notifier will build from it
    except (binascii.Error, ValueError, RuntimeError):
        return "is not 'whsec_' followed by base64"
    if not key:
        return "has no key after 'whsec_' (a signing secret is 'whsec_' followed by base64)"
    return None


#: how the messages about a weak SIPCTL_ADMIN_TOKEN say to make a good one
ADMIN_TOKEN_FIX = (
    "generate one with `openssl rand -hex 32` (or `python3 -c 'import secrets; print(secrets.token_hex(32))'`)"
)
_PLACEHOLDER_WORDS = ("password", "changeme", "change-me", "change_me", "secret", "example", "letmein", "qwerty")


def admin_token_problem(token: str) -> str | None:
    """Why ``token`` is too weak for ``SIPCTL_ADMIN_TOKEN``, or None; never repeats the token. Beyond its length:
    at least two kinds of character (lower case, upper case, digits, others), enough entropy in its characters
    (a random 16-character hex token has about 50 bits by this estimate; 36 are required), not mostly runs of
    neighbouring characters (``abcd``, ``1234``, ``aaaa``), and no placeholder word."""
    if len(token) < 16:
        return "shorter than 16 characters"
    kinds = sum(
        any(test(c) for c in token)
        for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
    )
    if kinds < 2:
        return "one kind of character only"
    counts = [token.count(c) for c in set(token)]
    bits = -sum(n * math.log2(n / len(token)) for n in counts)
    if bits < 36:
        return "too few different characters"
    neighbours = sum(abs(ord(token[i + 1]) - ord(token[i])) <= 1 for i in range(len(token) - 1))
    if neighbours > 0.6 * (len(token) - 1):
        return "mostly runs of neighbouring characters, like abcd or 1234"
    lowered = token.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        return "a placeholder word, like password or secret"
    return None


#: the value is named in the message already: no "(got …)" after it
VALUE_NAMED = "value_named"
_NUMBER_PATTERN = re.compile(r"^\+?[0-9*?]+$")
#: an E.164 number: +, a country code not starting with 0, at most 15 digits
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_E164_MAX_DIGITS = 15


def _number_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` can never match a number as the controller sees it (E.164: ``+``, 1-15 digits)."""
    if not _NUMBER_PATTERN.match(pattern):
        return f"{pattern!r} is not a number pattern"
    if pattern[0] in "*?":
        return None  # a leading wildcard matches the +
    if not pattern.startswith("+"):
        if pattern.startswith("0"):
            return (
                f"{pattern!r} can never match: numbers are compared in E.164 form; write '+', the country code "
                "and the number without its leading 0"
            )
        return f"{pattern!r} can never match: numbers are compared in E.164 form; write {'+' + pattern!r}"
    if pattern[1:2] == "0":
        return f"{pattern!r} can never match: E.164 country codes do not start with 0"
    if "*" not in pattern and len(pattern) - 1 > _E164_MAX_DIGITS:
        return f"{pattern!r} can never match: E.164 numbers have at most {_E164_MAX_DIGITS} digits"
    return None


def _number_pattern(example: str) -> AfterValidator:
    """Checks one list entry, so each problem is named by its position (``callers.allow[0]``) and a mistyped
    entry elsewhere in the list does not hide it."""

    def check(pattern: str) -> str:
        problem = _number_pattern_problem(pattern)
        if problem is not None:
            raise PydanticCustomError(
                VALUE_NAMED,
                "{problem} (patterns are E.164 numbers with * and ? wildcards, e.g. {example})",
                {"problem": problem, "example": example},
            )
        return pattern

    return AfterValidator(check)


#: E.164 number patterns with ``*`` and ``?`` wildcards, each entry checked on its own
DialedPattern = Annotated[str, _number_pattern("+1800555*")]
CallerPattern = Annotated[str, _number_pattern("+1415*")]
DoNotCallPattern = Annotated[str, _number_pattern("+1415555*")]


class Route(Strict):
    """Send calls to ``profile`` when the dialled number matches one of ``dialed`` (E.164 with ``*`` and ``?``
    wildcards, e.g. ``+1800555*``) or, with ``header``, when that allow-listed ``X-`` header's value matches
    one of ``values``. Routes are tried in order; no match means ``default_profile``."""

    profile: str
    dialed: tuple[DialedPattern, ...] = ()
    header: str | None = None
    values: tuple[str, ...] = ()

    @field_validator("header")
    @classmethod
    def _custom_header(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith("x-"):
            raise ValueError("only custom X- headers can route calls (standard ones are set by the network)")
        return value


class Callers(Strict):
    """Caller screening by number (from ``From``, else ``P-Asserted-Identity``), E.164 patterns with wildcards.
    ``deny`` wins; a non-empty ``allow`` admits only matching callers. Refused calls get ``reject_status``."""

    allow: tuple[CallerPattern, ...] = ()
    deny: tuple[CallerPattern, ...] = ()
    reject_status: int = Field(default=603, ge=400, le=699)
    #: calls whose caller ID is withheld or unreadable: "allow" (rate-limited together by
    #: limits.anonymous_calls_per_minute) or "reject" with reject_status
    anonymous: Literal["allow", "reject"] = "allow"


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
    #: ``call.analyzed`` (#17): a profile's post-call analysis, delivered after its ``call.ended``;
    #: ``call.recording`` (#16): a Twilio recording that arrived after its call's ``call.ended``
    events: tuple[Literal["call.started", "call.ended", "call.analyzed", "call.recording"], ...] = (
        "call.started", "call.ended", "call.analyzed", "call.recording"
    )
    #: one delivery attempt (connect + send + answer)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: attempts of a report the endpoint refuses (a 4xx other than 408/429) before it is given up; transport
    #: errors, timeouts, 408, 429 and 5xx are retried with jittered backoff for ``retry_for_s``
    max_attempts: int = Field(default=5, ge=1, le=20)
    #: how long a report the sink keeps failing (an endpoint down, a call log that cannot be written) is retried
    #: before it is given up (counted in /metrics); meanwhile it waits in the store's outbox, not in memory
    retry_for_s: float = Field(default=86_400.0, gt=0)
    #: no longer used: reports wait in the store's outbox (bounded by disk), not in a queue; still accepted
    queue_size: int = Field(default=1000, ge=1)
    #: on shutdown, how long due reports may still be delivered and written (the rest stay in the outbox)
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
    #: the SIP status a call is rejected with when its accept is given up (5xx/429 through the ring budget, a
    #: Retry-After past it): 503 Service Unavailable or 480 Temporarily Unavailable, not endless ringing
    accept_give_up_status: Literal[480, 503] = 503
    #: on SIGTERM: how long live calls may go on before their spoken wrap-up and hangup
    drain_timeout_s: float = Field(default=300.0, ge=0)
    #: after drain_timeout_s: time for the wrap-up line and the hangup before tasks are cancelled
    drain_wrap_up_s: float = Field(default=15.0, gt=0)
    #: webhooks while draining: "redeliver" answers 503 (OpenAI retries, another replica takes it);
    #: "reject" refuses the call with SIP 503
    drain_mode: Literal["redeliver", "reject"] = "redeliver"
    #: how long a webhook-id / call_id is remembered; at least the signature tolerance, or replays get through
    dedupe_ttl_s: float = 3600.0
    recent_calls: int = Field(default=200, ge=0)
    webhook_max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    hangup_close_wait_s: float = Field(default=3.0, gt=0)

    @field_validator("accept_give_up_status", mode="before")
    @classmethod
    def _status_from_text(cls, value: object) -> object:
        """``SIPCTL_LIMITS__ACCEPT_GIVE_UP_STATUS=480`` arrives as text."""
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("dedupe_ttl_s")
    @classmethod
    def _outlasts_the_signature(cls, value: float) -> float:
        if not value >= WEBHOOK_TOLERANCE_S:
            raise ValueError(
                f"must be at least {WEBHOOK_TOLERANCE_S} (the webhook signature tolerance, in seconds): a webhook-id "
                "forgotten sooner can be replayed with a signature that is still valid and answered twice; use "
                f"{WEBHOOK_TOLERANCE_S} or more (default 3600)"
            )
        return value


class Console(Strict):
    """Sign-in sessions of the live-calls page (``SIPCTL_ADMIN_TOKEN`` turns it on)."""

    #: the session cookie's ``Secure`` flag. ``false`` only for a client served plain HTTP on loopback that does
    #: not count it as secure (browsers do for 127.0.0.1 and localhost); honoured only on a loopback connection
    secure_cookie: bool = True
    #: a session ends this long after sign-in (or at sign-out, which revokes it on the server)
    session_ttl_s: float = Field(default=12 * 3600.0, gt=0, le=7 * 24 * 3600.0)
    #: sessions kept at once; when full, the oldest ends
    max_sessions: int = Field(default=1000, ge=1, le=100_000)
    #: wrong tokens one client may try (console sign-in or the API's bearer) before it must wait: 1 s, then
    #: doubling per further wrong token up to ``login_backoff_max_s``; forgotten after 15 quiet minutes
    login_free_failures: int = Field(default=5, ge=1, le=100)
    login_backoff_max_s: float = Field(default=300.0, ge=1, le=3600)


class StoreSettings(Strict):
    """The store (``sip_controller/state/``): what must outlive a process. ``SIPCTL_DATABASE_URL`` (an environment
    secret) selects PostgreSQL for several replicas; without it, the SQLite file at ``path`` (one process)."""

    #: the embedded SQLite file (WAL mode; parent folders are created); unused with SIPCTL_DATABASE_URL
    path: str = "sipctl-state.db"
    #: how long a process's lease lasts after each heartbeat. Its calls are taken over once it lapses: the
    #: worst case from a death to a takeover is lease_s + heartbeat_s (the survivor's next check) plus the
    #: re-attach, 6 + 2 + ~1 s by default, inside the 10 s target; three heartbeats per lease, so two lost or
    #: late heartbeats (a GC pause, a slow database) do not hand live calls over
    lease_s: float = Field(default=6.0, gt=0, le=300)
    #: how often a process renews its lease, and checks for orphaned calls to take over
    heartbeat_s: float = Field(default=2.0, gt=0, le=100)
    #: PostgreSQL connections per process
    pool_size: int = Field(default=10, ge=1, le=200)

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> StoreSettings:
        if self.lease_s < 2 * self.heartbeat_s:
            raise PydanticCustomError(
                VALUE_NAMED,
                "lease_s ({lease}) must be at least twice heartbeat_s ({beat}): with less, one late heartbeat hands "
                "a live process's calls to another; e.g. lease_s 6 and heartbeat_s 2 (the defaults)",
                {"lease": f"{self.lease_s:g}", "beat": f"{self.heartbeat_s:g}"},
            )
        return self


class History(Strict):
    """The call history (#17): how long finished calls are kept (a bounded background job deletes older ones,
    transcripts first when they are kept for less), and the largest export."""

    #: finished calls are deleted this many days after they ended; null keeps them forever
    retain_days: int | None = Field(default=None, ge=1, le=36_500)
    #: transcripts (the report's transcript, its transcript entries, the search index) are removed this many days
    #: after the call ended; the rest of the call stays until ``retain_days``. null: kept as long as the call
    transcript_retain_days: int | None = Field(default=None, ge=1, le=36_500)
    #: how often the retention job runs a pass (each deletes at most ``purge_batch`` calls, then the next pass
    #: follows at once while there is more to do)
    purge_every_s: float = Field(default=3600.0, ge=10, le=7 * 86_400)
    purge_batch: int = Field(default=1000, ge=1, le=100_000)
    #: GET /v1/calls/export streams at most this many rows
    export_max_rows: int = Field(default=100_000, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _transcripts_go_first(self) -> History:
        if (
            self.retain_days is not None
            and self.transcript_retain_days is not None
            and self.transcript_retain_days > self.retain_days
        ):
            raise PydanticCustomError(
                VALUE_NAMED,
                "transcript_retain_days ({transcripts}) must be at most retain_days ({calls}): a call's transcript "
                "goes with the call; set transcript_retain_days to {calls} or less, or null to keep transcripts as "
                "long as the calls",
                {"transcripts": str(self.transcript_retain_days), "calls": str(self.retain_days)},
            )
        return self


class TwilioSettings(Strict):
    """Twilio Programmable Voice (``telephony/``): numbers whose calls are bridged to OpenAI, and calls we place.
    The credentials come from the environment (``TWILIO_*``, :class:`TwilioCredentials`); these are the rest."""

    #: the caller ID of outbound calls: a number of the Twilio account (E.164); a profile may set its own
    from_number: str | None = None
    #: numbers never called (E.164 patterns with * and ? wildcards); checked on every outbound request
    do_not_call: tuple[DoNotCallPattern, ...] = ()
    #: how long an outbound call may ring before Twilio gives up (``no_answer``); Twilio's ``Timeout``
    ring_timeout_s: int = Field(default=30, ge=5, le=600)
    #: outbound batches done or canceled this many days ago are deleted with their rows by the store's sweep (in
    #: bounded passes); null keeps them forever
    batch_retain_days: int | None = Field(default=90, ge=1, le=36_500)

    @field_validator("from_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not E164.fullmatch(value):
            raise ValueError("must be an E.164 number of your Twilio account, e.g. +14155550100")
        return value


#: the YAML file being loaded, as parsed (read once, by :func:`load`)
_yaml_data: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("sipctl_yaml", default=None)


class _YamlData(PydanticBaseSettingsSource):
    """The YAML file's settings, parsed once by :func:`load` (so that its problems are reported once)."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


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
        data = _yaml_data.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if data:
            sources.append(_YamlData(settings_cls, data))
        return tuple(sources)


class Settings(_Sourced):
    """Non-secret settings. Priority: explicit arguments > ``SIPCTL_*`` env > YAML file > defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
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
    console: Console = Console()
    state: StoreSettings = StoreSettings()
    twilio: TwilioSettings = TwilioSettings()
    #: post-call analysis (#17): the default text model and the bounded pool that runs the analyses
    analysis: AnalysisSettings = AnalysisSettings()
    #: the call history (#17): retention and exports
    history: History = History()

    @field_validator("profiles")
    @classmethod
    def _some_profile(cls, value: dict[str, AgentProfile]) -> dict[str, AgentProfile]:
        if not value:
            raise ValueError("at least one agent profile is required")
        return value

    def profile(self, name: str | None = None) -> AgentProfile:
        return self.profiles[name or self.default_profile]



DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"
_TWILIO_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_TWILIO_KEY_SID = re.compile(r"^SK[0-9a-fA-F]{32}$")
_OPENAI_PROJECT_ID = re.compile(r"^proj_[A-Za-z0-9]{4,64}$")
#: the variables that configure Twilio; any of them set without TWILIO_ACCOUNT_SID is a mistake worth naming
TWILIO_VARIABLES = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_KEY_SID", "TWILIO_API_KEY_SECRET")


class TwilioCredentials(BaseModel):
    """Twilio's credentials and the two addresses the Twilio path needs, all from the environment.

    The auth token is always required: Twilio signs its webhooks with it (``X-Twilio-Signature``), even when the
    REST calls authenticate with an API key pair. Signatures are checked against ``public_url`` + path, the
    address Twilio was given, not the one the app sees behind a proxy."""

    model_config = ConfigDict(frozen=True)

    account_sid: str
    auth_token: SecretStr
    #: an API key pair for the REST calls (Basic auth with the key instead of the account SID and token)
    api_key_sid: str | None = None
    api_key_secret: SecretStr | None = None
    api_base_url: str = DEFAULT_TWILIO_API_BASE_URL
    #: ``proj_…``: the SIP URI Twilio dials is ``sip:<project>@sip.api.openai.com;transport=tls``
    openai_project_id: str
    #: SIPCTL_PUBLIC_URL without its trailing slash: the https base URL Twilio reaches this service at
    public_url: str

    def rest_auth(self) -> tuple[str, str]:
        """Basic-auth user and password of the REST calls: the API key pair when set, else SID and token."""
        if self.api_key_sid and self.api_key_secret is not None:
            return self.api_key_sid, self.api_key_secret.get_secret_value()
        return self.account_sid, self.auth_token.get_secret_value()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> tuple[TwilioCredentials | None, list[str]]:
        """The credentials (None when Twilio is not configured) and every problem found; no message repeats a
        secret."""
        sid = env.get("TWILIO_ACCOUNT_SID", "").strip()
        token = env.get("TWILIO_AUTH_TOKEN", "").strip()
        key_sid = env.get("TWILIO_API_KEY_SID", "").strip()
        key_secret = env.get("TWILIO_API_KEY_SECRET", "").strip()
        base = env.get("TWILIO_API_BASE_URL", "").strip() or DEFAULT_TWILIO_API_BASE_URL
        project = env.get("OPENAI_PROJECT_ID", "").strip()
        public = env.get("SIPCTL_PUBLIC_URL", "").strip()
        if not sid:
            stray = [name for name in TWILIO_VARIABLES if env.get(name, "").strip()]
            if stray:
                return None, [
                    f"TWILIO_ACCOUNT_SID is not set but {', '.join(stray)} is; export the account SID (AC…, Twilio "
                    "console → Account info) to use Twilio, or unset the others"
                ]
            return None, []
        problems = []
        if not _TWILIO_ACCOUNT_SID.match(sid):
            problems.append(
                f"TWILIO_ACCOUNT_SID: {sid[:40]!r} is not an account SID ('AC' and 32 hex digits); copy it from the "
                "Twilio console → Account info"
            )
        if not token:
            problems.append(
                "TWILIO_AUTH_TOKEN is not set; export the account's auth token (Twilio console → Account info): "
                "Twilio signs its webhooks with it, so it is needed even with an API key pair"
            )
        if bool(key_sid) != bool(key_secret):
            missing = "TWILIO_API_KEY_SECRET" if key_sid else "TWILIO_API_KEY_SID"
            problems.append(f"{missing} is not set; an API key needs both TWILIO_API_KEY_SID and "
                            "TWILIO_API_KEY_SECRET (or unset both to use the account SID and auth token)")
        elif key_sid and not _TWILIO_KEY_SID.match(key_sid):
            problems.append(
                f"TWILIO_API_KEY_SID: {key_sid[:40]!r} is not an API key SID ('SK' and 32 hex digits); create one "
                "in the Twilio console → API keys & tokens"
            )
        if not base.startswith(("http://", "https://")):
            problems.append(
                f"TWILIO_API_BASE_URL: {base!r} is not an http(s) URL; e.g. {DEFAULT_TWILIO_API_BASE_URL} (or unset it)"
            )
        if not project:
            problems.append(
                "OPENAI_PROJECT_ID is not set but Twilio is configured (TWILIO_ACCOUNT_SID); export the OpenAI "
                "project id (proj_…, platform.openai.com → Settings → Project): Twilio dials "
                "sip:<project>@sip.api.openai.com"
            )
        elif not _OPENAI_PROJECT_ID.match(project):
            problems.append(
                f"OPENAI_PROJECT_ID: {project[:80]!r} is not a project id (proj_ and letters or digits); copy it from "
                "platform.openai.com → Settings → Project"
            )
        problem = public_url_problem(public)
        if problem is not None:
            problems.append(problem)
        if problems:
            return None, problems
        return (
            cls(
                account_sid=sid,
                auth_token=SecretStr(token),
                api_key_sid=key_sid or None,
                api_key_secret=SecretStr(key_secret) if key_secret else None,
                api_base_url=base.rstrip("/"),
                openai_project_id=project,
                public_url=public.rstrip("/"),
            ),
            [],
        )


def public_url_problem(value: str) -> str | None:
    """Why ``value`` cannot be ``SIPCTL_PUBLIC_URL`` (with Twilio configured), or None. https is required except on
    loopback (the demo and the tests)."""
    if not value:
        return (
            "SIPCTL_PUBLIC_URL is not set but Twilio is configured (TWILIO_ACCOUNT_SID); export the https base URL "
            "Twilio reaches this service at (e.g. https://calls.example.com): callback URLs are built from it and "
            "Twilio's signatures are checked against it"
        )
    parts = urlsplit(value)
    loopback = parts.scheme == "http" and (parts.hostname or "") in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not loopback:
        return (
            f"SIPCTL_PUBLIC_URL: {value[:200]!r} is not an https URL; Twilio must reach the service over https "
            "(e.g. https://calls.example.com; plain http only on 127.0.0.1 for tests)"
        )
    if not parts.hostname or parts.query or parts.fragment:
        return (
            f"SIPCTL_PUBLIC_URL: {value[:200]!r} must be a base URL with a host and no query or fragment, e.g. "
            "https://calls.example.com or https://example.com/sipctl"
        )
    return None


class Secrets(BaseModel):
    """Secrets and endpoints read only from the environment, never from YAML."""

    model_config = ConfigDict(frozen=True)

    openai_api_key: SecretStr | None = None
    webhook_secrets: tuple[SecretStr, ...] = ()
    openai_base_url: str = DEFAULT_BASE_URL
    #: bearer token of the admin API and the live-calls page; both are off when unset
    admin_token: SecretStr | None = None
    #: SIPCTL_DATABASE_URL: PostgreSQL shared by replicas (``postgresql://…``); None: the embedded SQLite file
    database_url: SecretStr | None = None
    #: TWILIO_* with OPENAI_PROJECT_ID and SIPCTL_PUBLIC_URL; None: Twilio is not configured (no /twilio routes)
    twilio: TwilioCredentials | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, required: bool = False) -> Secrets:
        """Read and check every variable; one :class:`ConfigError` lists every problem (``required``: also
        the credentials ``sipctl serve`` cannot run without). Secret values never appear in a message."""
        env = os.environ if environ is None else environ
        key = env.get("OPENAI_API_KEY", "").strip()
        raw_secrets = env.get("OPENAI_WEBHOOK_SECRET", "")
        secrets = tuple(s.strip() for s in raw_secrets.split(",") if s.strip())
        base = env.get("OPENAI_BASE_URL", "").strip() or DEFAULT_BASE_URL
        problems = []
        if not base.startswith(("http://", "https://")):
            problems.append(f"OPENAI_BASE_URL: {base!r} is not an http(s) URL; e.g. {DEFAULT_BASE_URL}")
        for i, secret in enumerate(secrets):
            why = webhook_secret_problem(secret)
            if why is not None:
                which = f"secret #{i + 1}" if len(secrets) > 1 else "the secret"
                problems.append(
                    f"OPENAI_WEBHOOK_SECRET: {which} {why}; copy the whole signing secret shown when the webhook "
                    "was created (platform.openai.com → Settings → Project → Webhooks), several separated by "
                    "commas while rotating"
                )
        admin = env.get("SIPCTL_ADMIN_TOKEN", "").strip()
        if admin and (weak := admin_token_problem(admin)) is not None:
            problems.append(f"SIPCTL_ADMIN_TOKEN: too weak ({weak}); {ADMIN_TOKEN_FIX}")
            admin = ""
        database_url = env.get("SIPCTL_DATABASE_URL", "").strip()
        if database_url and not database_url.startswith(("postgresql://", "postgres://")):
            problems.append(
                "SIPCTL_DATABASE_URL: not a PostgreSQL URL (it must start with postgresql://); e.g. "
                "postgresql://sipctl:PASSWORD@db.internal:5432/sipctl, or unset it to use the SQLite file state.path"
            )
            database_url = ""
        twilio, twilio_problems = TwilioCredentials.from_env(env)
        problems.extend(twilio_problems)
        if required:
            problems.extend(_missing_credentials(api_key=bool(key), webhook_secret=bool(secrets)))
        if problems:
            raise ConfigError(problems)
        return cls(
            twilio=twilio,
            admin_token=SecretStr(admin) if admin else None,
            openai_api_key=SecretStr(key) if key else None,
            webhook_secrets=tuple(SecretStr(s) for s in secrets),
            openai_base_url=base.rstrip("/"),
            database_url=SecretStr(database_url) if database_url else None,
        )

    def require_for_serving(self) -> None:
        problems = _missing_credentials(
            api_key=self.openai_api_key is not None, webhook_secret=bool(self.webhook_secrets)
        )
        if problems:
            raise ConfigError(problems)


def _missing_credentials(*, api_key: bool, webhook_secret: bool) -> list[str]:
    problems = []
    if not api_key:
        problems.append("OPENAI_API_KEY is not set; export your project's API key")
    if not webhook_secret:
        problems.append(
            "OPENAI_WEBHOOK_SECRET is not set; export the webhook's signing secret (whsec_…), "
            "several separated by commas while rotating"
        )
    return problems


# ---- where a value came from, and one readable line per problem ----------------------------------------------


def format_loc(loc: Sequence[int | str]) -> str:
    """``("routes", 0, "profile")`` -> ``routes[0].profile``: list positions in brackets, keys after dots."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def env_variable(loc: Sequence[int | str], environ: Mapping[str, str] | None = None) -> str | None:
    """The ``SIPCTL_*`` variable that set the value at ``loc``, if one did: the variable of that very field
    (``SIPCTL_LIMITS__MAX_CONCURRENT_CALLS``), or of a parent whose JSON value holds it (``SIPCTL_ROUTES``)."""
    env = os.environ if environ is None else environ
    names = {name.upper(): value for name, value in env.items() if name.upper().startswith(ENV_PREFIX)}
    parts = [str(p).upper() for p in loc]
    for n in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:n])
        if name not in names:
            continue
        if n == len(parts):
            return name
        try:
            node: Any = json.loads(names[name])
        except ValueError:
            return name
        for part in loc[n:]:
            in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
            in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            if in_dict or in_list:
                node = node[part]
            else:
                return None  # the parent's JSON does not hold this value: it came from the file
        return name
    return None


def _describe(error: Any, environ: Mapping[str, str] | None = None) -> str:
    loc: tuple[int | str, ...] = tuple(error.get("loc", ()))
    path = format_loc(loc)
    variable = env_variable(loc, environ)
    where = f"{variable} ({path})" if variable else path
    last = str(loc[-1]) if loc else ""
    if error.get("type") == "extra_forbidden":
        hint = MIGRATION_HINTS.get(last)
        if hint:
            return f"{where}: {hint}"
        fix = "unset the variable" if variable else "delete it"
        return f"{where}: unknown field (value {error.get('input')!r}); check the spelling or {fix}"
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == VALUE_NAMED or "(got " in msg:
        return f"{where}: {msg}"
    return f"{where}: {msg} (got {error.get('input')!r})"


def problems_from(exc: ValidationError) -> list[str]:
    return [_describe(e) for e in exc.errors()]


def _env_parse_problem(exc: SettingsError) -> str:
    """pydantic-settings could not decode a ``SIPCTL_*`` value (a list or mapping written as non-JSON)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field_name = match.group(1) if match else ""
    prefix = (ENV_PREFIX + field_name).upper()
    names = sorted(n for n in os.environ if n.upper() == prefix or n.upper().startswith(prefix + "__"))
    where = ", ".join(names) or f"the {ENV_PREFIX}* environment"
    return (
        f"{where}: not valid JSON for {field_name or 'a setting'}; a list or mapping in an environment variable "
        f"is written as JSON (e.g. {ENV_PREFIX}ROUTES='[{{\"dialed\": [\"+1800*\"], \"profile\": \"sales\"}}]'); "
        "fix or unset it"
    )


# ---- the YAML file -----------------------------------------------------------------------------------------


def yaml_problem(path: Path | str, exc: yaml.YAMLError) -> str:
    """A YAML syntax error as one line, ``file:line:column: not valid YAML: what``. When the parser ran off
    the end of the file, the place to fix is where the unclosed construct began, so that is the position."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        problem = " ".join((exc.problem or "syntax error").split())
        context = " ".join(exc.context.split()) if exc.context else None
        mark = exc.problem_mark
        at_end = "<stream end>" in problem or "end of stream" in problem
        if at_end and context and exc.context_mark is not None:
            mark = exc.context_mark
            problem = f"{context}: {problem}"
        elif context and exc.context_mark is not None:
            problem = f"{problem} ({context} at line {exc.context_mark.line + 1})"
        return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
    return f"{path}: not valid YAML: {' '.join(str(exc).split())}"


def read_config_file(path: Path, origin: str) -> tuple[dict[str, Any], list[str]]:
    """The YAML file as a mapping, or the problems that keep it from being one (each one line, naming ``origin``
    (``--config``, ``SIPCTL_CONFIG``) when the path itself is wrong, the file otherwise)."""
    if path.is_dir():
        return {}, [f"{origin}: {str(path)!r} is a directory; point it at a YAML config file"]
    if not path.exists():
        return {}, [f"{origin}: {str(path)!r} does not exist; point it at a YAML config file"]
    try:
        with path.open("rb") as f:
            raw = f.read()
    except OSError as exc:
        return {}, [
            f"{path}: cannot read the config file ({exc.strerror or exc}); make it readable by the user sipctl "
            "runs as (e.g. chmod 0640 and group sipctl)"
        ]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {}, [f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return {}, [yaml_problem(path, exc)]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return {}, [f"{path}: the top level must be a mapping of settings, got {type(data).__name__}"]
    return data, []


# ---- loading: every problem of the file and the environment in one run -----------------------------------------

#: checks a profile beyond its types: (name, profile, fields already reported as invalid) -> problems
ProfileCheck = Callable[[str, AgentProfile, frozenset[str]], list[str]]


@dataclass(frozen=True)
class Loaded:
    """The outcome of :func:`load`: the settings (None when they do not validate), every problem found, and
    where the settings came from."""

    settings: Settings | None
    problems: list[str]
    #: the YAML file read (None: built-in defaults and the environment only)
    path: Path | None = None
    #: how the operator named that file: ``--config``, ``SIPCTL_CONFIG``, ``<scenario>: config``, or None (default)
    origin: str | None = None
    #: the YAML file as parsed
    data: Mapping[str, Any] = field(default_factory=dict)

    def source_of(self, name: str) -> str | None:
        """Who set the top-level setting ``name``: its ``SIPCTL_*`` variable, ``name: value in <file>``, or None
        (the default)."""
        variable = env_variable((name,))
        if variable is not None:
            return variable
        if name in self.data and self.path is not None:
            return f"{name} in {self.path}"
        return None


def load(
    path: Path | str | None = None, *, origin: str | None = None, profile_check: ProfileCheck | None = None
) -> Loaded:
    """Load settings from ``path`` (or ``SIPCTL_CONFIG``, or ``config/sipctl.yaml`` if present) under env, and
    find every problem at once: the file, type errors (named by the environment variable that set the value
    when one did), a bad ``default_profile``, routes naming unknown profiles, report endpoints whose signing
    secret is missing from the environment, and what ``profile_check`` finds, which also runs on the valid part
    of a profile whose other fields have type errors.
    """
    if path is None:
        env_path = os.environ.get("SIPCTL_CONFIG", "").strip()
        if env_path:
            path, origin = env_path, "SIPCTL_CONFIG"
        elif DEFAULT_CONFIG_PATH.is_file():
            path, origin = DEFAULT_CONFIG_PATH, None
    elif origin is None:
        origin = "--config"
    yaml_path = Path(path) if path is not None else None
    data: dict[str, Any] = {}
    if yaml_path is not None:
        data, file_problems = read_config_file(yaml_path, origin or str(yaml_path))
        if file_problems:
            return Loaded(None, file_problems, yaml_path, origin, data)
    token = _yaml_data.set(data)
    try:
        problems: list[str] = []
        settings: Settings | None = None
        try:
            settings = Settings()
        except ValidationError as exc:
            problems.extend(problems_from(exc))
        except SettingsError as exc:
            return Loaded(None, [_env_parse_problem(exc)], yaml_path, origin, data)
        raw = _raw_settings()
        problems.extend(_profile_name_problems(raw))
        if profile_check is not None:
            if settings is not None:
                for name, profile in settings.profiles.items():
                    problems.extend(profile_check(name, profile, frozenset()))
            elif raw is not None and isinstance(raw.profiles, dict):
                for name, profile_data in raw.profiles.items():
                    partial = _best_effort_profile(profile_data)
                    if partial is not None:
                        problems.extend(profile_check(str(name), *partial))
        problems.extend(_cross_reference_problems(settings, raw))
        return Loaded(settings if not problems else None, problems, yaml_path, origin, data)
    finally:
        _yaml_data.reset(token)


def load_settings(
    path: Path | str | None = None, *, origin: str | None = None, profile_check: ProfileCheck | None = None
) -> Settings:
    """:func:`load`, raising :class:`ConfigError` listing every problem."""
    loaded = load(path, origin=origin, profile_check=profile_check)
    if loaded.problems or loaded.settings is None:
        raise ConfigError(loaded.problems)
    return loaded.settings


_Model = TypeVar("_Model", bound=BaseModel)


class _RawSettings(_Sourced):
    """The cross-referenced settings as written, read from the same sources, so that problems are still found
    and reported together when the full Settings does not validate."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

    default_profile: Any = "default"
    profiles: Any = None
    routes: Any = None
    reports: Any = None


def _raw_settings() -> _RawSettings | None:
    try:
        return _RawSettings()
    except (ValidationError, SettingsError):
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


def _profile_name_problems(names: _RawSettings | None) -> list[str]:
    if names is None or not isinstance(names.profiles, dict) or not isinstance(names.default_profile, str):
        return []  # absent (built-in default profile) or mistyped (reported by Settings itself)
    if names.default_profile in names.profiles:
        return []
    return [
        f"default_profile: {names.default_profile!r} is not a profile; "
        f"use one of {', '.join(sorted(map(str, names.profiles))) or '(none defined)'}"
    ]


def _valid_items(model: type[_Model], items: Any) -> list[tuple[int, _Model]]:
    """The entries of a list as written that validate on their own (the others are reported already)."""
    if not isinstance(items, list):
        return []
    out = []
    for i, item in enumerate(items):
        try:
            out.append((i, model.model_validate(item)))
        except ValidationError:
            continue
    return out


def _cross_reference_problems(settings: Settings | None, raw: _RawSettings | None) -> list[str]:
    """What refers to something else: routes to profiles, report endpoints to environment variables. Checked on
    whatever validates, so these problems come with the type errors, not after they are fixed."""
    if settings is not None:
        profiles: Collection[str] | None = settings.profiles
        routes = list(enumerate(settings.routes))
        endpoints = list(enumerate(settings.reports.endpoints))
    elif raw is not None:
        profiles = list(map(str, raw.profiles)) if isinstance(raw.profiles, dict) else None
        if raw.profiles is None:
            profiles = ["default"]
        routes = _valid_items(Route, raw.routes)
        reports = raw.reports if isinstance(raw.reports, dict) else {}
        endpoints = _valid_items(ReportEndpoint, reports.get("endpoints"))
    else:
        return []
    return route_problems(routes, profiles) + endpoint_problems(endpoints)


def route_problems(routes: Sequence[tuple[int, Route]], profiles: Collection[str] | None) -> list[str]:
    problems = []
    for i, route in routes:
        if profiles is not None and route.profile not in profiles:
            problems.append(
                f"routes[{i}].profile: {route.profile!r} is not a profile; use one of "
                f"{', '.join(sorted(profiles)) or '(none defined)'}"
            )
        if route.header is not None and not route.values:
            problems.append(f"routes[{i}].values: list the {route.header} values that select this route")
        if route.header is None and not route.dialed:
            problems.append(f"routes[{i}]: a route needs dialed patterns or a header with values")
    return problems


def endpoint_problems(
    endpoints: Sequence[tuple[int, ReportEndpoint]], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Each report endpoint's signing secret, from the environment variable its ``secret_env`` names."""
    env = os.environ if environ is None else environ
    problems = []
    for i, endpoint in endpoints:
        if endpoint.secret_env is None:
            continue
        where = f"reports.endpoints[{i}].secret_env"
        secret = env.get(endpoint.secret_env, "").strip()
        if not secret:
            problems.append(
                f"{where}: the environment variable {endpoint.secret_env} is not set; export the endpoint's "
                "whsec_… signing secret there (or delete secret_env to send the events unsigned)"
            )
            continue
        why = webhook_secret_problem(secret)
        if why is not None:
            problems.append(
                f"{where}: the secret in the environment variable {endpoint.secret_env} {why}; put the "
                "endpoint's whole whsec_… signing secret there"
            )
    return problems
