"""The bench scenarios, the results file and the table.

Layout of one run: the load peer lives in this process; the controller (``sipctl serve``) and the floor
responder are child processes on loopback. Scenarios, each bounded in count and in time:

1. ring-to-answer overhead at steady arrival rates, controller and floor back to back in each run
   (then ratios), plus a search for the highest rate with p99 under 10 ms; at the target rate (100 calls/s) also
   with a second controller on PostgreSQL (``ring_to_answer_by_store``: the SQLite file, the controller's default,
   and PostgreSQL in a throwaway schema, each over the same run's floor);
2. CPU per new call (verify, decide, accept, attach, greeting) from the controller's CPU time;
3. concurrency: ramp to each level of simultaneous calls, each with its sideband, transcripts and tool calls;
   RSS per call, CPU, tool reaction, memory growth per transcript line; hangup reaction at one level;
4. ring under load (:mod:`.full_house`, ``ring_under_load``): new calls at 20, 100 and 200 calls/s while 0, 1,000
   and 2,000 calls are live and talking, per store; webhook → accept, and from inside the controller (its
   ``SIPCTL_DIAGNOSTICS``) its event-loop lag and its collector's passes per generation;
5. webhook intake at saturation, the calls rejected at admission (no sideband cost);
6. takeover, per store: two controllers on one store with the default lease (6 s, heartbeat 2 s), calls live on
   the first, which is SIGKILLed; per call, the kill → the second's sideband re-attach (``takeover``).

PostgreSQL comes from ``--database-url``, ``SIPCTL_DATABASE_URL`` or the local default (:mod:`.database`); when none
answers, its entries say ``"skipped": <reason>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from sip_controller.bench import database, full_house, noise, proc
from sip_controller.bench.peer import Peer, PeerCall
from sip_controller.bench.stats import json_safe, latency_summary, median, percentile, rounded, spread
from sip_controller.config import StoreSettings

SCHEMA = 1
RING_P99_LIMIT_MS = 10.0
NOISE_KEYS = ("steal_percent", "probe_lag_p50_ms", "probe_lag_p99_ms", "probe_lag_max_ms")


@dataclass(frozen=True)
class Plan:
    """How much load, for how long. Every loop in the bench is bounded by these counts and durations."""

    name: str
    runs: int
    rates: tuple[int, ...]
    rate_seconds: float
    hold_s: float
    search_rates: tuple[int, ...]
    search_seconds: float
    search_steps: int
    new_call_count: int
    new_call_rate: int
    levels: tuple[int, ...]
    ramp_rate: int
    window_s: float
    transcript_interval_s: float
    tool_interval_s: float
    hangup_level: int
    hangup_calls: int
    hangup_rate: float
    goodbye_audio_s: float
    intake_seconds: float
    intake_inflight: int
    intake_max: int
    warmup_calls: int
    #: the rate of the per-store ring windows (the targets are judged at 100 calls/s)
    store_rate: int = 100
    takeover_runs: int = 1
    #: live calls on the controller that is killed, placed at ``takeover_rate``
    takeover_calls: int = 20
    takeover_rate: int = 50
    #: the store lease and heartbeat the takeover's controllers get; None: the controller's defaults
    takeover_lease_s: float | None = None
    takeover_heartbeat_s: float | None = None


FULL = Plan(
    name="full", runs=3, rates=(20, 100, 300), rate_seconds=10, hold_s=1.0,
    search_rates=(450, 600, 800, 1000, 1300), search_seconds=5, search_steps=4,
    new_call_count=300, new_call_rate=100,
    levels=(500, 1000, 2000), ramp_rate=200, window_s=30, transcript_interval_s=2.0, tool_interval_s=30.0,
    hangup_level=1000, hangup_calls=200, hangup_rate=20, goodbye_audio_s=0.2,
    intake_seconds=10, intake_inflight=32, intake_max=100_000, warmup_calls=200,
    takeover_runs=3, takeover_calls=20,
)
QUICK = Plan(
    name="quick", runs=2, rates=(20, 100, 300), rate_seconds=3, hold_s=1.0,
    search_rates=(500, 800), search_seconds=3, search_steps=2,
    new_call_count=100, new_call_rate=100,
    levels=(100, 250, 500), ramp_rate=200, window_s=8, transcript_interval_s=2.0, tool_interval_s=8.0,
    hangup_level=250, hangup_calls=50, hangup_rate=10, goodbye_audio_s=0.2,
    intake_seconds=3, intake_inflight=32, intake_max=30_000, warmup_calls=100,
    takeover_runs=1, takeover_calls=20,
)
SMOKE = Plan(
    name="smoke", runs=1, rates=(20,), rate_seconds=1, hold_s=0.2,
    search_rates=(), search_seconds=1, search_steps=0,
    new_call_count=10, new_call_rate=50,
    levels=(10,), ramp_rate=100, window_s=1.5, transcript_interval_s=0.5, tool_interval_s=1.0,
    hangup_level=10, hangup_calls=5, hangup_rate=20, goodbye_audio_s=0.05,
    intake_seconds=1, intake_inflight=4, intake_max=2_000, warmup_calls=5,
    # a short lease (the controllers' SIPCTL_STATE__LEASE_S/HEARTBEAT_S) so the takeover takes seconds
    takeover_runs=1, takeover_calls=4, takeover_lease_s=1.5, takeover_heartbeat_s=0.5,
)
PLANS = {p.name: p for p in (FULL, QUICK, SMOKE)}


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_mb": psutil.virtual_memory().total // (1024 * 1024),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _versions() -> dict[str, str]:
    out = {}
    for name in ("sip-controller", "uvicorn", "starlette", "httpx", "websockets", "pydantic", "structlog"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Bench:
    def __init__(self, plan: Plan, *, database_url: str | None = None) -> None:
        self.plan = plan
        self.database_url = database_url
        self.postgres = database.Postgres(None, "not looked up yet", "not looked up yet")
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.api_key = "sk-bench-" + secrets.token_hex(16)
        self.peer = Peer(webhook_secret=self.webhook_secret, api_key=self.api_key)
        self.peer.transcript_interval_s = plan.transcript_interval_s
        self.peer.tool_interval_s = plan.tool_interval_s
        self.peer.goodbye_audio_s = plan.goodbye_audio_s
        #: the ring-under-load scenario's sizes (:mod:`.full_house`)
        self.house = full_house.HOUSE_PLANS.get(plan.name, full_house.HOUSE_PLANS["smoke"])

    @contextlib.asynccontextmanager
    async def controller(self, max_calls: int, env: dict[str, str] | None = None) -> AsyncIterator[proc.Child]:
        async with proc.controller(
            api_base=self.peer.base_url, api_key=self.api_key, webhook_secret=self.webhook_secret,
            max_calls=max_calls, extra_env=env,
        ) as child:
            try:
                yield child
            finally:
                await self.peer.hang_up_all()

    async def settle(self, child: proc.Child, timeout: float = 15.0) -> None:
        """Wait (bounded) until the child is nearly idle, so one phase's backlog is not charged to the next."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            cpu0 = child.cpu_s()
            await asyncio.sleep(0.25)
            if child.cpu_s() - cpu0 < 0.25 * 0.05:
                return

    # ---- ring-to-answer ---------------------------------------------------------------------------------

    async def ring(self, child: proc.Child, rate: int, seconds: float, *, attach: bool) -> dict[str, Any]:
        """Calls arrive at ``rate`` for ``seconds``; each is held ``hold_s`` after its greeting, then hung up."""
        peer = self.peer
        await self.settle(child)
        peer.target(child.port)
        peer.reset()
        count = max(1, int(rate * seconds))
        quiet: dict[str, Any] = {}
        async with noise.measuring(quiet):
            cpu0, t0 = child.cpu_s(), time.perf_counter()
            with noise.no_gc():
                placed = await peer.place_at_rate(rate, count, seconds + 1, hold_s=self.plan.hold_s, attach=attach)
                await peer.wait_for(lambda: peer.rec.accepts >= placed, 5)
        elapsed = time.perf_counter() - t0
        cpu = child.cpu_s() - cpu0
        rec = peer.reset()
        if attach:
            await peer.wait_for(lambda: peer.live == 0, self.plan.hold_s + 10)
        peer.forget_finished()
        out: dict[str, Any] = {"rate": rate, **latency_summary(rec.ring_ns)}
        out["lost"] = placed - rec.accepts
        out["webhook_errors"] = rec.webhook_errors
        out["achieved_rate"] = rounded(placed / elapsed, 1)
        out["ack_p50_ms"] = latency_summary(rec.ack_ns)["p50_ms"]
        out["cpu_percent"] = rounded(100 * cpu / elapsed, 1)
        out["noise"] = quiet
        return out

    async def new_call_cpu(self, child: proc.Child) -> float:
        """CPU ms per new call: verify, decide, accept, attach, greeting (calls held, so no teardown)."""
        peer = self.peer
        peer.target(child.port)
        peer.reset()
        plan = self.plan
        await self.settle(child)
        idle0, t_idle = child.cpu_s(), time.perf_counter()
        await asyncio.sleep(0.5)
        idle_rate = (child.cpu_s() - idle0) / (time.perf_counter() - t_idle)
        cpu0, t0 = child.cpu_s(), time.perf_counter()
        placed = await peer.place_at_rate(plan.new_call_rate, plan.new_call_count, 60, hold_s=None)
        await peer.wait_for(lambda: peer.rec.greetings >= placed, 15)
        await asyncio.sleep(0.3)  # let the controller take in the greeting's events
        cpu = child.cpu_s() - cpu0 - idle_rate * (time.perf_counter() - t0)
        rec = peer.reset()
        await peer.hang_up_all()
        return 1000 * cpu / max(1, rec.greetings)

    async def postgres_controller(self, stack: contextlib.AsyncExitStack) -> tuple[proc.Child | None, str | None]:
        """A controller on PostgreSQL in a throwaway schema (both undone by ``stack``); (None, why) without one."""
        if self.postgres.url is None:
            return None, self.postgres.skipped
        try:
            url = await stack.enter_async_context(database.throwaway_schema(self.postgres.url))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return None, f"no schema on {self.postgres.server}: {type(exc).__name__}: {exc}"[:300]
        child = await stack.enter_async_context(
            self.controller(max_calls=1_000_000, env={database.ENV: url})
        )
        await child.wait_ready()
        return child, None

    async def scenario_ring(self) -> dict[str, Any]:
        plan = self.plan
        ctl_runs: dict[int, list[dict[str, Any]]] = {r: [] for r in plan.rates}
        floor_runs: dict[int, list[dict[str, Any]]] = {r: [] for r in plan.rates}
        # per store at plan.store_rate: (controller, the same run's floor)
        store_runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {s: [] for s in database.STORES}
        new_call: list[float] = []
        floor_new_call: list[float] = []
        base, key, secret = self.peer.base_url, self.api_key, self.webhook_secret
        async with contextlib.AsyncExitStack() as stack:
            ctl = await stack.enter_async_context(self.controller(max_calls=1_000_000))  # the SQLite file
            flr = await stack.enter_async_context(proc.floor(api_base=base, api_key=key, webhook_secret=secret))
            flr_call = await stack.enter_async_context(
                proc.floor(api_base=base, api_key=key, webhook_secret=secret, attach=True)
            )
            pg_ctl, pg_skipped = await self.postgres_controller(stack)
            _say(f"warm-up: {plan.warmup_calls} calls to the controller"
                 f"{' (and the one on PostgreSQL)' if pg_ctl else ''} and the floors")
            await self.ring(ctl, 100, plan.warmup_calls / 100, attach=True)
            if pg_ctl is not None:
                await self.ring(pg_ctl, 100, plan.warmup_calls / 100, attach=True)
            await self.ring(flr, 100, plan.warmup_calls / 100, attach=False)
            await self.ring(flr_call, 100, plan.warmup_calls / 100, attach=True)
            for run in range(plan.runs):
                new_call.append(await self.new_call_cpu(ctl))
                floor_new_call.append(await self.new_call_cpu(flr_call))
                _say(f"run {run + 1}/{plan.runs}: new-call CPU {new_call[-1]:.2f} ms "
                     f"(floor with its sideband {floor_new_call[-1]:.2f} ms)")
                for rate in plan.rates:
                    c = await self.ring(ctl, rate, plan.rate_seconds, attach=True)
                    f = await self.ring(flr, rate, plan.rate_seconds, attach=False)
                    ctl_runs[rate].append(c)
                    floor_runs[rate].append(f)
                    _say(f"run {run + 1}/{plan.runs}: {rate}/s controller p50 {c['p50_ms']} p99 {c['p99_ms']} ms, "
                         f"floor p50 {f['p50_ms']} p99 {f['p99_ms']} ms")
                store_runs["sqlite"].append(await self._sqlite_at_store_rate(ctl, flr, ctl_runs, floor_runs))
                if pg_ctl is not None:
                    c = await self.ring(pg_ctl, plan.store_rate, plan.rate_seconds, attach=True)
                    store_runs["postgresql"].append((c, store_runs["sqlite"][-1][1]))
                    _say(f"run {run + 1}/{plan.runs}: {plan.store_rate}/s controller on PostgreSQL "
                         f"p50 {c['p50_ms']} p99 {c['p99_ms']} ms")
            ring = [_merge_runs(rate, ctl_runs[rate]) for rate in plan.rates]
            floor = []
            for rate in plan.rates:
                entry = _merge_runs(rate, floor_runs[rate])
                for q in ("p50", "p99"):
                    entry[f"controller_over_floor_{q}"] = spread(_ratios(ctl_runs[rate], floor_runs[rate], q))
                floor.append(entry)
            by_store: dict[str, Any] = {
                "sqlite": _merge_store(plan.store_rate, store_runs["sqlite"], "the SQLite file (the default)"),
                "postgresql": (
                    _merge_store(plan.store_rate, store_runs["postgresql"],
                                 f"PostgreSQL {self.postgres.server}, a throwaway schema")
                    if pg_ctl is not None else {"rate": plan.store_rate, "skipped": pg_skipped}
                ),
            }
            search = [
                {"rate": e["rate"], "p99_ms": e["p99_ms"], "lost": e["lost"], "ok": _sustained(e)} for e in ring
            ]
            max_rate = await self.search_max_rate(ctl, search)
        return {
            "ring_to_answer": ring,
            "floor": floor,
            "ring_to_answer_by_store": by_store,
            "max_rate_p99_under_10ms": max_rate,
            "max_rate_search": search,
            "new_call_cpu_ms": rounded(median(new_call)),
            "new_call_cpu_ms_spread": spread(new_call),
            "new_call_cpu_floor_ms": rounded(median(floor_new_call)),
            "new_call_cpu_over_floor": spread(
                [c / f for c, f in zip(new_call, floor_new_call, strict=True) if f > 0 and not math.isnan(c / f)]
            ),
        }

    async def _sqlite_at_store_rate(
        self, ctl: proc.Child, flr: proc.Child, ctl_runs: dict[int, list[dict[str, Any]]],
        floor_runs: dict[int, list[dict[str, Any]]],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """This run's SQLite controller and floor at the store rate: the rate windows' own when it is one of them
        (the default controller is the SQLite one), else two windows of their own (the smoke plan)."""
        rate = self.plan.store_rate
        if rate in ctl_runs:
            return ctl_runs[rate][-1], floor_runs[rate][-1]
        c = await self.ring(ctl, rate, self.plan.rate_seconds, attach=True)
        f = await self.ring(flr, rate, self.plan.rate_seconds, attach=False)
        _say(f"{rate}/s controller p50 {c['p50_ms']} p99 {c['p99_ms']} ms, "
             f"floor p50 {f['p50_ms']} p99 {f['p99_ms']} ms")
        return c, f

    async def search_max_rate(self, ctl: proc.Child, search: list[dict[str, Any]]) -> int | None:
        """The highest steady rate with ring p99 under 10 ms: above the measured rates if they all pass,
        else by bisection between the last passing and the first failing one (bounded steps)."""
        plan = self.plan
        passing: int | None = None
        failing: int | None = None
        for e in search:
            if not e["ok"]:
                failing = e["rate"]
                break
            passing = e["rate"]

        async def probe(rate: int) -> bool:
            r = await self.ring(ctl, rate, plan.search_seconds, attach=True)
            ok = _sustained(r)
            search.append({"rate": rate, "p99_ms": r["p99_ms"], "p50_ms": r["p50_ms"], "lost": r["lost"],
                           "achieved_rate": r["achieved_rate"], "cpu_percent": r["cpu_percent"], "ok": ok})
            _say(f"search {rate}/s: p99 {r['p99_ms']} ms, achieved {r['achieved_rate']}/s, ok={ok}")
            return ok

        if failing is None:
            for rate in plan.search_rates:
                if not await probe(rate):
                    failing = rate
                    break
                passing = rate
        for _ in range(plan.search_steps):
            if failing is None:
                break
            low = passing or 0
            mid = (low + failing) // 2
            if failing - low <= max(5, low // 10) or mid <= 0:
                break
            if await probe(mid):
                passing = mid
            else:
                failing = mid
        return passing

    # ---- concurrency and hangup -------------------------------------------------------------------------

    async def ramp(self, child: proc.Child, target: int) -> None:
        peer = self.peer
        missing = target - peer.live
        if missing > 0:
            rec = peer.rec
            before = rec.greetings
            await peer.place_at_rate(self.plan.ramp_rate, missing, missing / self.plan.ramp_rate + 30, talk=True)
            await peer.wait_for(lambda: rec.greetings - before >= missing, 30)

    async def scenario_concurrency(self) -> dict[str, Any]:
        plan = self.plan
        peer = self.peer
        levels: list[dict[str, Any]] = []
        hangup: dict[str, Any] = {}
        growth: list[float] = []
        async with self.controller(max_calls=1_000_000) as ctl:
            peer.target(ctl.port)
            await self.ring(ctl, 100, plan.warmup_calls / 100, attach=True)
            await asyncio.sleep(0.5)
            base_rss = ctl.rss()
            for level in plan.levels:
                peer.reset()
                await self.ramp(ctl, level)
                await asyncio.sleep(min(2.0, plan.window_s / 4))
                live = peer.live
                peer.reset()
                quiet: dict[str, Any] = {}
                async with noise.measuring(quiet):
                    rss0, cpu0, t0 = ctl.rss(), ctl.cpu_s(), time.perf_counter()
                    with noise.no_gc():
                        await asyncio.sleep(plan.window_s)
                elapsed = time.perf_counter() - t0
                rss1, cpu1 = ctl.rss(), ctl.cpu_s()
                rec = peer.reset()
                tool = latency_summary(rec.tool_ns)
                per_line = (rss1 - rss0) / rec.lines if rec.lines else math.nan
                growth.append(per_line)
                entry = {
                    "calls": live,
                    "rss_mb": rounded(rss1 / 2**20, 1),
                    "rss_per_call_kb": rounded((rss1 - base_rss) / 1024 / max(1, live), 2),
                    "cpu_percent": rounded(100 * (cpu1 - cpu0) / elapsed, 1),
                    "tool_reaction_p50_ms": tool["p50_ms"],
                    "tool_reaction_p99_ms": tool["p99_ms"],
                    "tool_reaction_max_ms": tool["max_ms"],
                    "tool_calls": rec.tool_calls,
                    "tool_outputs": tool["count"],
                    "transcript_lines": rec.lines,
                    "rss_growth_bytes_per_line": rounded(per_line, 1),
                    "noise": quiet,
                }
                levels.append(entry)
                _say(f"{live} calls: {entry['rss_per_call_kb']} KB/call, CPU {entry['cpu_percent']}%, "
                     f"tool p50 {tool['p50_ms']} p99 {tool['p99_ms']} ms ({tool['count']}), "
                     f"{entry['rss_growth_bytes_per_line']} B/line")
                if level == plan.hangup_level:
                    hangup = await self.hangups(ctl, level)
        top = levels[-1] if levels else {}
        return {
            "concurrency": levels,
            "transcript_growth_bytes_per_line": top.get("rss_growth_bytes_per_line"),
            "hangup_reaction": hangup,
            "base_rss_mb": rounded(base_rss / 2**20, 1),
        }

    async def hangups(self, child: proc.Child, level: int) -> dict[str, Any]:
        """At ``level`` live calls, callers say goodbye one after another (each replaced by a new call)."""
        plan = self.plan
        peer = self.peer
        peer.reset()
        ended = 0
        replacements: set[asyncio.Task[Any]] = set()
        quiet: dict[str, Any] = {}
        async with noise.measuring(quiet):
            with noise.no_gc():
                t0 = time.perf_counter()
                ended = await self._say_goodbyes(t0, replacements)
                rec = peer.rec
                await peer.wait_for(lambda: rec.hangups >= ended, plan.goodbye_audio_s + 10)
                if replacements:
                    await asyncio.wait(replacements, timeout=15)
        rec = peer.reset()
        summary = latency_summary(rec.hangup_ns)
        _say(f"hangup reaction at {level} calls: p50 {summary['p50_ms']} p99 {summary['p99_ms']} ms "
             f"({summary['count']} of {ended})")
        return {"calls": level, "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
                "max_ms": summary["max_ms"], "count": summary["count"], "ended": ended, "noise": quiet}

    async def _say_goodbyes(self, t0: float, replacements: set[asyncio.Task[Any]]) -> int:
        """``hangup_calls`` callers say goodbye at ``hangup_rate`` (bounded); returns how many did."""
        plan, peer = self.plan, self.peer
        ended = 0
        for i in range(plan.hangup_calls):
            due = t0 + i / plan.hangup_rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            candidates = peer.talking_calls()
            if not candidates:
                break
            peer.end_call(peer.rng.choice(candidates))
            ended += 1
            replacements.add(asyncio.create_task(peer.place(talk=True)))
        return ended

    # ---- intake -----------------------------------------------------------------------------------------

    async def intake_once(self, child: proc.Child) -> dict[str, Any]:
        plan = self.plan
        peer = self.peer
        await self.settle(child)
        peer.target(child.port)
        peer.reset()
        deadline = time.perf_counter() + plan.intake_seconds
        budget = [plan.intake_max]

        async def worker() -> None:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                await peer.place(attach=False)

        cpu0, t0 = child.cpu_s(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(plan.intake_inflight)))
        elapsed = time.perf_counter() - t0
        rec = peer.rec
        await peer.wait_for(lambda: rec.rejects + rec.accepts >= rec.webhooks_acked, 10)
        cpu = child.cpu_s() - cpu0
        rec = peer.reset()
        peer.forget_finished()
        return {
            "webhooks_per_s": rec.webhooks_acked / elapsed,
            "cpu_ms_per_webhook": 1000 * cpu / max(1, rec.webhooks_acked),
            "acked": rec.webhooks_acked,
            "rejected": rec.rejects,
            "errors": rec.webhook_errors,
            "ack_p50_ms": latency_summary(rec.ack_ns)["p50_ms"],
        }

    async def scenario_intake(self) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        async with self.controller(max_calls=1) as ctl:
            self.peer.target(ctl.port)
            holder = await self.peer.place(hold_s=None)  # the one admitted call; every later one is rejected
            await self.peer.wait_for(lambda: holder.greeted, 10)
            for run in range(self.plan.runs):
                r = await self.intake_once(ctl)
                runs.append(r)
                _say(f"intake run {run + 1}: {r['webhooks_per_s']:.0f} webhooks/s, "
                     f"{r['cpu_ms_per_webhook']:.3f} ms CPU each ({r['rejected']} rejected)")
        return {
            "intake": {
                "webhooks_per_s": rounded(median([r["webhooks_per_s"] for r in runs]), 1),
                "cpu_ms_per_webhook": rounded(median([r["cpu_ms_per_webhook"] for r in runs])),
                "webhooks_per_s_spread": spread([r["webhooks_per_s"] for r in runs]),
                "cpu_ms_per_webhook_spread": spread([r["cpu_ms_per_webhook"] for r in runs]),
                "inflight": self.plan.intake_inflight,
                "runs": [{k: rounded(v) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
            }
        }

    # ---- takeover ---------------------------------------------------------------------------------------

    def lease(self) -> tuple[float, float, dict[str, str]]:
        """The takeover's lease and heartbeat, and the controllers' environment that sets them (empty: defaults)."""
        plan, defaults = self.plan, StoreSettings()
        lease = plan.takeover_lease_s if plan.takeover_lease_s is not None else defaults.lease_s
        beat = plan.takeover_heartbeat_s if plan.takeover_heartbeat_s is not None else defaults.heartbeat_s
        env = {}
        if plan.takeover_lease_s is not None or plan.takeover_heartbeat_s is not None:
            env = {"SIPCTL_STATE__LEASE_S": f"{lease:g}", "SIPCTL_STATE__HEARTBEAT_S": f"{beat:g}"}
        return lease, beat, env

    async def takeover_once(self, env: dict[str, str], lease_s: float, heartbeat_s: float) -> dict[str, Any]:
        """Controllers A and B on one store (``env``); calls live on A, A SIGKILLed at a random point of its
        heartbeat; per call, the kill → B's sideband re-attach (the peer keeps a call whose sideband dropped)."""
        plan, peer = self.plan, self.peer
        async with self.controller(max_calls=1_000_000, env=env) as a:
            await a.wait_ready()  # A applies the migrations, then B finds them applied
            async with self.controller(max_calls=1_000_000, env=env) as b:
                await b.wait_ready()
                peer.forget_finished()
                before = set(peer.calls)
                peer.target(a.port)
                peer.reset()
                peer.keep_dropped = True
                try:
                    placed = await peer.place_at_rate(plan.takeover_rate, plan.takeover_calls, 30, hold_s=None)
                    await peer.wait_for(lambda: peer.rec.greetings >= placed, 15)
                    calls = [c for k, c in peer.calls.items() if k not in before and c.greeted and c.ws is not None]
                    # where in A's heartbeat cycle it dies decides most of the wait: spread it over the cycle
                    await asyncio.sleep(0.2 + peer.rng.uniform(0, heartbeat_s))
                    quiet: dict[str, Any] = {}
                    async with noise.measuring(quiet):
                        killed_ns = time.perf_counter_ns()
                        a.kill()
                        await a.proc.wait()
                        await peer.wait_for(
                            lambda: all(len(c.attached_ns) >= 2 for c in calls), lease_s + 2 * heartbeat_s + 10
                        )
                    result = _takeover_run(calls, placed, killed_ns, peer.reset().hangups, quiet)
                    await peer.hang_up_all()
                finally:
                    peer.keep_dropped = False
        return result

    async def scenario_takeover(self) -> dict[str, Any]:
        plan = self.plan
        lease_s, heartbeat_s, lease_env = self.lease()
        out: dict[str, Any] = {
            "lease_s": lease_s,
            "heartbeat_s": heartbeat_s,
            "lease_defaults": not lease_env,
            "calls_per_run": plan.takeover_calls,
        }
        for store in database.STORES:
            runs: list[dict[str, Any]] = []
            async with contextlib.AsyncExitStack() as stack:
                if store == "sqlite":
                    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sipctl-bench-takeover-")))
                    env = {"SIPCTL_STATE__PATH": str(folder / "state.db")}
                    where = "one SQLite file, two processes"
                elif self.postgres.url is None:
                    out[store] = {"skipped": self.postgres.skipped}
                    continue
                else:
                    try:
                        url = await stack.enter_async_context(database.throwaway_schema(self.postgres.url))
                    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        out[store] = {"skipped": f"no schema on {self.postgres.server}: {type(exc).__name__}: {exc}"}
                        continue
                    env = {database.ENV: url}
                    where = f"PostgreSQL {self.postgres.server}, a throwaway schema"
                for run in range(plan.takeover_runs):
                    r = await self.takeover_once({**env, **lease_env}, lease_s, heartbeat_s)
                    runs.append(r)
                    _say(f"takeover on {store}, run {run + 1}/{plan.takeover_runs}: {r['reattached']} of "
                         f"{r['calls']} calls re-attached, kill → re-attach p50 {r['p50_s']} s, max {r['max_s']} s")
            out[store] = {"store": where, **_merge_takeover(runs)}
        return {"takeover": out}

    async def run(self) -> dict[str, Any]:
        _raise_fd_limit()
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        await self.peer.start()
        try:
            results: dict[str, Any] = {
                "schema": SCHEMA,
                "mode": self.plan.name,
                "started_at": started.isoformat(timespec="seconds"),
                "machine": machine_info(),
                "versions": _versions(),
                "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            }
            self.postgres = await database.find(self.database_url)
            results["postgresql"] = {"server": self.postgres.server, "source": self.postgres.source,
                                     "skipped": self.postgres.skipped}
            if self.postgres.skipped:
                _say(f"PostgreSQL skipped: {self.postgres.skipped}")
            _say("ring-to-answer and the floor")
            results.update(await self.scenario_ring())
            _say("concurrency and hangup reaction")
            results.update(await self.scenario_concurrency())
            _say("ring under load: new calls while thousands are live, on each store")
            results.update(await full_house.scenario(self, self.house, _say))
            _say("webhook intake")
            results.update(await self.scenario_intake())
            _say("takeover: a controller SIGKILLed, its calls re-attached by the other")
            results.update(await self.scenario_takeover())
        finally:
            await self.peer.stop()
        results["duration_s"] = round(time.perf_counter() - t0, 1)
        results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["targets"] = evaluate_targets(results)
        results["plan"] = dataclasses.asdict(self.plan)
        return json_safe(results)  # type: ignore[no-any-return]


def _merge_runs(rate: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the runs, with the spread of p50 and p99."""
    out: dict[str, Any] = {"rate": rate}
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "achieved_rate", "cpu_percent", "ack_p50_ms"):
        out[key] = rounded(median([r[key] for r in runs]))
    out["noise"] = {
        key: rounded(median([r["noise"][key] for r in runs if r["noise"].get(key) is not None]))
        for key in NOISE_KEYS
    }
    out["lost"] = sum(r["lost"] for r in runs)
    out["count"] = sum(r["count"] for r in runs)
    out["runs"] = len(runs)
    out["spread"] = {k: spread([r[k] for r in runs]) for k in ("p50_ms", "p99_ms")}
    return out


def _ratios(ctl: list[dict[str, Any]], flr: list[dict[str, Any]], q: str) -> list[float]:
    """Controller over floor for ``q`` (p50, p99), run by run (pairs with a NaN or a zero floor left out)."""
    return [
        c[f"{q}_ms"] / f[f"{q}_ms"]
        for c, f in zip(ctl, flr, strict=True)
        if f[f"{q}_ms"] and not math.isnan(f[f"{q}_ms"]) and not math.isnan(c[f"{q}_ms"])
    ]


def _merge_store(rate: int, runs: list[tuple[dict[str, Any], dict[str, Any]]], store: str) -> dict[str, Any]:
    """One store's ring windows at ``rate``, merged, with each run's ratio over that run's floor."""
    ctl, flr = [c for c, _ in runs], [f for _, f in runs]
    out = {"store": store, **_merge_runs(rate, ctl)}
    out["floor_p50_ms"] = rounded(median([f["p50_ms"] for f in flr]))
    out["floor_p99_ms"] = rounded(median([f["p99_ms"] for f in flr]))
    for q in ("p50", "p99"):
        out[f"controller_over_floor_{q}"] = spread(_ratios(ctl, flr, q))
    return out


def _takeover_run(
    calls: list[PeerCall], placed: int, killed_ns: int, hung_up: int, quiet: dict[str, Any]
) -> dict[str, Any]:
    """One kill: per call, seconds from the SIGKILL to the second sideband (the re-attach)."""
    latencies = sorted((c.attached_ns[1] - killed_ns) / 1e9 for c in calls if len(c.attached_ns) >= 2)
    drops = sorted((c.dropped_ns - killed_ns) / 1e9 for c in calls if c.dropped_ns)
    return {
        "placed": placed,
        "calls": len(calls),
        "reattached": len(latencies),
        "hung_up": hung_up,
        "latencies_s": [rounded(x) for x in latencies],
        "p50_s": rounded(percentile(latencies, 50)),
        "max_s": rounded(latencies[-1]) if latencies else None,
        "drop_seen_p50_s": rounded(percentile(drops, 50)),
        "noise": quiet,
    }


def _merge_takeover(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every call of every run: p50, min and max of the kill → re-attach, and each run's own."""
    latencies = sorted(x for r in runs for x in r["latencies_s"])
    return {
        "runs": len(runs),
        "calls": sum(r["calls"] for r in runs),
        "reattached": sum(r["reattached"] for r in runs),
        "p50_s": rounded(percentile(latencies, 50)),
        "min_s": latencies[0] if latencies else None,
        "max_s": latencies[-1] if latencies else None,
        "per_run": runs,
    }


def _sustained(entry: dict[str, Any]) -> bool:
    p99 = entry.get("p99_ms")
    achieved = entry.get("achieved_rate") or 0
    return (
        p99 is not None and not math.isnan(p99) and p99 < RING_P99_LIMIT_MS and entry.get("lost", 1) == 0
        and achieved >= 0.95 * entry["rate"]
    )


def _at(items: list[dict[str, Any]], key: str, value: int) -> dict[str, Any] | None:
    return next((i for i in items if i.get(key) == value), None)


def evaluate_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and whether it was met (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: Any, ok: Callable[[float], bool], where: dict[str, Any] | None = None,
            skipped: str | None = None) -> None:
        met = None if value is None or (isinstance(value, float) and math.isnan(value)) else ok(value)
        entry = {"name": name, "target": target, "value": value, "met": met}
        if where is not None:  # a latency: the machine's own jitter in the same window, for comparison
            entry["probe_lag_p99_ms"] = (where.get("noise") or {}).get("probe_lag_p99_ms")
            entry["steal_percent"] = (where.get("noise") or {}).get("steal_percent")
        if skipped:
            entry["skipped"] = skipped
        out.append(entry)

    ring100 = _at(r.get("ring_to_answer", []), "rate", 100)
    floor100 = _at(r.get("floor", []), "rate", 100)
    add("ring_to_answer_p99_at_100", "<= 5 ms", ring100 and ring100["p99_ms"], lambda v: v <= 5, ring100 or {})
    add("ring_p50_over_floor_at_100", "<= 3x", floor100 and floor100["controller_over_floor_p50"]["median"],
        lambda v: v <= 3)
    add("new_call_cpu_ms", "<= 2.5 ms", r.get("new_call_cpu_ms"), lambda v: v <= 2.5)
    levels = r.get("concurrency", [])
    top = max(levels, key=lambda e: e["calls"]) if levels else None
    add("concurrent_calls", ">= 2000", top and top["calls"], lambda v: v >= 2000)
    add("rss_per_call_kb", "<= 50 KB", top and top["rss_per_call_kb"], lambda v: v <= 50)
    add("transcript_growth_bytes_per_line", "<= 512 B", r.get("transcript_growth_bytes_per_line"),
        lambda v: v <= 512)
    add("tool_reaction_p99_ms", "<= 20 ms", top and top["tool_reaction_p99_ms"], lambda v: v <= 20, top or {})
    hang = r.get("hangup_reaction") or {}
    add("hangup_reaction_p99_ms", "<= 10 ms", hang.get("p99_ms"), lambda v: v <= 10, hang)
    add("intake_webhooks_per_s", ">= 2000/s", (r.get("intake") or {}).get("webhooks_per_s"), lambda v: v >= 2000)
    # the ring targets again, judged the same way, on each store
    for store, e in (r.get("ring_to_answer_by_store") or {}).items():
        at100 = e if e.get("rate") == 100 and "skipped" not in e else None
        add(f"ring_to_answer_p99_at_100_{store}", "<= 5 ms", at100 and at100["p99_ms"], lambda v: v <= 5,
            at100 or {}, skipped=e.get("skipped"))
        add(f"ring_p50_over_floor_at_100_{store}", "<= 3x",
            at100 and at100["controller_over_floor_p50"]["median"], lambda v: v <= 3, skipped=e.get("skipped"))
    # new calls while the house is full, and the controller's collector pauses there (#18)
    house_skipped = r.get("ring_under_load_skipped") or {}
    for name, wanted, value, ok, where in full_house.target_rows(r):
        add(name, wanted, value, ok, where, skipped=house_skipped.get(name.rsplit("_", 1)[1]))
    # the worst kill → re-attach of a store, every call re-attached
    takeover = r.get("takeover") or {}
    for store in database.STORES:
        t = takeover.get(store) or {}
        incomplete = not t.get("calls") or t.get("reattached") != t.get("calls")
        worst = t.get("max_s") if t.get("max_s") is not None or not t.get("calls") else f"0 of {t['calls']}"
        add(f"takeover_max_s_{store}", "<= 10 s, every call", worst,
            (lambda v: False) if incomplete else (lambda v: v <= 10), skipped=t.get("skipped"))
    return out


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{suffix}" if abs(value) < 100 else f"{value:.0f}{suffix}"
    return f"{value}{suffix}"


def render_table(r: dict[str, Any]) -> str:
    """The short human summary (also pasted into the README's Performance section)."""
    lines = []
    m = r.get("machine", {})
    lines.append(f"sip-controller bench ({r.get('mode')}), {r.get('started_at')}, {m.get('cores')} cores, "
                 f"{m.get('memory_mb')} MB, Python {m.get('python')}, {m.get('cpu_model') or m.get('platform')}")
    lines.append(f"(load average at start {r.get('load_avg_at_start')}, at end {r.get('load_avg_at_end')}; "
                 "the machine is shared)")
    lines.append("")
    lines.append(
        "| ring-to-answer | p50 ms | p90 ms | p99 ms | max ms | floor p50 | floor p99 | ctl/floor p50 | ctl/floor p99 "
        "| probe p99 ms | steal % |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    floors = {f["rate"]: f for f in r.get("floor", [])}
    for e in r.get("ring_to_answer", []):
        f = floors.get(e["rate"], {})
        lines.append(
            f"| {e['rate']} calls/s | {_fmt(e['p50_ms'])} | {_fmt(e['p90_ms'])} | {_fmt(e['p99_ms'])} | "
            f"{_fmt(e['max_ms'])} | {_fmt(f.get('p50_ms'))} | {_fmt(f.get('p99_ms'))} | "
            f"{_fmt((f.get('controller_over_floor_p50') or {}).get('median'), 'x')} | "
            f"{_fmt((f.get('controller_over_floor_p99') or {}).get('median'), 'x')} | "
            f"{_fmt(e.get('noise', {}).get('probe_lag_p99_ms'))} | {_fmt(e.get('noise', {}).get('steal_percent'))} |"
        )
    lines.append("")
    lines.append("| concurrent calls | RSS/call KB | CPU % | tool reaction p50 ms | tool reaction p99 ms "
                 "| probe p99 ms | steal % |")
    lines.append("|---|---|---|---|---|---|---|")
    for e in r.get("concurrency", []):
        quiet = e.get("noise", {})
        lines.append(f"| {e['calls']} | {_fmt(e['rss_per_call_kb'])} | {_fmt(e['cpu_percent'])} | "
                     f"{_fmt(e['tool_reaction_p50_ms'])} | {_fmt(e['tool_reaction_p99_ms'])} | "
                     f"{_fmt(quiet.get('probe_lag_p99_ms'))} | {_fmt(quiet.get('steal_percent'))} |")
    lines.append("")
    lines.extend(full_house.table_lines(r))
    by_store = r.get("ring_to_answer_by_store") or {}
    if by_store:
        lines.append("| ring-to-answer by store | calls/s | p50 ms | p99 ms | max ms | floor p50 | floor p99 "
                     "| ctl/floor p50 | ctl/floor p99 | probe p99 ms | steal % |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for store, e in by_store.items():
            if "skipped" in e:
                lines.append(f"| {store} | skipped: {e['skipped']} |")
                continue
            quiet = e.get("noise", {})
            lines.append(
                f"| {store} | {e['rate']} | {_fmt(e['p50_ms'])} | {_fmt(e['p99_ms'])} | {_fmt(e['max_ms'])} | "
                f"{_fmt(e['floor_p50_ms'])} | {_fmt(e['floor_p99_ms'])} | "
                f"{_fmt(e['controller_over_floor_p50'].get('median'), 'x')} | "
                f"{_fmt(e['controller_over_floor_p99'].get('median'), 'x')} | "
                f"{_fmt(quiet.get('probe_lag_p99_ms'))} | {_fmt(quiet.get('steal_percent'))} |"
            )
        lines.append("")
    takeover = r.get("takeover") or {}
    if takeover:
        defaults = ", the defaults" if takeover.get("lease_defaults") else ""
        lines.append(f"| takeover (lease {_fmt(takeover.get('lease_s'), ' s')}, heartbeat "
                     f"{_fmt(takeover.get('heartbeat_s'), ' s')}{defaults}) | runs | calls re-attached "
                     "| kill → re-attach p50 s | min s | max s |")
        lines.append("|---|---|---|---|---|---|")
        for store in database.STORES:
            t = takeover.get(store) or {}
            if "skipped" in t:
                lines.append(f"| {store} | skipped: {t['skipped']} |")
                continue
            lines.append(f"| {store} | {t.get('runs')} | {t.get('reattached')} of {t.get('calls')} | "
                         f"{_fmt(t.get('p50_s'))} | {_fmt(t.get('min_s'))} | {_fmt(t.get('max_s'))} |")
        lines.append("")
    hang = r.get("hangup_reaction") or {}
    intake = r.get("intake") or {}
    lines.append("| figure | value |")
    lines.append("|---|---|")
    lines.append(f"| highest rate with ring p99 < 10 ms | {_fmt(r.get('max_rate_p99_under_10ms'), ' calls/s')} |")
    lines.append(f"| CPU per new call | {_fmt(r.get('new_call_cpu_ms'), ' ms')} (the floor, with its sideband: "
                 f"{_fmt(r.get('new_call_cpu_floor_ms'), ' ms')}; ratio "
                 f"{_fmt((r.get('new_call_cpu_over_floor') or {}).get('median'), 'x')}) |")
    lines.append(f"| memory growth per transcript line | {_fmt(r.get('transcript_growth_bytes_per_line'), ' B')} |")
    hang_quiet = hang.get("noise") or {}
    lines.append(f"| hangup reaction at {hang.get('calls')} calls | p50 {_fmt(hang.get('p50_ms'), ' ms')}, "
                 f"p99 {_fmt(hang.get('p99_ms'), ' ms')} (probe p99 {_fmt(hang_quiet.get('probe_lag_p99_ms'), ' ms')}, "
                 f"steal {_fmt(hang_quiet.get('steal_percent'), ' %')}) |")
    lines.append(f"| webhook intake | {_fmt(intake.get('webhooks_per_s'), '/s')}, "
                 f"{_fmt(intake.get('cpu_ms_per_webhook'), ' ms')} CPU each |")
    lines.append("")
    lines.append("| target | wanted | measured | met | machine probe p99 ms in that window |")
    lines.append("|---|---|---|---|---|")
    for t in r.get("targets", []):
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        probe = _fmt(t.get("probe_lag_p99_ms"))
        lines.append(f"| {t['name']} | {t['target']} | {_fmt(t['value'])} | {met} | {probe} |")
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path) -> Path:
    """``<out_dir>/<date>-<host>.json`` and a copy as ``latest.json``; returns the dated path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    date = str(results.get("started_at", ""))[:10] or datetime.now(UTC).date().isoformat()
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(results["machine"]["host"]))
    path = out_dir / f"{date}-{host}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    shutil.copyfile(path, out_dir / "latest.json")
    return path


def run(plan: Plan, out_dir: Path, *, database_url: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Run every scenario of ``plan``, write the results file; returns its path and the results. PostgreSQL:
    ``database_url``, else ``SIPCTL_DATABASE_URL``, else the local default, skipped when none answers."""
    results = asyncio.run(Bench(plan, database_url=database_url).run())
    return write_results(results, out_dir), results
