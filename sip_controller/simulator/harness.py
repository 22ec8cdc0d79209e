"""Run scripted calls against the real controller (uvicorn on loopback) and the simulator; check outcomes.

Used by ``sipctl demo``, ``sipctl simulate`` and the end-to-end tests. :func:`prepare` is what ``sipctl simulate``
does before any call: the scenario, the config it names (or ``--config``), the start-up validation, and a check
that the config can serve the scenario at all.

Time compression: the simulator multiplies the caller's durations by ``time_scale``; :func:`run_scenario` also
multiplies the controller's per-profile policy durations by the same factor (:func:`scale_settings`), so a
20-minute hold or a 10-minute maximum call runs in seconds with both sides keeping the same proportions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets as secrets_module
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import SecretStr
from starlette.applications import Starlette

from sip_controller.agent import preflight, session, templates
from sip_controller.agent.analysis import CallAnalysis
from sip_controller.agent.profile import AgentProfile, HttpTool, Outbound, PythonTool, ToolEntry, Voicemail
from sip_controller.agent.validation import Finding
from sip_controller.calls.incoming import IncomingCall, SipHeader
from sip_controller.calls.report import CallRecord, report_document
from sip_controller.calls.routing import choose_profile, screen_caller
from sip_controller.config import ConfigError, Secrets, Settings, TwilioCredentials
from sip_controller.service.app import Runtime, create_app
from sip_controller.service.loopback import RunningServer, bind_socket, serve
from sip_controller.simulator import (
    CallSpec,
    Expectation,
    InboundCall,
    OutboundCall,
    ReportExpectation,
    Scenario,
    ScenarioError,
    SimCall,
    Simulator,
    TwilioAccount,
    TwilioCall,
    TwilioNumber,
    TwilioScenario,
    TwilioSide,
    check_expectations,
    check_twilio_call,
    load_scenario,
    new_webhook_secret,
)
from sip_controller.simulator.batch_clock import SimClock
from sip_controller.simulator.batch_run import BatchOutcome, print_batch_report, run_batch, with_do_not_call
from sip_controller.simulator.scenario import OutboundBatch
from sip_controller.simulator.webhook_sender import sip_headers
from sip_controller.state.sqlite import SQLiteStore


@dataclass
class CallOutcome:
    spec: CallSpec
    sim: SimCall
    record: CallRecord | None
    problems: list[str] = field(default_factory=list)
    #: the call's post-call analysis as stored (#17), when its profile has one
    analysis: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Stack:
    """A simulator and a controller wired to each other on loopback."""

    sim: Simulator
    app: Starlette
    server: RunningServer
    #: the admin API's bearer token (``running_stack(admin_token=...)``), for ``POST /v1/outbound``
    admin_token: str | None = None
    #: the outbound batches' simulated clock (``running_stack(batch_clock=...)``, #16)
    batch_clock: SimClock | None = None

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def twilio(self) -> TwilioSide:
        """The simulator's Twilio stand-in (``running_stack(twilio=...)``)."""
        if self.sim.twilio is None:
            raise RuntimeError("this stack has no Twilio stand-in: running_stack(twilio=TwilioAccount(...))")
        return self.sim.twilio


@dataclass(frozen=True)
class Prepared:
    """A scenario and the checked settings to run it with, and where those settings came from."""

    scenario: Scenario
    settings: Settings
    warnings: list[Finding]
    #: the config file read (None: built-in defaults and the environment)
    config_path: Path | None
    #: how it was chosen: ``--config``, ``<scenario file>: config``, ``SIPCTL_CONFIG``, or None (the default)
    config_origin: str | None

    def describe_config(self) -> str:
        """``config/sipctl.example.yaml (named by the scenario)``, for the top of a simulate report."""
        return _describe_config(self.config_path, self.config_origin, self.scenario)


def _describe_config(path: Path | None, origin: str | None, scenario: Scenario) -> str:
    if path is None:
        return "built-in defaults (no config file)"
    if origin is None:
        return f"{path} (the default)"
    if origin.endswith(": config") and scenario.config_path == path:
        return f"{path} (named by the scenario)"
    return f"{path} ({origin})"


def prepare(scenario_path: Path | str, config: Path | str | None = None) -> Prepared:
    """What ``sipctl simulate SCENARIO [--config FILE]`` runs: the scenario, then the config (``config`` if
    given, else the one the scenario names, else ``SIPCTL_CONFIG`` or ``config/sipctl.yaml``) through the same
    validation as every start-up, then :func:`serving_problems`. Raises :class:`ScenarioError` or
    :class:`ConfigError` naming what to fix."""
    scenario = load_scenario(scenario_path)
    if config is not None:
        path: Path | None = Path(config)
        origin: str | None = "--config"
    elif scenario.config_path is not None:
        path, origin = scenario.config_path, f"{scenario_path}: config"
    else:
        path, origin = None, None
    result = preflight.validate(path, origin=origin)
    if result.errors or result.settings is None:
        raise ConfigError(result.errors)
    loaded = result.loaded
    problems = serving_problems(scenario, result.settings)
    if problems:
        used = _describe_config(loaded.path, loaded.origin, scenario)
        if loaded.path is not None:
            used = f"the config {used}"
        lines = [f"{scenario_path}: {used} cannot serve this scenario:", *(f"  - {p}" for p in problems)]
        if scenario.config_path is not None and scenario.config_path != loaded.path:
            lines.append(f"the scenario was written for {scenario.config_path}: run it without --config to use that")
        raise ScenarioError("\n".join(lines))
    return Prepared(scenario, result.settings, result.warnings, loaded.path, loaded.origin)


def _incoming(spec: CallSpec) -> IncomingCall:
    headers = tuple(SipHeader(**h) for h in sip_headers(spec, "proj_scenario"))
    return IncomingCall(call_id="scenario", webhook_id="scenario", headers=headers, received_at=datetime.now(UTC))


def _offered_tools(profile: AgentProfile) -> list[str]:
    tools = session.accept_body(profile).get("tools", [])
    return [t["name"] for t in tools if isinstance(t, dict) and t.get("type") == "function" and "name" in t]


