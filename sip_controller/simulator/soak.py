"""The chaos soak: many calls through the real controller (uvicorn) and the simulator, a seeded share of them
with injected faults, then the invariants that must hold whatever went wrong:

- every call the controller took ended exactly once, with an ``ended_reason`` (counted by ``on_finished``);
- zero double accepts (the simulator's ``accept_count`` is at most 1 per call);
- zero orphans (accepted and then left up: the caller stayed on the line until ``max_call_seconds``, or the
  call was still up at the end, or the controller never finished it);
- every finished call has a report (the record serialises, with its ``ended_reason``);
- zero 5xx (and zero unanswered deliveries) from the webhook endpoint;
- zero accepts after a call had ended, except those the ringing caller's hang-up provoked on purpose.

``sipctl soak`` and ``make soak`` run it; ``tests/e2e/test_soak.py`` runs a bounded one in ``make test``.
``sipctl soak --replicas N [--kill]`` runs the same calls against real ``sipctl serve`` processes, one of them
killed mid-soak: :mod:`sip_controller.simulator.soak_replicas`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sip_controller.calls.report import CallRecord
from sip_controller.config import Settings
from sip_controller.simulator import CallSpec, Faults, SimCall, harness

#: fault mixes the soak draws from (one per faulted call; see :func:`fault_for`)
FAULT_MIX = (
    "accept_error",
    "accept_latency",
    "accept_404_race",
    "hangup_error",
    "sideband_error",
    "sideband_drop",
    "malformed_events",
    "duplicate_webhooks",
    "redeliver_after_hangup",
    "hangup_while_ringing",
)
SCRIPTS = ("goodbye", "caller_hangup", "silent_hangup")
#: the caller's first line (a call's quiet step, when it has one, follows its answer)
FIRST_LINE = "What time do you open?"
#: nominal seconds; with the default time scale (0.05) a whole call lasts well under a second
MAX_CALL_SECONDS = 60.0
RING_TIMEOUT = 100.0
#: after the last call: how long to wait for late deliveries and for the controller to finish its calls
SETTLE_S = 10.0


class _DenialNoise(logging.Filter):
    """uvicorn logs a WebSocket denial response (the injected handshake errors) as an ASGI error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


