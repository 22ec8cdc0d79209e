"""Run scripted calls against the real controller (uvicorn on loopback) and the simulator; check outcomes.

Used by ``sipctl demo``, ``sipctl simulate`` and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TextIO

from pydantic import SecretStr
from starlette.applications import Starlette

from sip_controller.app import Runtime, create_app
from sip_controller.config import Secrets, Settings
from sip_controller.loopback import RunningServer, serve
from sip_controller.report import CallRecord
from sip_controller.simulator import CallSpec, Scenario, SimCall, Simulator, check_expectations, new_webhook_secret


@dataclass
class CallOutcome:
    spec: CallSpec
    sim: SimCall
    record: CallRecord | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Stack:
    """A simulator and a controller wired to each other on loopback."""

    sim: Simulator
    app: Starlette
    server: RunningServer

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings, *, time_scale: float = 1.0, controller_secrets: tuple[str, ...] | None = None
) -> AsyncIterator[Stack]:
    """Start both sides. ``controller_secrets``: what the controller accepts (default: the simulator's)."""
    secret = new_webhook_secret()
    async with Simulator(webhook_secret=secret, time_scale=time_scale) as sim:
        secrets = Secrets(
            openai_api_key=SecretStr(sim.api_key),
            webhook_secrets=tuple(SecretStr(s) for s in (controller_secrets or (secret,))),
            openai_base_url=sim.base_url,
        )
        app = create_app(settings, secrets, drain_timeout_s=5.0)
        async with serve(app) as server:
            sim.webhook_url = f"{server.url}/webhooks/openai"
            yield Stack(sim=sim, app=app, server=server)


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
    expected = spec.expect.ended_reason if spec.expect else None
    if expected is not None:
        got = record.ended_reason if record else None
        if got != expected:
            problems.append(f"ended_reason: expected {expected}, got {got}")
    return CallOutcome(spec=spec, sim=sim_call, record=record, problems=problems)


async def run_scenario(
    scenario: Scenario, settings: Settings, *, time_scale: float = 1.0, timeout: float = 60.0
) -> list[CallOutcome]:
    async with running_stack(settings, time_scale=time_scale) as stack:
        return list(await asyncio.gather(*(run_call(stack, spec, timeout=timeout) for spec in scenario.calls)))


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
        gap = f"{sim.hangup_gap_s:.2f}s" if sim.hangup_gap_s is not None else "n/a"
        print(
            f"  simulator: accepts={sim.accept_count} deliveries={sim.delivery_statuses} audio={sim.audio_state} "
            f"ended_by={sim.ended_by} hangup_after_goodbye_audio={gap}",
            file=out,
        )
        for problem in outcome.problems:
            print(f"  ✗ {problem}", file=out)
    print("\n" + _table(outcomes), file=out)


def _table(outcomes: list[CallOutcome]) -> str:
    header = ("call", "ended_reason", "ended_by", "accepts", "audio", "turns", "result")
    rows = [header]
    for o in outcomes:
        rec = o.record
        turns = str(len(rec.transcripts)) if rec else "-"
        rows.append(
            (
                o.spec.name,
                (rec.ended_reason if rec else None) or "-",
                o.sim.ended_by or "-",
                str(o.sim.accept_count),
                o.sim.audio_state,
                turns,
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