def serving_problems(scenario: Scenario, settings: Settings) -> list[str]:
    """Why ``settings`` cannot give the calls of ``scenario`` the outcomes they expect, as far as the config alone
    tells: each call is routed and screened as the controller would, then its ``expect`` is held against the
    profile it reaches (a profile the config does not define or routes elsewhere, a transfer target or a tool
    that profile lacks, an ending it has no watchdog for, a caller it refuses). Empty: nothing in the config
    contradicts the scenario (the run decides the rest)."""
    problems: list[str] = []
    for i, spec in enumerate(scenario.calls):
        expect = spec.expect
        if expect is None:
            continue
        call = f"calls[{i}] ({spec.name})"
        incoming = _incoming(spec)
        refused = screen_caller(settings, incoming) is not None
        if refused:
            if expect.ended_reason not in (None, "rejected") or expect.ended_by not in (None, "reject"):
                problems.append(
                    f"{call}: this config refuses the caller {spec.caller} (callers), but the call expects "
                    f"ended_reason {expect.ended_reason or '-'}, ended_by {expect.ended_by or '-'}"
                )
            continue
        name = choose_profile(settings, incoming)
        if expect.profile is not None and expect.profile != name:
            if expect.profile not in settings.profiles:
                known = ", ".join(sorted(settings.profiles))
                problems.append(
                    f"{call}: expects profile {expect.profile}, which this config does not define ({known})"
                )
            else:
                problems.append(
                    f"{call}: expects profile {expect.profile}, but this config routes the call (dialled "
                    f"{spec.dialed}) to {name}"
                )
            continue
        profile = settings.profiles[name]
        targets = profile.transfer.targets
        if expect.transfer_target is not None and expect.transfer_target not in targets:
            known = ", ".join(targets) or "none defined"
            problems.append(
                f"{call}: expects transfer_target {expect.transfer_target}, but {expect.transfer_target} is not a "
                f"transfer target of profile {name} ({known})"
            )
        offered = _offered_tools(profile)
        for tool in expect.tools_called or ():
            if tool not in offered:
                problems.append(
                    f"{call}: expects the tool {tool}, which profile {name} does not offer "
                    f"({', '.join(offered) or 'no tools'})"
                )
        watchdogs = profile.watchdogs
        if expect.ended_reason == "budget_exceeded" and watchdogs.budget_usd is None:
            problems.append(f"{call}: expects budget_exceeded, but profile {name} has no watchdogs.budget_usd")
        if expect.ended_reason == "silence_timeout" and watchdogs.silence_timeout_s is None:
            problems.append(f"{call}: expects silence_timeout, but profile {name} has watchdogs.silence_timeout_s off")
        if expect.ended_reason in ("transferred", "transfer_failed") and not targets:
            problems.append(f"{call}: expects {expect.ended_reason}, but profile {name} has no transfer targets")
    if scenario.twilio is not None:
        problems.extend(twilio_serving_problems(scenario.twilio, settings))
    return problems


def twilio_serving_problems(scenario: TwilioScenario, settings: Settings) -> list[str]:
    """Why ``settings`` cannot place a scenario's outbound Twilio calls as written: a profile it does not define,
    variables the profile does not declare (or lacks), no caller ID among the account's numbers, a voicemail ending
    from a profile that leaves none."""
    problems: list[str] = []
    for i, out in enumerate(scenario.outbound):
        call = f"twilio.outbound[{i}] ({out.name})"
        name = out.profile or settings.default_profile
        profile = settings.profiles.get(name)
        if profile is None:
            problems.append(f"{call}: profile {name} is not defined by this config "
                            f"({', '.join(sorted(settings.profiles))})")  # fmt: skip
            continue
        declared = set(profile.variables)
        if set(out.variables) != declared:
            problems.append(
                f"{call}: variables {', '.join(sorted(out.variables)) or 'none'}, but profile {name} declares "
                f"{', '.join(sorted(declared)) or 'none'} (each call gives exactly those)"
            )
        caller_id = out.from_ or profile.outbound.from_number or settings.twilio.from_number
        if caller_id is None:
            problems.append(f"{call}: no caller ID: give from, or set the profile's outbound.from_number or "
                            "twilio.from_number")  # fmt: skip
        elif caller_id not in scenario.numbers:
            problems.append(f"{call}: the caller ID {caller_id} is not one of the scenario's twilio.numbers "
                            f"({', '.join(scenario.numbers)}); Twilio would refuse it (21210)")  # fmt: skip
        if out.report is not None and out.report.ended_reason == "voicemail" and profile.outbound.voicemail is None:
            problems.append(f"{call}: expects ended_reason voicemail, but profile {name} has no outbound.voicemail")
    if scenario.batch is not None:
        problems.extend(_batch_serving_problems(scenario, scenario.batch, settings))
    return problems


def _batch_serving_problems(scenario: TwilioScenario, batch: OutboundBatch, settings: Settings) -> list[str]:
    """Why ``settings`` cannot make a scenario's batch as written: its profile, its rows' variables, its caller ID."""
    where = f"twilio.batch ({batch.name})"
    name = batch.profile or settings.default_profile
    profile = settings.profiles.get(name)
    if profile is None:
        return [f"{where}: profile {name} is not defined by this config ({', '.join(sorted(settings.profiles))})"]
    problems: list[str] = []
    declared = set(profile.variables)
    for row in batch.all_rows():
        if set(row.variables) != declared:
            given = ", ".join(sorted(row.variables)) or "none"
            problems.append(f"{where}: the row for {row.to} gives variables {given}, but profile {name} declares "
                            f"{', '.join(sorted(declared)) or 'none'}")  # fmt: skip
            break
    caller_id = batch.from_ or profile.outbound.from_number or settings.twilio.from_number
    if caller_id is None:
        problems.append(f"{where}: no caller ID: give from, or set the profile's outbound.from_number or "
                        "twilio.from_number")  # fmt: skip
    elif caller_id not in scenario.numbers:
        problems.append(f"{where}: the caller ID {caller_id} is not one of the scenario's twilio.numbers "
                        f"({', '.join(scenario.numbers)})")  # fmt: skip
    return problems


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _scale_tool(entry: ToolEntry, factor: float) -> ToolEntry:
    if isinstance(entry, HttpTool | PythonTool) and entry.filler_after_s is not None:
        return entry.model_copy(update={"filler_after_s": entry.filler_after_s * factor})
    return entry  # timeout_s is a network timeout: not scaled


