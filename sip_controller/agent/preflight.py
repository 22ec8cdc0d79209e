"""Preflight: the one validation behind ``sipctl check-config`` and every command's start-up.

:func:`validate` loads the config under the environment and finds every problem in one run: the file, type
errors, cross-references (routes, default profile, report endpoints' secrets), every profile's exact accept body
and deferred update, and, for ``serve``, the credentials in the environment. Findings come back with the path
the operator wrote (``profiles.sales.voice``, ``profiles.sales.session.temperature``, ``routes[0].profile``), so a
message points at the line to fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sip_controller.agent import session, templates
from sip_controller.agent.analysis import check_profile_analysis, model_retirement
from sip_controller.agent.operator_tools import load_python_handler
from sip_controller.agent.profile import HttpTool, PythonTool
from sip_controller.agent.validation import Context, Finding, check_session
from sip_controller.config import AgentProfile, ConfigError, Loaded, Secrets, Settings, load

#: where a body path comes from in a profile; structured fields keep the rest of the path
_BODY_TO_PROFILE: tuple[tuple[str, str, bool], ...] = (
    ("audio.input.turn_detection", "turn_detection", True),
    ("audio.input.transcription", "transcription", True),
    ("audio.input.noise_reduction", "noise_reduction", False),
    ("audio.input.format", "codec", False),
    ("audio.output.format", "codec", False),
    ("audio.output.voice", "voice", False),
    ("audio.output.speed", "speed", False),
    ("reasoning", "reasoning_effort", False),
    ("parallel_tool_calls", "parallel_tool_calls", False),
    ("max_output_tokens", "max_output_tokens", False),
    ("tool_choice", "tool_choice", True),
    ("tools", "tools", True),
    ("model", "model", False),
    ("instructions", "instructions", False),
    ("prompt", "prompt", True),
)
_SEGMENT = re.compile(r"[^.\[\]]+")


def _in_override(override: dict[str, Any], body_path: str) -> bool:
    node: Any = override
    for part in _SEGMENT.findall(body_path):
        if isinstance(node, list):
            return True  # a list written in the override replaces the built one whole
        if not (isinstance(node, dict) and part in node):
            return False
        node = node[part]
    return True


def config_path(name: str, profile: AgentProfile, body_path: str) -> str:
    """Translate a path inside the built body into the profile field that produced it."""
    base = f"profiles.{name}"
    if profile.session and _in_override(profile.session, body_path):
        return f"{base}.session.{body_path}"
    for prefix, field, keep_rest in _BODY_TO_PROFILE:
        if body_path == prefix or body_path.startswith((prefix + ".", prefix + "[")):
            rest = body_path[len(prefix):] if keep_rest else ""
            return f"{base}.{field}{rest}"
    return f"{base}.session.{body_path}"


def check_profile(name: str, profile: AgentProfile, today: date) -> list[Finding]:
    found: list[Finding] = []
    base = f"profiles.{name}"
    for problem in templates.problems(profile.instructions, profile.template_headers, profile.variables):
        found.append(Finding(f"{base}.instructions", problem))
    voicemail = profile.outbound.voicemail
    if voicemail is not None and voicemail.message is not None:  # said after the beep: no SIP headers there
        for problem in templates.problems(voicemail.message, (), profile.variables):
            found.append(Finding(f"{base}.outbound.voicemail.message", problem))
    if profile.greeting is not None and not profile.greeting.strip():
        found.append(Finding(f"{base}.greeting", "must not be empty; use null to wait for the caller to speak first"))
    ctx = Context(today=today, allow_pcm=profile.allow_pcm, vad_on_accept=profile.vad_on_accept)
    body = session.accept_body(profile)
    for f in check_session(body, ctx):
        found.append(Finding(config_path(name, profile, f.path), f.message, f.severity))
    deferred = session.deferred_vad_patch(profile)
    if deferred is not None:
        update_ctx = Context(today=today, update=True, allow_pcm=profile.allow_pcm, model=profile.model)
        for f in check_session(session.session_patch(profile, deferred), update_ctx):
            found.append(Finding(config_path(name, profile, f.path), f.message, f.severity))
    found.extend(_feature_findings(name, profile))
    found.extend(check_profile_analysis(name, profile.analysis, today))
    for i, entry in enumerate(profile.tools):
        if isinstance(entry, dict) and entry.get("type") == "function":
            found.append(
                Finding(
                    f"{base}.tools[{i}]",
                    f"function tool {entry.get('name')!r} has no handler in sip-controller: the model's calls get an "
                    "error output; only built-in tools and MCP tools (run by OpenAI) do work here",
                    "warning",
                )
            )
    return _dedupe(found)


def _feature_findings(name: str, profile: AgentProfile) -> list[Finding]:
    base = f"profiles.{name}"
    found: list[Finding] = []
    targets = profile.transfer.targets
    if "transfer_call" in profile.tools and not targets:
        found.append(Finding(f"{base}.transfer.targets", "transfer_call needs at least one target, e.g. "
                             "{sales: 'tel:+14155550199'}"))
    for digit, action in profile.dtmf.actions.items():
        if action.action == "transfer" and action.target not in targets:
            known = ", ".join(targets) or "none defined"
            found.append(Finding(f"{base}.dtmf.actions.{digit}.target",
                                 f"{action.target!r} is not a transfer target ({known})"))
    if "wait_on_hold" in profile.tools and not _transcribes_the_caller(profile):
        found.append(Finding(
            config_path(name, profile, "audio.input.transcription"),
            "wait_on_hold needs caller transcription: hold mode notices that a person is back from what the caller's "
            "side says; set transcription (e.g. {model: gpt-4o-mini-transcribe}) or remove wait_on_hold from tools",
        ))
    for i, entry in enumerate(profile.tools):
        if isinstance(entry, PythonTool):
            try:
                load_python_handler(entry.handler)
            except ValueError as exc:
                found.append(Finding(f"{base}.tools[{i}].handler", str(exc)))
        elif isinstance(entry, HttpTool) and entry.secret_env and not os.environ.get(entry.secret_env):
            found.append(Finding(f"{base}.tools[{i}].secret_env",
                                 f"environment variable {entry.secret_env} is not set here; the tool's requests "
                                 "will fail until it holds a whsec_ secret", "warning"))
    return found


def _transcribes_the_caller(profile: AgentProfile) -> bool:
    """The exact accept body turns caller transcription on (the ``session`` block may turn it off)."""
    audio = session.accept_body(profile).get("audio")
    source = audio.get("input") if isinstance(audio, dict) else None
    return isinstance(source, dict) and bool(source.get("transcription"))


def _dedupe(found: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for f in found:
        key = (f.path, f.message, f.severity)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def notes(settings: Settings, *, twilio_configured: bool | None = None) -> list[str]:
    """What the operator should know that is not a problem (printed by check-config). ``twilio_configured``:
    whether the environment configures Twilio (None: not known)."""
    out = []
    for name, profile in settings.profiles.items():
        if profile.hold.park is not None and twilio_configured is False:
            out.append(
                f"profiles.{name}.hold.park: parking needs Twilio (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, "
                "OPENAI_PROJECT_ID, SIPCTL_PUBLIC_URL) and a call Twilio bridged; until then its holds stay on hold "
                "mode in the OpenAI session"
            )
        if session.deferred_vad_patch(profile) is not None:
            out.append(
                f"profiles.{name}.turn_detection: threshold/prefix_padding_ms/silence_duration_ms are left out of "
                "the accept body (OpenAI is reported to refuse them on /accept for SIP) and sent by session.update "
                "right after the sideband attaches; the model does not answer on its own until OpenAI confirms it"
            )
    return out


def _field(path: str) -> str:
    """``profiles.x.tools[2].name`` -> ``tools``."""
    parts = path.split(".", 3)
    return parts[2].split("[", 1)[0] if len(parts) > 2 else ""


@dataclass(frozen=True)
class Validation:
    """Everything one validation run found. ``settings`` (and, for serve, ``secrets``) are set only when there
    is no error."""

    settings: Settings | None
    secrets: Secrets | None
    errors: list[str]
    warnings: list[Finding]
    loaded: Loaded


def validate(
    path: Path | str | None = None,
    *,
    today: date | None = None,
    serve: bool = False,
    origin: str | None = None,
) -> Validation:
    """Load and check everything, collecting every error: what ``sipctl check-config`` prints and what every
    command refuses to start with. ``serve``: also the OpenAI credentials in the environment (the simulator
    brings its own). ``origin``: how the operator named ``path`` (default ``--config``)."""
    day = today or datetime.now(UTC).date()
    warnings: list[Finding] = []

    def check(name: str, profile: AgentProfile, already_reported: frozenset[str]) -> list[str]:
        found = [f for f in check_profile(name, profile, day) if _field(f.path) not in already_reported]
        warnings.extend(f for f in found if f.severity == "warning")
        return [str(f) for f in found if f.severity == "error"]

    loaded = load(path, origin=origin, profile_check=check)
    errors = list(loaded.problems)
    for f in _default_analysis_model(loaded.settings, day):
        if f.severity == "warning":
            warnings.append(f)
        else:
            errors.append(str(f))
    secrets: Secrets | None = None
    if serve:
        try:
            secrets = Secrets.from_env(required=True)
        except ConfigError as exc:
            errors.extend(exc.problems)
        problem = jsonl_path_problem(loaded.settings.reports.jsonl_path) if loaded.settings is not None else None
        if problem is not None:
            errors.append(problem)
    ok = not errors
    return Validation(loaded.settings if ok else None, secrets if ok else None, errors, warnings, loaded)


def _default_analysis_model(settings: Settings | None, today: date) -> list[Finding]:
    """``analysis.model`` when a profile's analysis uses it (names no model of its own): shut down or shutting
    down (a profile that names its model is checked with the profile)."""
    if settings is None or not any(p.analysis is not None and p.analysis.model is None
                                   for p in settings.profiles.values()):  # fmt: skip
        return []
    retiring = model_retirement(settings.analysis.model, today)
    if retiring is None:
        return []
    severity, message = retiring
    return [Finding("analysis.model", f"{message} (the model of every analysis block that names none)", severity)]


def jsonl_path_problem(jsonl_path: str | None) -> str | None:
    """Why the call log cannot be written at ``reports.jsonl_path`` on this host (a folder that cannot be made or
    written, a path that is a folder or a read-only file), or None. Missing folders are fine when the nearest
    existing one is writable: they are made at the first write."""
    if not jsonl_path:
        return None
    path = Path(jsonl_path)
    why: str | None = None
    if path.exists():
        if path.is_dir():
            why = "it is a folder"
        elif not os.access(path, os.W_OK):
            why = "the file is not writable"
    else:
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            why = f"{str(folder)!r} is not a folder"
        elif not os.access(folder, os.W_OK | os.X_OK):
            why = f"the folder {str(folder)!r} is not writable"
    if why is None:
        return None
    return (
        f"reports.jsonl_path: cannot write the call log {jsonl_path!r} ({why}); choose a file in a writable folder "
        "(or SIPCTL_REPORTS__JSONL_PATH)"
    )


def load_checked(
    path: Path | str | None = None, *, today: date | None = None, serve: bool = False, origin: str | None = None
) -> tuple[Settings, list[Finding]]:
    """:func:`validate`, raising :class:`ConfigError` listing every error; returns the settings and warnings."""
    result = validate(path, today=today, serve=serve, origin=origin)
    if result.errors or result.settings is None:
        raise ConfigError(result.errors)
    return result.settings, result.warnings
