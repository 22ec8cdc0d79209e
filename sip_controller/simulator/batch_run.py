"""A scenario's outbound batch (``twilio.batch``, #16) against the real controller, on a simulated clock.

:func:`run_batch` scripts each row's callees on the Twilio stand-in, makes the batch through ``POST
/v1/outbound/batches``, then drives the controller's dialler pass by pass in lockstep with the
:class:`~.batch_clock.SimClock` (the dialler's own loop is stopped first): after each pass, while calls are in flight
the clock stands still and real time runs them; when the batch can do nothing before a later time (its next pacing
slot, a retry's delay, calling hours opening) the clock jumps there. Then :func:`check_batch` holds what Twilio saw
against the scenario: every number called exactly as its callees and the retries say (so never more than its
attempts), no call outside calling hours by the simulated clock, the do-not-call numbers never dialled, the pacing
(``calls_per_second`` and ``max_in_flight``) and the retry delay kept, and the expected counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Protocol, TextIO
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette

from sip_controller.config import Settings
from sip_controller.service.app import Runtime
from sip_controller.service.loopback import RunningServer
from sip_controller.state.batches import BURST_S, BatchCallRow, BatchRecord

from .batch_clock import SimClock
from .core import Simulator
from .scenario import BatchRow, OutboundBatch
from .twilio_records import TwilioCall
from .twilio_side import TwilioSide

#: real seconds between looks at a batch whose calls are in flight
POLL_S = 0.01
#: what a callee's outcome makes of the row (``voicemail``/``fax`` only with answering-machine detection)
ROW_OUTCOME = {"answer": "completed", "busy": "busy", "no_answer": "no_answer", "failed": "failed",
               "hangup_while_ringing": "busy", "voicemail": "voicemail", "fax": "voicemail"}  # fmt: skip


@dataclass
class BatchOutcome:
    """What happened to a scenario's batch: the controller's view of it and the Twilio calls its rows made."""

    spec: OutboundBatch
    #: ``POST /v1/outbound/batches``'s status and answer
    created_status: int = 0
    created: dict[str, Any] = field(default_factory=dict)
    record: BatchRecord | None = None
    rows: list[BatchCallRow] = field(default_factory=list)
    #: the Twilio calls to the batch's numbers, in the order they were placed
    calls: list[TwilioCall] = field(default_factory=list)
    #: each call's placing time on the simulated clock (by CallSid)
    placed_at: dict[str, float] = field(default_factory=dict)
    #: how many times the simulated clock jumped, and the real seconds the run took
    jumps: int = 0
    real_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ok(self) -> bool:
        return not self.problems


class BatchStack(Protocol):
    """What a batch run uses of the harness's ``Stack``: the controller (its app, runtime and loopback server, the
    admin token) and the simulator with its Twilio stand-in."""

    @property
    def app(self) -> Starlette: ...
    @property
    def runtime(self) -> Runtime: ...
    @property
    def server(self) -> RunningServer: ...
    @property
    def admin_token(self) -> str | None: ...
    @property
    def sim(self) -> Simulator: ...
    @property
    def twilio(self) -> TwilioSide: ...


def with_do_not_call(settings: Settings, patterns: list[str]) -> Settings:
    """``settings`` whose ``twilio.do_not_call`` also holds ``patterns`` (a batch scenario's ``do_not_call``)."""
    if not patterns:
        return settings
    listed = tuple(dict.fromkeys((*settings.twilio.do_not_call, *patterns)))
    return settings.model_copy(update={"twilio": settings.twilio.model_copy(update={"do_not_call": listed})})


def predicted(row: BatchRow, spec: OutboundBatch, detects_machines: bool) -> tuple[int, str]:
    """How many calls the row takes and its final outcome, from its callees and the batch's retries."""
    retries = {"no_answer": spec.retries.no_answer, "busy": spec.retries.busy}
    attempt = 0
    while True:
        callee = row.callees[min(attempt, len(row.callees) - 1)]
        outcome = ROW_OUTCOME[callee.outcome]
        if outcome == "voicemail" and not detects_machines:
            outcome = "completed"
        if attempt < retries.get(outcome, 0):
            attempt += 1
            continue
        return attempt + 1, outcome


async def run_batch(stack: BatchStack, spec: OutboundBatch, clock: SimClock, *, timeout: float) -> BatchOutcome:
    """Make the batch, dial it to the end on the simulated clock, check it (see the module)."""
    outcome = BatchOutcome(spec=spec)
    started = time.monotonic()
    rows = spec.all_rows()
    for row in rows:
        stack.twilio.script(row.to, *row.callees)
    dialler = stack.app.state.dialler
    await dialler.aclose()  # driven below, pass by pass, in lockstep with the clock
    if stack.admin_token is None:
        raise RuntimeError("a batch needs the admin API: running_stack(admin_token=...)")
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        response = await client.post(f"{stack.server.url}/v1/outbound/batches", json=spec.request(),
                                     headers={"Authorization": f"Bearer {stack.admin_token}"})  # fmt: skip
    outcome.created_status = response.status_code
    with contextlib.suppress(ValueError):
        outcome.created = response.json()
    batch_id = outcome.created.get("id")
    if response.status_code != 201 or not isinstance(batch_id, str):
        outcome.problems.append(f"POST /v1/outbound/batches answered {response.status_code}: {response.text[:300]}")
        return outcome
    store = stack.runtime.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await dialler.run_once()
        record = await store.get_batch(batch_id)
        assert record is not None
        if record.status != "running" or record.states.get("queued", 0) + record.states.get("in_flight", 0) \
                + record.states.get("placing", 0) == 0:  # fmt: skip
            break
        now = clock.time()
        current = await store.list_batch_rows(batch_id, limit=len(rows) + 1)
        queued = [r for r in current if r.state == "queued"]
        busy = sum(r.state in ("placing", "in_flight") for r in current)
        due_now = any(r.due_at <= now for r in queued)
        target = None
        if due_now and busy < record.max_in_flight and record.next_slot_at > now:
            target = record.next_slot_at  # the next pacing slot
        elif not due_now and busy == 0 and queued:
            target = min(r.due_at for r in queued)  # a retry's delay, or calling hours opening
        if target is not None:
            clock.advance_to(target)
            outcome.jumps += 1
            continue
        if loop.time() > deadline:
            outcome.problems.append(f"the batch did not finish within {timeout:.0f}s: {record.states}")
            break
        await asyncio.sleep(POLL_S)  # calls in flight: real time runs them
    outcome.record = await store.get_batch(batch_id)
    outcome.rows = await store.list_batch_rows(batch_id, limit=len(rows) + 1)
    numbers = {row.to for row in rows}
    base = time.monotonic() - stack.sim.now()  # the stand-in's record times are seconds since the simulator started
    outcome.calls = sorted((c for c in stack.twilio.calls.values() if c.to in numbers), key=lambda c: c.created_at)
    for call in outcome.calls:
        outcome.placed_at[call.sid] = clock.at(base + call.created_at)
        if not call.is_ended:
            with contextlib.suppress(TimeoutError):
                await stack.twilio.wait_ended(call.sid, max(1.0, deadline - loop.time()))
    outcome.real_s = time.monotonic() - started
    outcome.problems.extend(check_batch(outcome, stack.runtime.settings))
    return outcome


def _local(at: float, zone: str) -> datetime:
    return datetime.fromtimestamp(at, ZoneInfo(zone))


def check_batch(outcome: BatchOutcome, settings: Settings) -> list[str]:
    """Mismatches between the scenario's batch and what the controller and Twilio did (see the module)."""
    spec, expect, record = outcome.spec, outcome.spec.expect, outcome.record
    problems: list[str] = []
    if record is None:
        return ["the controller has no record of the batch"]
    if record.status != expect.status:
        problems.append(f"status: expected {expect.status}, got {record.status} ({record.states})")
    if expect.outcomes is not None and dict(expect.outcomes) != record.outcomes:
        problems.append(f"outcomes: expected {dict(sorted(expect.outcomes.items()))}, got {record.outcomes}")
    rejected = outcome.created.get("rejected") or []
    if expect.rejected is not None and len(rejected) != expect.rejected:
        problems.append(f"rejected: expected {expect.rejected} rows, got {len(rejected)}: {rejected}")
    if expect.calls is not None and len(outcome.calls) != expect.calls:
        problems.append(f"calls: expected {expect.calls} Twilio calls, got {len(outcome.calls)}")
    for call in outcome.calls:
        problems.extend(f"twilio {call.to} ({call.sid}): {p}" for p in call.problems)
    by_number: dict[str, list[TwilioCall]] = {}
    for call in outcome.calls:
        by_number.setdefault(call.to, []).append(call)
    # the do-not-call list: refused when the batch was made (or settled do_not_call), never dialled
    patterns = settings.twilio.do_not_call
    row_of = {r.to_number: r for r in outcome.rows}
    profile = settings.profiles.get(spec.profile or settings.default_profile)
    detects = profile is not None and profile.outbound.machine_detection != "off"
    cap = 1 + max(spec.retries.no_answer, spec.retries.busy)
    for row in spec.all_rows():
        calls = by_number.get(row.to, [])
        listed = any(fnmatchcase(row.to, p) for p in patterns)
        if listed:
            if calls:
                problems.append(f"{row.to} is on the do-not-call list but was dialled {len(calls)} time(s)")
            stored = row_of.get(row.to)
            if stored is not None and stored.outcome != "do_not_call":
                problems.append(f"{row.to} is on the do-not-call list but its row ended {stored.outcome}")
            continue
        if len(calls) > cap:
            problems.append(f"{row.to} was called {len(calls)} times; at most {cap} (1 + the retries)")
        attempts, final = predicted(row, spec, detects)
        stored = row_of.get(row.to)
        if stored is None:
            problems.append(f"{row.to}: the batch has no row for it (refused: {_refusal(rejected, row.to, spec)})")
            continue
        if len(calls) != attempts:
            problems.append(f"{row.to} was called {len(calls)} time(s); its callees and the retries make {attempts}")
        if stored.outcome != final:
            problems.append(f"{row.to}: the row ended {stored.outcome}; its callees make {final}")
        times = [outcome.placed_at[c.sid] for c in calls]
        for earlier, later in itertools.pairwise(times):
            if later - earlier < spec.retries.delay_s:
                problems.append(f"{row.to}: a retry {later - earlier:.0f}s after the call before; retries.delay_s "
                                f"is {spec.retries.delay_s:g}")  # fmt: skip
        hours = spec.calling_hours
        zone = row.timezone or (hours.timezone if hours is not None else None)
        if hours is not None and zone is not None:
            for at in times:
                local = _local(at, zone).strftime("%H:%M:%S")
                if not hours.start <= local[:5] or not local < hours.end:
                    problems.append(f"{row.to}: called at {local} {zone} (simulated), outside calling hours "
                                    f"{hours.start}-{hours.end}")  # fmt: skip
    problems.extend(_pacing(outcome))
    if expect.last_call_before is not None and outcome.calls:
        last = max(outcome.placed_at.values())
        if last >= expect.last_call_before.timestamp():
            placed = datetime.fromtimestamp(last, expect.last_call_before.tzinfo)
            problems.append(f"the last call was placed at {placed}, not before {expect.last_call_before}")
    return problems


def _refusal(rejected: list[Any], number: str, spec: OutboundBatch) -> str:
    index = next((i for i, r in enumerate(spec.all_rows(), start=1) if r.to == number), None)
    return next((str(r.get("error")) for r in rejected if isinstance(r, dict) and r.get("row") == index), "no")


def _pacing(outcome: BatchOutcome) -> list[str]:
    """``calls_per_second``: over any W simulated seconds at most ``calls_per_second * (W + 1) + 1`` calls were
    placed (the store's bound, :data:`~sip_controller.state.batches.BURST_S`); ``max_in_flight``: never more Twilio
    calls up at once (real time: a row is busy from its claim until its call is over)."""
    problems: list[str] = []
    cps, most = outcome.spec.pacing.calls_per_second, outcome.spec.pacing.max_in_flight
    times = sorted(outcome.placed_at.values())
    worst = 0.0
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            excess = (j - i + 1) - (cps * (times[j] - first + BURST_S) + 1)
            worst = max(worst, excess)
    if worst > 1e-9:
        problems.append(f"pacing: {worst:.1f} call(s) over calls_per_second {cps:g} in some window")
    edges: list[tuple[float, int]] = []
    for call in outcome.calls:
        edges.append((call.created_at, 1))
        edges.append((call.ended_at if call.ended_at is not None else float("inf"), -1))
    up = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        up += step
        peak = max(peak, up)
    if peak > most:
        problems.append(f"max_in_flight: {peak} calls up at once; the batch allows {most}")
    return problems


def print_batch_report(outcome: BatchOutcome, out: TextIO) -> None:
    """``sipctl simulate``'s lines for a batch: its counts, the simulated span of its calls, its problems."""
    record, spec = outcome.record, outcome.spec
    print(f"\n── twilio batch: {outcome.name}  ({outcome.created.get('id', 'not made')})", file=out)
    rejected = outcome.created.get("rejected") or []
    print(f"  rows: {len(spec.all_rows())} ({len(rejected)} refused), Twilio calls: {len(outcome.calls)}, "
          f"simulated clock jumps: {outcome.jumps}, real time {outcome.real_s:.1f}s", file=out)  # fmt: skip
    for refused in rejected:
        print(f"  refused row {refused.get('row')}: {refused.get('error')}", file=out)
    if outcome.placed_at:
        zone = spec.start.tzinfo
        first, last = min(outcome.placed_at.values()), max(outcome.placed_at.values())
        print(f"  calls placed from {datetime.fromtimestamp(first, zone):%Y-%m-%d %H:%M:%S} to "
              f"{datetime.fromtimestamp(last, zone):%Y-%m-%d %H:%M:%S} (simulated, UTC{spec.start:%z})",
              file=out)  # fmt: skip
    if record is not None:
        print(f"  status: {record.status}, outcomes: {record.outcomes}", file=out)
    for problem in outcome.problems:
        print(f"  ✗ {problem}", file=out)
    print(f"\nbatch {outcome.name}: {'ok' if outcome.ok else 'FAILED'}", file=out)