def scale_profile(profile: AgentProfile, factor: float) -> AgentProfile:
    """``profile`` with every policy duration multiplied by ``factor`` (see :func:`scale_settings`)."""
    w, h, t, d = profile.watchdogs, profile.hold, profile.transfer, profile.dtmf
    return profile.model_copy(
        update={
            # the goodbye fallback waits on real events (the goodbye's audio stopping): compressed, but never below a
            # second, or a loaded machine hangs up over a goodbye that is still playing
            "goodbye_timeout_s": min(profile.goodbye_timeout_s, max(profile.goodbye_timeout_s * factor, 1.0)),
            "watchdogs": w.model_copy(
                update={
                    "max_duration_s": w.max_duration_s * factor,
                    "wrap_up_before_s": w.wrap_up_before_s * factor,
                    "silence_timeout_s": _scaled(w.silence_timeout_s, factor),
                }
            ),
            "hold": h.model_copy(update={"max_hold_s": h.max_hold_s * factor}),
            "transfer": t.model_copy(update={"verify_window_s": t.verify_window_s * factor}),
            "dtmf": d.model_copy(update={"flush_after_s": d.flush_after_s * factor}),
            "tools": tuple(_scale_tool(entry, factor) for entry in profile.tools),
        }
    )


def scale_settings(settings: Settings, factor: float) -> Settings:
    """A copy of ``settings`` whose per-profile policy durations are multiplied by ``factor``: the watchdogs
    (maximum duration, wrap-up, silence), the maximum hold, the transfer verify window, the goodbye timeout (not
    below a second), the keypad flush and the tool filler delay. It compresses the controller's time the way the
    simulator's ``time_scale`` compresses the caller's, for tests and ``sipctl simulate``; it is not a config (the
    copies skip validation, so ``max_duration_s: 600`` may become 6).

    Not scaled, because they guard against real I/O: network and tool timeouts, the ring budget, the
    ``session.update`` acknowledgement timeout, the early-error window and every ``limits`` value.
    """
    if factor <= 0:
        raise ValueError("factor must be positive")
    if factor == 1:
        return settings
    profiles = {name: scale_profile(profile, factor) for name, profile in settings.profiles.items()}
    return settings.model_copy(update={"profiles": profiles})


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    *,
    time_scale: float = 1.0,
    controller_secrets: tuple[str, ...] | None = None,
    scale_controller: bool = False,
    admin_token: str | None = None,
    store_path: str | Path | None = None,
    twilio: TwilioAccount | None = None,
    batch_clock: SimClock | None = None,
) -> AsyncIterator[Stack]:
    """Start both sides. The controller's store is the SQLite file ``store_path``, or one in a temporary folder
    deleted afterwards (the default: ``sipctl demo``, ``simulate``, ``soak`` and the tests leave nothing behind).
    ``controller_secrets``: what the controller accepts (default: the simulator's).
    ``admin_token`` turns on the admin API and the live-calls page (what ``SIPCTL_ADMIN_TOKEN`` does).

    ``twilio`` adds the simulator's Twilio stand-in for that account and configures the controller for it as an
    operator would (:func:`twilio_environment`): the account's credentials, ``TWILIO_API_BASE_URL`` = the
    stand-in, ``OPENAI_PROJECT_ID`` = the simulator's project, ``SIPCTL_PUBLIC_URL`` = the controller's loopback
    URL; each of the account's numbers without a voice URL gets the controller's ``/twilio/voice`` (and its status
    callback ``/twilio/status``), as in the Twilio console.

    With ``scale_controller`` the controller's policy durations are compressed by ``time_scale`` too
    (:func:`scale_settings`); without it (the default, for tests that tune those durations themselves) only
    the simulator's time is compressed.

    ``batch_clock``: the outbound batches' clock (the dialler's, the batch routes' and the store's ``batch_clock``),
    a simulated one that :func:`~.batch_run.run_batch` moves (#16).
    """
    if scale_controller:
        settings = scale_settings(settings, time_scale)
    secret = new_webhook_secret()
    async with Simulator(
        webhook_secret=secret, time_scale=time_scale, twilio=twilio, project_id=TWILIO_PROJECT_ID
    ) as sim:
        # bound first: with Twilio the controller must know its own URL (SIPCTL_PUBLIC_URL) before it starts
        sock = bind_socket()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        secrets = Secrets(
            openai_api_key=SecretStr(sim.api_key),
            webhook_secrets=tuple(SecretStr(s) for s in (controller_secrets or (secret,))),
            openai_base_url=sim.base_url,
            admin_token=SecretStr(admin_token) if admin_token else None,
            twilio=twilio_credentials(sim.twilio, public_url) if sim.twilio is not None else None,
        )
        with contextlib.ExitStack() as folders:
            path = store_path or Path(folders.enter_context(tempfile.TemporaryDirectory(prefix="sipctl-"))) / "st.db"
            async with await SQLiteStore.open(path) as store:
                if batch_clock is not None:
                    store.batch_clock = batch_clock.time
                app = create_app(settings, secrets, store=store, drain_timeout_s=5.0, batch_clock=batch_clock)
                async with serve(app, sock=sock) as server:
                    sim.webhook_url = f"{server.url}/webhooks/openai"
                    if sim.twilio is not None:
                        point_numbers_at(sim.twilio, server.url)
                    yield Stack(sim=sim, app=app, server=server, admin_token=admin_token, batch_clock=batch_clock)


async def run_call(stack: Stack, spec: CallSpec, *, timeout: float) -> CallOutcome:
    sim_call = await stack.sim.place_call(spec)
    problems: list[str] = []
    try:
        sim_call = await stack.sim.wait_ended(sim_call.call_id, timeout)
    except TimeoutError:
        problems.append(f"the call did not end within {timeout:.0f}s")
    record = stack.runtime.registry.get(sim_call.call_id)
    if record is not None and record.ended_reason is None:
        with contextlib.suppress(TimeoutError):
            record = await stack.runtime.registry.wait_ended(sim_call.call_id, 10.0)
    problems.extend(check_expectations(sim_call))
    if spec.expect is not None:
        problems.extend(check_controller_expectations(spec.expect, record))
    analysis = await analysis_of(stack, record, timeout=min(timeout, 20.0))
    return CallOutcome(spec=spec, sim=sim_call, record=record, problems=problems, analysis=analysis)


async def analysis_of(stack: Stack, record: CallRecord | None, *, timeout: float) -> dict[str, Any] | None:
    """The call's analysis once it is done or failed (#17); None when its profile has none or it took too long."""
    rt = stack.runtime
    profile = rt.settings.profiles.get(record.profile) if record is not None else None
    if record is None or profile is None or profile.analysis is None or not record.transcripts:
        return None
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        row = await rt.store.get_analysis(record.call_id)
        if row is not None and row.status != "pending" and row.result is not None:
            return row.result
        await asyncio.sleep(0.05)
    return None