def quiet_uvicorn_denials() -> None:
    """Drop uvicorn's "returned without completing handshake" line (logged for every refused sideband)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DenialNoise) for f in logger.filters):
        logger.addFilter(_DenialNoise())


def fault_for(kind: str, rng: random.Random, seed: int) -> Faults:
    """The :class:`Faults` block of one mix, its parameters drawn from ``rng``."""
    status = rng.choice((429, 500, 503))
    errors = {"error_rate": 1.0, "status": status, "max_errors": rng.randint(1, 2)}
    data: dict[str, Any] = {"seed": seed}
    if kind == "accept_error":
        data["accept"] = errors
    elif kind == "accept_latency":
        data["accept"] = {"latency": {"min": 1.0, "max": 8.0}}
    elif kind == "accept_404_race":
        data["accept_404_race"] = rng.randint(1, 2)
    elif kind == "hangup_error":
        data["hangup"] = errors
    elif kind == "sideband_error":
        data["sideband"] = {**errors, "max_errors": 1}
    elif kind == "sideband_drop":
        data["drop_sideband_at"] = "random"
        data["drop_sideband_mode"] = rng.choice(("abrupt", "1011"))
        data["drop_sideband_count"] = rng.randint(1, 2)
    elif kind == "malformed_events":
        data["malformed_events"] = rng.choice((0.1, 0.3))
    elif kind == "duplicate_webhooks":
        data["duplicate_webhooks"] = rng.randint(1, 3)
        data["duplicate_webhook_new_id"] = rng.random() < 0.5
    elif kind == "redeliver_after_hangup":
        data["redeliver_after_hangup"] = True
    elif kind == "hangup_while_ringing":
        data["hangup_while_ringing"] = rng.choice((0.0, 2.0))
    else:
        raise ValueError(f"unknown fault mix {kind!r}")
    return Faults.model_validate(data)


def call_spec(
    index: int,
    script: str,
    faults: Faults | None,
    *,
    quiet: float = 0.0,
    max_call_seconds: float = MAX_CALL_SECONDS,
) -> CallSpec:
    """One soak call: its own caller number (the per-caller rate limit stays out of the way). ``quiet``
    (nominal seconds): a silence after the first exchange, before the call's last turn."""
    steps: list[dict[str, Any]]
    pause = [{"wait": quiet}] if quiet > 0 else []
    if script == "goodbye":
        steps = [
            {"say": FIRST_LINE, "reply": "We open at nine."},
            *pause,
            {
                "say": "Thanks, bye!",
                "tool": {"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
                "then": "Thank you for calling, goodbye!",
            },
        ]
    elif script == "caller_hangup":
        steps = [{"say": "Is anybody there?", "reply": "Yes, how can I help?"}, *pause, {"hangup": True}]
    else:
        steps = [{"wait": 1.0 + quiet}, {"hangup": True}]
    return CallSpec.model_validate(
        {
            "name": f"soak-{index:05d}-{script}",
            "caller": f"+1415{index % 10_000_000:07d}",
            "ring_timeout": RING_TIMEOUT,
            "max_call_seconds": max_call_seconds,
            "steps": steps,
            "faults": faults,
        }
    )


def plan(
    calls: int, fault_rate: float, seed: int, *, quiet: float = 0.0, max_call_seconds: float = MAX_CALL_SECONDS
) -> list[tuple[CallSpec, str | None]]:
    """The seeded list of calls: each one's spec and its fault mix (``None``: no fault); ``quiet`` and
    ``max_call_seconds`` as in :func:`call_spec`."""
    out: list[tuple[CallSpec, str | None]] = []
    order = list(FAULT_MIX)
    random.Random(seed).shuffle(order)  # faulted calls take the mixes in turn: ten faulted calls cover all
    faulted = 0
    for index in range(calls):
        rng = random.Random(f"{seed}:{index}")
        script = rng.choice(SCRIPTS)
        kind = None
        if rng.random() < fault_rate:
            kind = order[faulted % len(order)]
            faulted += 1
        faults = fault_for(kind, rng, seed) if kind is not None else None
        if kind == "hangup_error":
            script = "goodbye"  # only the agent's own end_call makes the controller call /hangup
        spec = call_spec(index, script, faults, quiet=quiet, max_call_seconds=max_call_seconds)
        out.append((spec, kind))
    return out


@dataclass
class SoakResult:
    calls: int
    seed: int
    fault_rate: float
    wall_s: float
    faulted_calls: int = 0
    #: calls per planned fault mix
    mixes: dict[str, int] = field(default_factory=dict)
    #: injections the simulator recorded, by kind (calls with that kind, total injections)
    injected: dict[str, tuple[int, int]] = field(default_factory=dict)
    ended_reasons: dict[str, int] = field(default_factory=dict)
    ended_once: int = 0
    never_ended: list[str] = field(default_factory=list)
    ended_twice: list[str] = field(default_factory=list)
    double_accepts: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    late_accepts: list[str] = field(default_factory=list)
    reports_written: int = 0
    missing_reports: list[str] = field(default_factory=list)
    webhook_deliveries: int = 0
    webhook_5xx: int = 0
    webhook_unanswered: int = 0
    unfinished_sim_calls: list[str] = field(default_factory=list)
    timed_out: bool = False
    sim_task_errors: int = 0
    #: the rest is for ``--replicas`` (0: the one in-process controller; see :mod:`.soak_replicas`)
    replicas: int = 0
    store: str = ""
    kills: int = 0
    #: calls that were live on the killed replica when it died (its webhook answered by it)
    calls_on_victim: int = 0
    #: whether the kill came when every live call was attached and none was in its last turn
    kill_at_quiet: bool = True
    #: calls whose report lists a takeover; the takeover log records (``call.taken_over``) of all replicas
    taken_over: list[str] = field(default_factory=list)
    takeover_logs: int = 0
    #: seconds from the kill to the sideband re-attached, for each call taken over after it
    takeover_latencies: list[float] = field(default_factory=list)
    webhook_failovers: int = 0
    webhook_held: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.never_ended
            or self.ended_twice
            or self.double_accepts
            or self.orphans
            or self.late_accepts
            or self.missing_reports
            or self.webhook_5xx
            or self.webhook_unanswered
            or self.unfinished_sim_calls
            or self.timed_out
            or self.sim_task_errors
            or (self.kills and not self.taken_over)
        ) and self.ended_once == self.calls

    def table(self) -> str:
        def names(items: list[str]) -> str:
            shown = ", ".join(items[:3]) + (" …" if len(items) > 3 else "")
            return f"{len(items)}" + (f"  ({shown})" if items else "")

        rows: list[tuple[str, str]] = [
            ("calls", f"{self.calls}  (seed {self.seed}, fault rate {self.fault_rate:g})"),
            ("faulted calls", str(self.faulted_calls)),
        ]
        for kind, count in sorted(self.mixes.items()):
            rows.append((f"  mix {kind}", str(count)))
        for kind, (calls, total) in sorted(self.injected.items()):
            rows.append((f"  injected {kind}", f"{total} in {calls} call(s)"))
        rows += [
            ("ended exactly once", f"{self.ended_once} / {self.calls}"),
            ("  never ended", names(self.never_ended)),
            ("  ended twice", names(self.ended_twice)),
        ]
        for reason, count in sorted(self.ended_reasons.items()):
            rows.append((f"  ended_reason {reason}", str(count)))
        rows += [
            ("double accepts", names(self.double_accepts)),
            ("orphaned calls", names(self.orphans)),
            ("accepts after the end", names(self.late_accepts)),
            ("reports written", f"{self.reports_written} / {self.calls}"),
            ("  missing reports", names(self.missing_reports)),
            ("webhook deliveries", str(self.webhook_deliveries)),
            ("webhook 5xx", str(self.webhook_5xx)),
            ("webhook unanswered", str(self.webhook_unanswered)),
            ("sim calls not ended", names(self.unfinished_sim_calls)),
            *self._replica_rows(),
            ("simulator task errors", str(self.sim_task_errors)),
            ("wall time", f"{self.wall_s:.1f} s" + ("  (TIMED OUT)" if self.timed_out else "")),
            ("result", "ok" if self.ok else "FAILED"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def _replica_rows(self) -> list[tuple[str, str]]:
        if not self.replicas:
            return []
        rows = [
            ("replicas", f"{self.replicas}  ({self.store})"),
            ("kills (SIGKILL, restarted)", str(self.kills)),
        ]
        if self.kills:
            rows += [
                ("  calls live on the victim", str(self.calls_on_victim)),
                ("  kill at a quiet moment", "yes" if self.kill_at_quiet else "no (a turn in flight may be lost)"),
            ]
        none = "  (NONE: the kill took no call over)" if self.kills and not self.taken_over else ""
        rows += [
            ("calls taken over", f"{len(self.taken_over)}{none}"),
            ("  call.taken_over logged", str(self.takeover_logs)),
        ]
        if self.takeover_latencies:
            gaps = self.takeover_latencies
            rows.append(
                (
                    "takeover latency",
                    f"max {max(gaps):.2f} s, median {statistics.median(gaps):.2f} s  (kill -> sideband re-attached)",
                )
            )
        rows += [
            ("webhook failovers", f"{self.webhook_failovers}  (a replica gone: sent to the next)"),
            ("webhook held", f"{self.webhook_held}  (no replica up for a moment)"),
        ]
        return rows


def soak_settings(settings: Settings, calls: int, concurrency: int) -> Settings:
    """The settings with the limits a soak needs: no per-caller rate limit, room for every call's record."""
    limits = settings.limits.model_copy(
        update={
            "caller_calls_per_minute": 0,
            "max_concurrent_calls": max(settings.limits.max_concurrent_calls, 4 * concurrency),
            "recent_calls": max(settings.limits.recent_calls, calls),
        }
    )
    return settings.model_copy(update={"limits": limits})


async def run_soak(
    *,
    calls: int = 100,
    fault_rate: float = 0.2,
    seed: int = 1,
    concurrency: int = 25,
    time_scale: float = 0.05,
    max_wall_s: float = 300.0,
    settings: Settings | None = None,
    reports: Path | None = None,
    out: TextIO | None = None,
) -> SoakResult:
    """Run the soak and return its result (printed to ``out`` when given)."""
    if not 1 <= calls <= 100_000:
        raise ValueError("calls must be 1..100000")
    if not 0 <= fault_rate <= 1:
        raise ValueError("fault_rate must be 0..1")
    if not 1 <= concurrency <= 1000:
        raise ValueError("concurrency must be 1..1000")
    planned = plan(calls, fault_rate, seed)
    started = time.monotonic()
    finished: dict[str, list[str | None]] = {}
    written: dict[str, dict[str, Any]] = {}
    sims: dict[str, SimCall] = {}
    timed_out = False

    def on_finished(record: CallRecord) -> None:
        finished.setdefault(record.call_id, []).append(record.ended_reason)
        written[record.call_id] = json.loads(json.dumps(record.to_dict(), default=str))

    base = soak_settings(settings or Settings(), calls, concurrency)
    async with harness.running_stack(base, time_scale=time_scale) as stack:
        stack.runtime.registry.on_finished.append(on_finished)
        slots = asyncio.Semaphore(concurrency)
        per_call = max(30.0, 2 * MAX_CALL_SECONDS * time_scale + 15.0)

        async def one(spec: CallSpec) -> None:
            async with slots:
                sim_call = await stack.sim.place_call(spec)
                sims[spec.name] = sim_call
                with contextlib.suppress(TimeoutError):
                    await stack.sim.wait_ended(sim_call.call_id, per_call)

        try:
            async with asyncio.timeout(max_wall_s):
                await asyncio.gather(*(one(spec) for spec, _ in planned))
        except TimeoutError:
            timed_out = True
        await stack.sim.settle(SETTLE_S)
        registry = stack.runtime.registry
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_S):
                for record in registry.records():
                    if record.ended_reason is None:
                        await registry.wait_ended(record.call_id, SETTLE_S)
        result = _tally(planned, sims, finished, written, seed, fault_rate, time.monotonic() - started)
        result.timed_out = timed_out
        result.sim_task_errors = len(stack.sim.task_errors)
    if reports is not None:
        with reports.open("w", encoding="utf-8") as fh:
            for report in written.values():
                fh.write(json.dumps(report) + "\n")
    if out is not None:
        print(result.table(), file=out)
    return result


def _tally(
    planned: list[tuple[CallSpec, str | None]],
    sims: dict[str, SimCall],
    finished: dict[str, list[str | None]],
    written: dict[str, dict[str, Any]],
    seed: int,
    fault_rate: float,
    wall_s: float,
) -> SoakResult:
    result = SoakResult(calls=len(planned), seed=seed, fault_rate=fault_rate, wall_s=round(wall_s, 2))
    mixes: Counter[str] = Counter(kind for _, kind in planned if kind is not None)
    result.mixes = dict(mixes)
    result.faulted_calls = sum(mixes.values())
    calls_by_kind: Counter[str] = Counter()
    total_by_kind: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for spec, _kind in planned:
        sim = sims.get(spec.name)
        if sim is None:
            result.never_ended.append(spec.name)
            continue
        call_id = sim.call_id
        for kind, count in sim.fault_counts.items():
            calls_by_kind[kind] += 1
            total_by_kind[kind] += count
        ends = finished.get(call_id, [])
        if len(ends) == 1 and ends[0] is not None:
            result.ended_once += 1
            reasons[ends[0]] += 1
        elif len(ends) > 1:
            result.ended_twice.append(call_id)
        else:
            result.never_ended.append(call_id)
        if sim.accept_count > 1:
            result.double_accepts.append(call_id)
        if sim.left_up or (sim.accepted_at is not None and not ends):
            result.orphans.append(call_id)
        if not sim.is_ended:
            result.unfinished_sim_calls.append(call_id)
        if sim.late_accepts and "hangup_while_ringing" not in sim.fault_counts:
            result.late_accepts.append(call_id)
        report = written.get(call_id)
        if report is not None and report.get("ended_reason"):
            result.reports_written += 1
        else:
            result.missing_reports.append(call_id)
        result.webhook_deliveries += len(sim.delivery_statuses)
        result.webhook_5xx += sum(1 for status in sim.delivery_statuses if status >= 500)
        result.webhook_unanswered += sum(1 for status in sim.delivery_statuses if status == 0)
    result.injected = {kind: (calls_by_kind[kind], total_by_kind[kind]) for kind in calls_by_kind}
    result.ended_reasons = dict(reasons)
    return result