def check_controller_expectations(expect: Expectation, record: CallRecord | None) -> list[str]:
    """Mismatches between the controller-side fields of ``expect`` and the controller's record of the call
    (``ended_reason``, ``tools_called``, ``transfer_target``, ``max_cost_usd``, ``min_cost_usd``, ``profile``)."""
    problems: list[str] = []

    def compare(name: str, wanted: object, got: object) -> None:
        if wanted is not None and wanted != got:
            problems.append(f"{name}: expected {wanted}, got {got}")

    wants_record = any(
        value is not None
        for value in (
            expect.ended_reason,
            expect.tools_called,
            expect.transfer_target,
            expect.max_cost_usd,
            expect.min_cost_usd,
            expect.profile,
        )
    )
    if record is None:
        if wants_record:
            problems.append("the controller has no record of the call")
        return problems
    compare("ended_reason", expect.ended_reason, record.ended_reason)
    compare("tools_called", expect.tools_called, [call.name for call in record.tool_calls])
    compare("transfer_target", expect.transfer_target, record.transfer_target)
    compare("profile", expect.profile, record.profile)
    if expect.max_cost_usd is not None and record.cost_usd > expect.max_cost_usd:
        problems.append(f"max_cost_usd: expected at most {expect.max_cost_usd}, got {record.cost_usd:.6f}")
    if expect.min_cost_usd is not None and record.cost_usd < expect.min_cost_usd:
        problems.append(f"min_cost_usd: expected at least {expect.min_cost_usd}, got {record.cost_usd:.6f}")
    return problems


@dataclass
class ScenarioRun:
    """What :func:`run_scenario` found: each of the scenario's ``calls`` and each of its ``twilio`` calls."""

    calls: list[CallOutcome]
    twilio: list[TwilioOutcome] = field(default_factory=list)
    #: the scenario's outbound batch (``twilio.batch``, #16)
    batch: BatchOutcome | None = None

    @property
    def ok(self) -> bool:
        batch_ok = self.batch is None or self.batch.ok
        return all(o.ok for o in self.calls) and all(o.ok for o in self.twilio) and batch_ok

    @property
    def problems(self) -> dict[str, list[str]]:
        """Every call's problems by its name (empty lists when it passed), and the batch's by its name."""
        batch = {self.batch.name: self.batch.problems} if self.batch is not None else {}
        return {o.spec.name: o.problems for o in self.calls} | {o.name: o.problems for o in self.twilio} | batch

    def __len__(self) -> int:
        return len(self.calls) + len(self.twilio)


async def run_scenario(
    scenario: Scenario, settings: Settings, *, time_scale: float = 1.0, timeout: float = 60.0
) -> ScenarioRun:
    """Place every call of ``scenario`` at once and check each. ``time_scale`` compresses both sides: the
    simulator's script and the controller's policy durations (:func:`scale_settings`). A ``twilio:`` section
    adds the Twilio stand-in (its ``numbers``), the admin API (a fresh token) and the Twilio calls
    (:func:`run_twilio_calls`), beside the ``calls``."""
    async with scenario_stack(scenario, settings, time_scale=time_scale) as stack:
        return await run_calls(stack, scenario, timeout=timeout)


@contextlib.asynccontextmanager
async def scenario_stack(
    scenario: Scenario, settings: Settings, *, time_scale: float = 1.0, admin_token: str | None = None
) -> AsyncIterator[Stack]:
    """The stack :func:`run_scenario` runs ``scenario`` on: both sides compressed by ``time_scale``; with a
    ``twilio:`` section, the Twilio stand-in for its numbers and the admin API. ``admin_token`` turns the admin API
    on with that token (default: a fresh one when the scenario has Twilio calls, else none)."""
    account = twilio_account(scenario.twilio) if scenario.twilio is not None else None
    token = admin_token or (secrets_module.token_urlsafe(24) if account is not None else None)
    batch = scenario.twilio.batch if scenario.twilio is not None else None
    clock = None
    if batch is not None:  # the batch's do-not-call numbers join the list; its clock starts at its start (#16)
        settings = with_do_not_call(settings, batch.do_not_call)
        clock = SimClock(batch.start.timestamp())
    async with running_stack(
        settings, time_scale=time_scale, scale_controller=True, twilio=account, admin_token=token, batch_clock=clock
    ) as stack:
        yield stack


async def run_calls(stack: Stack, scenario: Scenario, *, timeout: float = 60.0) -> ScenarioRun:
    """Place every call of ``scenario`` at once on ``stack`` (:func:`scenario_stack`) and check each."""
    calls = asyncio.gather(*(run_call(stack, spec, timeout=timeout) for spec in scenario.calls))
    twilio = scenario.twilio
    twilio_calls = run_twilio_calls(stack, twilio, timeout=timeout) if twilio else _nothing()
    batch, clock = (twilio.batch if twilio is not None else None), stack.batch_clock
    if batch is None:
        batch_run = _no_batch()
    elif clock is None:
        raise RuntimeError("a scenario's batch runs on a simulated clock: scenario_stack or running_stack(batch_clock)")
    else:
        batch_run = run_batch(stack, batch, clock, timeout=timeout)
    outcomes, twilio_outcomes, batch_outcome = await asyncio.gather(calls, twilio_calls, batch_run)
    return ScenarioRun(calls=list(outcomes), twilio=twilio_outcomes, batch=batch_outcome)


async def _nothing() -> list[TwilioOutcome]:
    return []


async def _no_batch() -> BatchOutcome | None:
    return None


def print_run(run: ScenarioRun, out: TextIO) -> None:
    """``sipctl simulate``'s report: the calls (:func:`print_report`), then the Twilio calls with their Twilio
    timelines beside their OpenAI legs (:func:`print_twilio_report`)."""
    if run.calls or not (run.twilio or run.batch):
        print_report(run.calls, out)
    if run.twilio:
        print_twilio_report(run.twilio, out)
    if run.batch is not None:
        print_batch_report(run.batch, out)


def print_report(outcomes: list[CallOutcome], out: TextIO) -> None:
    for outcome in outcomes:
        rec, sim = outcome.record, outcome.sim
        print(f"\n── {outcome.spec.name}  ({sim.call_id})", file=out)
        lines: list[tuple[float, str]] = []
        if rec is not None:
            lines.extend((t, f"controller  {what}") for t, what in rec.timeline)
            lines.extend((t.at_s, f"{t.role:<11} “{t.text}”") for t in rec.transcripts)
        for t, text in sorted(lines, key=lambda x: x[0]):
            print(f"  {t:7.2f}s  {text}", file=out)
        if rec is not None:
            hold = f", on hold {rec.hold_s:.2f}s costing {rec.hold_cost_usd:.4f}" if rec.hold_s else ""
            print(f"  controller: profile={rec.profile} cost={rec.cost_usd:.4f} USD{hold}", file=out)
        if outcome.analysis is not None:
            print_analysis(outcome.analysis, out)
        gap = f"{sim.hangup_gap_s:.2f}s" if sim.hangup_gap_s is not None else "n/a"
        print(
            f"  simulator: accepts={sim.accept_count} deliveries={sim.delivery_statuses} audio={sim.audio_state} "
            f"ended_by={sim.ended_by} hangup_after_goodbye_audio={gap}",
            file=out,
        )
        for problem in outcome.problems:
            print(f"  ✗ {problem}", file=out)
    print("\n" + _table(outcomes), file=out)


#: the analysis ``sipctl demo`` gives a profile that has none (#17): what the simulator's /v1/responses answers
DEMO_ANALYSIS = CallAnalysis.model_validate(
    {
        "summary_prompt": "Summarise the call in one sentence.",
        "success_criteria": "The caller's question was answered and the assistant ended the call politely.",
        "schema": {
            "type": "object",
            "properties": {
                "topic": {"type": "string", "description": "what the caller asked about"},
                "callback_requested": {"type": "boolean"},
                "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
            },
            "required": ["topic", "callback_requested", "sentiment"],
            "additionalProperties": False,
        },
    }
)


def with_demo_analysis(settings: Settings) -> Settings:
    """``settings`` whose profiles without an ``analysis`` block get :data:`DEMO_ANALYSIS`."""
    profiles = {
        name: profile if profile.analysis is not None else profile.model_copy(update={"analysis": DEMO_ANALYSIS})
        for name, profile in settings.profiles.items()
    }
    return settings.model_copy(update={"profiles": profiles})


#: the profile ``sipctl demo``'s outbound Twilio call is placed with (#16), added by :func:`with_demo_outbound`
DEMO_OUTBOUND_PROFILE = "demo_reminder"


def with_demo_outbound(settings: Settings) -> Settings:
    """``settings`` with :data:`DEMO_OUTBOUND_PROFILE`: a profile that places calls, declaring the variable
    ``first_name`` its instructions use, with answering-machine detection and a voicemail message left after the
    beep (the demo runs with any config, or none)."""
    if DEMO_OUTBOUND_PROFILE in settings.profiles:
        return settings
    profile = AgentProfile(
        instructions=(
            "You are calling {{ var:first_name }} for Example Dental to confirm tomorrow's appointment. Keep it "
            "short. When they say goodbye or have nothing else, call end_call."
        ),
        greeting="Hello, this is Example Dental calling about your appointment.",
        tools=("end_call",),
        variables=("first_name",),
        outbound=Outbound(
            machine_detection="DetectMessageEnd",
            voicemail=Voicemail(
                action="leave_message",
                message="Hi {{ var:first_name }}, this is Example Dental about tomorrow's appointment. Please call "
                "us back. Goodbye!",
            ),
        ),
    )
    return settings.model_copy(update={"profiles": {**settings.profiles, DEMO_OUTBOUND_PROFILE: profile}})


def print_analysis(analysis: dict[str, Any], out: TextIO) -> None:
    """A short analysis of one call (#17): the summary, the success verdict, the fields, the cost."""
    if analysis.get("status") != "completed":
        print(f"  analysis: failed after {analysis.get('attempts')} attempt(s): {analysis.get('error')}", file=out)
        return
    cost = analysis.get("cost_usd")
    print(f"  analysis ({analysis.get('model')}, {cost if cost is not None else '?'} USD): {analysis.get('summary')}",
          file=out)  # fmt: skip
    if analysis.get("success") is not None:
        print(f"    success: {analysis['success']} ({analysis.get('success_reason')})", file=out)
    fields = analysis.get("fields")
    if isinstance(fields, dict) and fields:
        print("    fields: " + json.dumps(fields, ensure_ascii=False, separators=(", ", ": ")), file=out)


def print_closing(
    analyses: list[tuple[str, dict[str, Any] | None, str]], console_url: str, token: str, out: TextIO
) -> None:
    """How ``sipctl demo`` ends (#17): a short analysis per call (``(call, analysis or None, why none)``: the
    summary and the success verdict), then where the console is and how to sign in with the demo's admin token
    (made for the run; the only secret printed)."""
    print("\n── analyses: each call's post-call analysis (the simulator answers /v1/responses from the transcript)",
          file=out)  # fmt: skip
    width = max((len(name) for name, _, _ in analyses), default=4)
    for name, analysis, why_none in analyses:
        if analysis is None:
            print(f"  {name:<{width}}  -           {why_none}", file=out)
        elif analysis.get("status") != "completed":
            print(f"  {name:<{width}}  failed      {analysis.get('error')}", file=out)
        else:
            verdict = {True: "success", False: "no success", None: "-"}.get(analysis.get("success"), "-")
            print(f"  {name:<{width}}  {verdict:<10}  {analysis.get('summary')}", file=out)
    print(f"\nconsole: {console_url}/  sign in with the admin token {token}", file=out)
    print("  (the demo's SIPCTL_ADMIN_TOKEN, made for this run; or open "
          f"{console_url}/?token={token} once): the live calls, and the calls above under Calls", file=out)  # fmt: skip


def _table(outcomes: list[CallOutcome]) -> str:
    header = ("call", "profile", "ended_reason", "ended_by", "accepts", "audio", "turns", "cost (USD)", "result")
    rows = [header]
    for o in outcomes:
        rec = o.record
        turns = str(len(rec.transcripts)) if rec else "-"
        rows.append(
            (
                o.spec.name,
                (rec.profile if rec else None) or "-",
                (rec.ended_reason if rec else None) or "-",
                o.sim.ended_by or "-",
                str(o.sim.accept_count),
                o.sim.audio_state,
                turns,
                f"{rec.cost_usd:.4f}" if rec else "-",
                "ok" if o.ok else "FAILED",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*r) for r in rows]
    lines.insert(1, "  ".join("─" * w for w in widths))
    passed = sum(o.ok for o in outcomes)
    lines.append(f"\n{passed} passed, {len(outcomes) - passed} failed")
    return "\n".join(lines)


# ---- Twilio calls (#16): the simulator's Twilio stand-in against the real controller ----------------------------

#: the OpenAI project the harness's simulator plays (a well-formed ``OPENAI_PROJECT_ID``: Twilio dials it)
TWILIO_PROJECT_ID = "proj_sipctlsim"
#: the report's ``twilio.status`` and the controller's record of the status callbacks may trail the stand-in's
#: end of the call by the last callback's answer: how long (real seconds) the harness waits for them
_SETTLE_S = 5.0


def twilio_environment(side: TwilioSide, public_url: str) -> dict[str, str]:
    """The environment an operator gives the controller for this Twilio account (README, "Twilio numbers and
    outbound calls"), with the stand-in as ``TWILIO_API_BASE_URL``."""
    return {
        "TWILIO_ACCOUNT_SID": side.account.account_sid,
        "TWILIO_AUTH_TOKEN": side.account.auth_token,
        "TWILIO_API_BASE_URL": side.base_url,
        "OPENAI_PROJECT_ID": side.project_id,
        "SIPCTL_PUBLIC_URL": public_url,
    }


def twilio_credentials(side: TwilioSide, public_url: str) -> TwilioCredentials:
    """:func:`twilio_environment` read and checked as every start-up reads it (``ConfigError`` naming the fix)."""
    credentials, problems = TwilioCredentials.from_env(twilio_environment(side, public_url))
    if credentials is None:
        raise ConfigError(problems or ["Twilio is not configured"])
    return credentials


def point_numbers_at(side: TwilioSide, controller_url: str) -> None:
    """Each of the account's numbers without a voice URL: ``A call comes in`` → the controller's ``/twilio/voice``,
    its status callback → ``/twilio/status`` (the console set-up of the README)."""
    for number, configured in list(side.numbers.items()):
        if configured.voice_url is None:
            side.set_voice_url(
                number, f"{controller_url}/twilio/voice", status_callback=f"{controller_url}/twilio/status"
            )


def twilio_account(scenario: TwilioScenario) -> TwilioAccount:
    """The stand-in's account for a scenario's ``twilio:`` section: its numbers, not yet pointed anywhere."""
    return TwilioAccount(numbers={number: TwilioNumber() for number in scenario.numbers})


@dataclass
class TwilioOutcome:
    """One Twilio call of a scenario: the stand-in's record, the OpenAI legs it bridged to, the controller's report
    (the first leg's, or for a call that never reached OpenAI the one under the outbound request's id)."""

    spec: OutboundCall | InboundCall
    #: the stand-in's record (None: no Twilio call was made, e.g. the controller refused the request)
    twilio: TwilioCall | None
    legs: list[SimCall]
    record: CallRecord | None
    #: ``POST /v1/outbound``'s answer (outbound calls)
    placed: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def direction(self) -> str:
        return "outbound" if isinstance(self.spec, OutboundCall) else "inbound"

    @property
    def ok(self) -> bool:
        return not self.problems


async def run_twilio_calls(stack: Stack, scenario: TwilioScenario, *, timeout: float) -> list[TwilioOutcome]:
    """Every Twilio call of ``scenario`` at once: outbound ones placed through the controller's ``POST
    /v1/outbound`` (calls to one number one after another, each with its scripted callee), inbound ones rung on
    the account's numbers. Results in the scenario's order."""
    locks: dict[str, asyncio.Lock] = {}
    for call in scenario.outbound:
        locks.setdefault(call.to, asyncio.Lock())

    async def outbound(call: OutboundCall) -> TwilioOutcome:
        async with locks[call.to]:
            return await run_outbound(stack, call, timeout=timeout)

    return list(
        await asyncio.gather(
            *(outbound(call) for call in scenario.outbound),
            *(run_inbound(stack, call, timeout=timeout) for call in scenario.inbound),
        )
    )


async def place_outbound(
    stack: Stack, call: OutboundCall, *, idempotency_key: str | None = None
) -> tuple[int, dict[str, Any]]:
    """``POST /v1/outbound`` on the controller with the admin token: (HTTP status, JSON answer)."""
    if stack.admin_token is None:
        raise RuntimeError("placing calls needs the admin API: running_stack(admin_token=...)")
    body: dict[str, Any] = {"to": call.to, "variables": dict(call.variables)}
    if call.profile is not None:
        body["profile"] = call.profile
    if call.from_ is not None:
        body["from"] = call.from_
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        response = await client.post(f"{stack.server.url}/v1/outbound", json=body, headers=headers)
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:200]}
    return response.status_code, answer if isinstance(answer, dict) else {"answer": answer}


async def run_outbound(stack: Stack, call: OutboundCall, *, timeout: float) -> TwilioOutcome:
    """Script the callee, place the call through the controller, wait for both sides, check them."""
    stack.twilio.script(call.to, call.callee)
    status, placed = await place_outbound(stack, call, idempotency_key=f"scenario:{call.name}")
    outcome = TwilioOutcome(spec=call, twilio=None, legs=[], record=None, placed=placed)
    sid = placed.get("call_sid")
    if status != 201 or not isinstance(sid, str) or sid not in stack.twilio.calls:
        outcome.problems.append(f"POST /v1/outbound answered {status}: {placed.get('error', placed)}")
        return outcome
    outcome.twilio = stack.twilio.calls[sid]
    canceling = None
    if call.cancel_after is not None:
        canceling = asyncio.create_task(_cancel_after(stack, str(placed.get("id")), call.cancel_after, outcome))
    try:
        await _follow(stack, outcome, timeout=timeout, unanswered_id=str(placed.get("id")))
    finally:
        if canceling is not None:
            if not canceling.done():
                outcome.problems.append("the call ended before the scenario's cancel_after")
            canceling.cancel()
            await asyncio.gather(canceling, return_exceptions=True)
    return outcome


async def _cancel_after(stack: Stack, outbound_id: str, after: float, outcome: TwilioOutcome) -> None:
    """The operator cancels the placed call ``after`` nominal seconds (``POST /v1/outbound/{id}/cancel``)."""
    await asyncio.sleep(stack.twilio.scaled(after))
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        response = await client.post(f"{stack.server.url}/v1/outbound/{outbound_id}/cancel",
                                     headers={"Authorization": f"Bearer {stack.admin_token}"})  # fmt: skip
    if response.status_code != 202:
        outcome.problems.append(f"POST /v1/outbound/{outbound_id}/cancel answered {response.status_code}: "
                                f"{response.text[:200]}")  # fmt: skip


async def run_inbound(stack: Stack, call: InboundCall, *, timeout: float) -> TwilioOutcome:
    """A person rings one of the account's numbers (its voice URL: the controller's); wait for both sides."""
    outcome = TwilioOutcome(spec=call, twilio=stack.twilio.ring_number(call), legs=[], record=None)
    await _follow(stack, outcome, timeout=timeout, unanswered_id=None)
    return outcome


async def _follow(stack: Stack, outcome: TwilioOutcome, *, timeout: float, unanswered_id: str | None) -> None:
    """Wait for the Twilio call, its OpenAI legs and the controller's report; then check all three."""
    rec = outcome.twilio
    assert rec is not None
    try:
        await stack.twilio.wait_ended(rec.sid, timeout)
    except TimeoutError:
        outcome.problems.append(f"the Twilio call did not end within {timeout:.0f}s (status {rec.status})")
    for call_id in rec.openai_call_ids:
        try:
            outcome.legs.append(await stack.sim.wait_ended(call_id, timeout))
        except TimeoutError:
            outcome.problems.append(f"the OpenAI leg {call_id} did not end within {timeout:.0f}s")
            outcome.legs.append(stack.sim.calls[call_id])
    registry = stack.runtime.registry
    # the call's report: its (last) leg's record; a call parked on Twilio (#16) has one record per leg, the last
    # one's report is the whole call's (its earlier legs' ended ``parked``)
    candidates = [leg.call_id for leg in reversed(outcome.legs)] or ([unanswered_id] if unanswered_id else [])
    report_id = next((call_id for call_id in candidates if registry.get(call_id) is not None), None)
    if report_id is not None:
        with contextlib.suppress(TimeoutError):
            await registry.wait_ended(report_id, 10.0)
        outcome.record = registry.get(report_id)
    outcome.problems.extend(await check_twilio_outcome(stack, outcome))


async def check_twilio_outcome(stack: Stack, outcome: TwilioOutcome) -> list[str]:
    """Mismatches for one Twilio call: the stand-in's record against the call's Twilio ``expect`` (and anything
    Twilio would log as an error: a callback not answered 2xx, TwiML refused), each OpenAI leg against its script's
    expectations, and the controller's report: ``report``, its Twilio part (the CallSid; the numbers as Twilio saw
    them), its outbound part (the request's id and variables, the variables in the instructions the call was
    accepted with), reported once, and the status callbacks the controller recorded (every one the stand-in
    sent, and the final status)."""
    spec, rec, record = outcome.spec, outcome.twilio, outcome.record
    problems: list[str] = []
    if rec is None:
        return problems
    problems.extend(f"twilio: {problem}" for problem in rec.problems)
    problems.extend(check_twilio_call(rec, spec.expect))
    for leg in outcome.legs[:-1]:  # a parked call's earlier legs (#16): hung up by the park, the script went on
        if leg.ended_by != "caller":
            problems.append(f"openai leg {leg.call_id}: a leg before the last should end when Twilio parks the call "
                            f"(hung up by Twilio), but it ended by {leg.ended_by}")  # fmt: skip
    for leg in outcome.legs[-1:]:  # the person's expectations hold on the last leg
        problems.extend(check_expectations(leg))
        if leg.spec.expect is not None:
            leg_record = stack.runtime.registry.get(leg.call_id)
            problems.extend(f"openai leg: {p}" for p in check_controller_expectations(leg.spec.expect, leg_record))
    reached_controller = bool(outcome.legs) or isinstance(spec, OutboundCall)
    if record is None:
        if reached_controller or spec.report is not None:
            problems.append("the controller has no report of the call")
        return problems
    problems.extend(check_report(spec.report, record, time_scale=stack.twilio.time_scale))
    twilio = record.twilio or {}
    if record.twilio_call_sid != rec.sid:
        problems.append(f"report: twilio_call_sid {record.twilio_call_sid}, but Twilio's CallSid is {rec.sid}")
    if twilio.get("direction") != outcome.direction:
        problems.append(f"report: twilio.direction {twilio.get('direction')}, expected {outcome.direction}")
    if (twilio.get("from"), twilio.get("to")) != (rec.from_, rec.to):
        problems.append(f"report: twilio from/to {twilio.get('from')} → {twilio.get('to')}, but Twilio saw "
                        f"{rec.from_} → {rec.to}")  # fmt: skip
    if isinstance(spec, OutboundCall):
        wanted = {"id": (outcome.placed or {}).get("id"), "variables": dict(spec.variables)}
        if record.outbound != wanted:
            problems.append(f"report: outbound {record.outbound}, expected {wanted}")
        problems.extend(_variables_rendered(stack.runtime.settings, record, spec.variables, outcome.legs))
    reports = [r for r in stack.runtime.registry.records()
               if r.twilio_call_sid == rec.sid and r.ended_reason != "parked"]  # fmt: skip
    if len(reports) != 1:
        problems.append(f"the controller reported the call {len(reports)} times")
    problems.extend(await _callbacks_recorded(stack, rec))
    return problems


def check_report(expect: ReportExpectation | None, record: CallRecord, *, time_scale: float = 1.0) -> list[str]:
    """Mismatches between a scenario's ``report:`` and the controller's record of a Twilio call. A parked call's
    (#16) figures are read from its end-of-call report (``legs``, ``parked``: null for a call never parked, which
    has one leg: the call), its seconds divided by the run's ``time_scale`` to compare with nominal ones."""
    if expect is None:
        return []
    twilio = record.twilio or {}
    problems: list[str] = []
    for name, wanted, got in (
        ("ended_reason", expect.ended_reason, record.ended_reason),
        ("profile", expect.profile, record.profile),
        ("error_code", expect.error_code, twilio.get("error_code")),
        ("answered_by", expect.answered_by, twilio.get("answered_by")),
    ):
        if wanted is not None and wanted != got:
            problems.append(f"report {name}: expected {wanted}, got {got}")
    if expect.legs is None and expect.parked_min_s is None and expect.max_leg_s is None:
        return problems
    document = report_document(record)
    legs = document.get("legs")
    if legs is None:  # never parked: the call is its one leg
        legs = [{"call_id": document.get("call_id"), "duration_s": (document.get("timings") or {}).get("duration_s")}]
    if not isinstance(legs, list):
        return [*problems, f"report legs: expected a list, got {legs!r}"]
    if expect.legs is not None and expect.legs != len(legs):
        problems.append(f"report legs: expected {expect.legs}, got {len(legs)}")
    if expect.max_leg_s is not None:
        for leg in legs:
            seconds = leg.get("duration_s") if isinstance(leg, dict) else None
            if not isinstance(seconds, int | float):
                problems.append(f"report legs: {leg!r} has no duration_s")
            elif seconds / time_scale > expect.max_leg_s:
                problems.append(f"report max_leg_s: the leg {leg.get('call_id')} lasted {seconds / time_scale:.0f} "
                                f"nominal seconds, over {expect.max_leg_s:g}")  # fmt: skip
    if expect.parked_min_s is not None:
        parked = document.get("parked")
        seconds = parked.get("parked_s") if isinstance(parked, dict) else None
        if not isinstance(seconds, int | float):
            problems.append(f"report parked_min_s: expected at least {expect.parked_min_s:g} nominal seconds parked, "
                            f"but the report's parked is {parked!r}")  # fmt: skip
        elif seconds / time_scale < expect.parked_min_s:
            problems.append(f"report parked_min_s: expected at least {expect.parked_min_s:g} nominal seconds parked, "
                            f"got {seconds / time_scale:.0f}")  # fmt: skip
    return problems


def _variables_rendered(
    settings: Settings, record: CallRecord, variables: dict[str, str], legs: list[SimCall]
) -> list[str]:
    """Each variable the profile's instructions use (``{{ var:name }}``) is in the instructions OpenAI was given."""
    profile = settings.profiles.get(record.profile)
    if profile is None or not legs or not legs[0].accept_bodies:
        return []
    body = legs[0].accept_bodies[0]
    instructions = body.get("instructions", "") if isinstance(body, dict) else ""
    used = {name.split(":", 1)[1].strip() for name in templates.placeholders(profile.instructions)
            if name.startswith("var:")}  # fmt: skip
    return [
        f"the accept's instructions lack the variable {name} ({variables[name]!r})"
        for name in sorted(used & set(variables))
        if variables[name] not in str(instructions)
    ]


async def _callbacks_recorded(stack: Stack, rec: TwilioCall) -> list[str]:
    """The controller's row of the Twilio call holds every status callback the stand-in sent, and its final
    status (each callback is answered before the next is sent; the last one may still be being written)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SETTLE_S
    while True:
        row = await stack.runtime.store.get_twilio_call(call_sid=rec.sid)
        recorded = [str(e.get("status")) for e in (row.events if row else []) if e.get("kind") == "status"]
        if row is not None and recorded == rec.statuses and row.status == rec.status:
            return []
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.05)
    if row is None:
        return [f"the controller has no Twilio call with CallSid {rec.sid}"]
    return [f"the controller recorded status callbacks {recorded} (status {row.status}); Twilio sent "
            f"{rec.statuses} (status {rec.status})"]  # fmt: skip


def twilio_timeline(outcome: TwilioOutcome) -> list[tuple[float, str]]:
    """The Twilio call's timeline, its OpenAI legs' and the controller's, on the simulator's clock."""
    rec, record = outcome.twilio, outcome.record
    lines: list[tuple[float, str]] = list(rec.timeline()) if rec is not None else []
    for leg in outcome.legs:
        lines.append((leg.placed_at, f"openai  incoming call {leg.call_id} (webhook)"))
        if leg.accepted_at is not None:
            lines.append((leg.accepted_at, "openai  accepted"))
        if leg.ended_at is not None:
            lines.append((leg.ended_at, f"openai  ended by {leg.ended_by}"))
    if record is not None:
        # from the end-of-call report: a parked call's (#16) is all its legs', its times on the first leg's clock
        document = report_document(record)
        base = outcome.legs[0].placed_at if outcome.legs else (rec.created_at if rec is not None else 0.0)
        for entry in document.get("timeline") or ():
            lines.append((base + float(entry["at_s"]), f"controller  {entry['event']}"))
        for said in document.get("transcript") or ():
            lines.append((base + float(said["at_s"]), f"{said['role']:<11} “{said['text']}”"))
    return sorted(lines, key=lambda line: line[0])


def print_twilio_report(outcomes: list[TwilioOutcome], out: TextIO) -> None:
    """Each Twilio call: its Twilio timeline next to its OpenAI legs' and the controller's, then a table."""
    for outcome in outcomes:
        rec, record = outcome.twilio, outcome.record
        sid = rec.sid if rec is not None else "no Twilio call"
        print(f"\n── twilio {outcome.direction}: {outcome.name}  ({sid})", file=out)
        lines = twilio_timeline(outcome)
        start = lines[0][0] if lines else 0.0
        for t, text in lines:
            print(f"  {t - start:7.2f}s  {text}", file=out)
        if rec is not None:
            print(f"  twilio: {rec.direction} {rec.from_} → {rec.to} status={rec.status} "
                  f"answered_by={rec.answered_by or '-'} error_code={rec.error_code or '-'} "
                  f"callbacks={len(rec.callbacks)} openai_legs={len(outcome.legs)} gathers={len(rec.gathers)}",
                  file=out)  # fmt: skip
        if record is not None:
            outbound = f" outbound={record.outbound['id']}" if record.outbound else ""
            print(f"  controller: {record.call_id} profile={record.profile} ended_reason={record.ended_reason} "
                  f"cost={record.cost_usd:.4f} USD{outbound}", file=out)  # fmt: skip
        for problem in outcome.problems:
            print(f"  ✗ {problem}", file=out)
    print("\n" + _twilio_table(outcomes), file=out)


def _twilio_table(outcomes: list[TwilioOutcome]) -> str:
    header = ("twilio call", "direction", "number", "twilio status", "answered_by", "ended_reason", "legs", "result")
    rows = [header]
    for o in outcomes:
        rec, record = o.twilio, o.record
        rows.append(
            (
                o.name,
                o.direction,
                o.spec.to if isinstance(o.spec, OutboundCall) else f"{o.spec.from_} → {o.spec.to}",
                rec.status if rec else "-",
                (rec.answered_by if rec else None) or "-",
                (record.ended_reason if record else None) or "-",
                str(len(o.legs)),
                "ok" if o.ok else "FAILED",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*r) for r in rows]
    lines.insert(1, "  ".join("─" * w for w in widths))
    passed = sum(o.ok for o in outcomes)
    lines.append(f"\ntwilio: {passed} passed, {len(outcomes) - passed} failed")
    return "\n".join(lines)
