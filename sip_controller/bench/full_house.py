"""Ring-under-load: new calls ring while the house is full (``ring_under_load`` in the results).

Per store (the SQLite file, then PostgreSQL in a throwaway schema), one ``sipctl serve`` with its diagnostics on
(``SIPCTL_DIAGNOSTICS=1``, :mod:`sip_controller.service.diagnostics`) is filled to each level of background calls
(attached, each with a transcript line every 2 s and a tool call every ~30 s, as in the concurrency scenario);
at each level new calls arrive at each rate for a window (each greeted, then hung up after ``hold_s``), and the
window reports webhook written → accept received (p50/p90/p99/max) as the peer measures it, beside what only the
controller can see of itself: its event loop's lag and its collector's passes per generation, read from its admin
API (``GET /v1/diagnostics``, reset at the start of each window). Every loop is bounded in calls and in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import httpx

from sip_controller.bench import database, noise, proc
from sip_controller.bench.peer import Peer
from sip_controller.bench.stats import latency_summary, median, rounded, spread


class Bench(Protocol):
    """What the scenario needs of :class:`sip_controller.bench.runner.Bench` (named here, not imported: the runner
    imports this module)."""

    peer: Peer
    postgres: database.Postgres

    def controller(
        self, max_calls: int, env: dict[str, str] | None = None
    ) -> contextlib.AbstractAsyncContextManager[proc.Child]: ...

#: the window figures, merged over runs by their median
FIGURES = (
    "p50_ms", "p90_ms", "p99_ms", "max_ms", "loop_lag_p99_ms", "loop_lag_max_ms", "gc_max_pause_ms",
    "gc_max_pause_cpu_ms",
    "achieved_rate", "cpu_percent", "tool_reaction_p99_ms", "background_live",
)  # fmt: skip
#: the figures merged by their worst run instead
WORST = ("max_ms", "loop_lag_max_ms", "gc_max_pause_ms", "gc_max_pause_cpu_ms")


@dataclass(frozen=True)
class HousePlan:
    """How much of it, for how long."""

    rates: tuple[int, ...]
    levels: tuple[int, ...]
    #: seconds of new calls per window
    seconds: float
    #: windows per (level, rate), back to back; figures are their medians
    runs: int
    #: a new call hangs up this long after its greeting
    hold_s: float
    #: background calls are placed at this rate
    ramp_rate: int
    transcript_interval_s: float
    tool_interval_s: float
    #: a pause after the ramp and between windows (the previous window's calls hang up in it)
    settle_s: float


HOUSE_PLANS = {
    "full": HousePlan(rates=(20, 100, 200), levels=(0, 1000, 2000), seconds=5, runs=3, hold_s=1.0, ramp_rate=200,
                      transcript_interval_s=2.0, tool_interval_s=30.0, settle_s=2.0),
    "quick": HousePlan(rates=(20, 100, 200), levels=(0, 1000), seconds=3, runs=1, hold_s=1.0, ramp_rate=200,
                       transcript_interval_s=2.0, tool_interval_s=30.0, settle_s=1.5),
    "smoke": HousePlan(rates=(50,), levels=(10,), seconds=1, runs=1, hold_s=0.2, ramp_rate=100,
                       transcript_interval_s=0.5, tool_interval_s=1.0, settle_s=0.3),
}  # fmt: skip


class ControllerDiagnostics:
    """The admin API's diagnostics routes of one controller (bearer token)."""

    def __init__(self, port: int, token: str) -> None:
        self._client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {token}"}, timeout=30,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def reset(self) -> None:
        (await self._client.post("/v1/diagnostics/reset")).raise_for_status()

    async def window(self) -> dict[str, Any]:
        response = await self._client.get("/v1/diagnostics")
        response.raise_for_status()
        return dict(response.json())

    async def census(self) -> dict[str, Any]:
        response = await self._client.get("/v1/diagnostics/census")
        response.raise_for_status()
        return dict(response.json())


def diagnostics_env() -> tuple[dict[str, str], str]:
    """The controller's environment that turns its diagnostics on, and the admin token that reads them."""
    token = secrets.token_urlsafe(32)
    return {"SIPCTL_DIAGNOSTICS": "1", "SIPCTL_ADMIN_TOKEN": token}, token


@contextlib.asynccontextmanager
async def diagnosed_controller(
    bench: Bench, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[proc.Child, ControllerDiagnostics]]:
    """A ``sipctl serve`` with its diagnostics on, ready, and the client that reads them."""
    extra, token = diagnostics_env()
    async with bench.controller(max_calls=1_000_000, env={**(env or {}), **extra}) as child:
        await child.wait_ready()
        diag = ControllerDiagnostics(child.port, token)
        try:
            yield child, diag
        finally:
            await diag.aclose()


@contextlib.contextmanager
def talking(bench: Bench, plan: HousePlan) -> Any:
    """The peer's background calls talk at the plan's pace for the body; the bench's own pace after."""
    peer = bench.peer
    before = peer.transcript_interval_s, peer.tool_interval_s
    peer.transcript_interval_s, peer.tool_interval_s = plan.transcript_interval_s, plan.tool_interval_s
    try:
        yield
    finally:
        peer.transcript_interval_s, peer.tool_interval_s = before


async def fill(bench: Bench, level: int, rate: int) -> int:
    """Background calls (talking) until ``level`` are live (bounded); returns how many are."""
    peer = bench.peer
    missing = level - peer.live
    if missing > 0:
        rec = peer.rec
        before = rec.greetings
        await peer.place_at_rate(rate, missing, missing / rate + 30, talk=True)
        await peer.wait_for(lambda: rec.greetings - before >= missing, 30)
    return peer.live


async def window(bench: Bench, child: proc.Child, diag: ControllerDiagnostics, plan: HousePlan,
                 rate: int) -> dict[str, Any]:
    """New calls at ``rate`` for ``plan.seconds`` over the calls already live; the controller's own view too."""
    peer = bench.peer
    background = peer.live
    before = set(peer.calls)
    peer.reset()
    count = max(1, int(rate * plan.seconds))
    quiet: dict[str, Any] = {}
    await diag.reset()
    async with noise.measuring(quiet):
        cpu0, t0 = child.cpu_s(), time.perf_counter()
        with noise.no_gc():
            placed = await peer.place_at_rate(rate, count, plan.seconds + 1, hold_s=plan.hold_s)
            elapsed = time.perf_counter() - t0
            cpu = child.cpu_s() - cpu0
            mine = [c for k, c in peer.calls.items() if k not in before]
            await peer.wait_for(lambda: all(c.accepted_ns for c in mine), 5)
    inside = await diag.window()
    rec = peer.reset()
    # this window's calls only: a background call still being accepted (a backlog) is not a ring of this window
    ring_ns = [c.accepted_ns - c.sent_ns for c in mine if c.accepted_ns and c.sent_ns]
    # the window's calls hang up hold_s after their greeting: back to the background level before the next one
    await peer.wait_for(lambda: peer.live <= background, plan.hold_s + 10)
    peer.forget_finished()
    ring = latency_summary(ring_ns)
    lag = inside["loop_lag"]
    return {
        "rate": rate,
        **ring,
        "lost": placed - len(ring_ns),
        "webhook_errors": rec.webhook_errors,
        "achieved_rate": rounded(placed / elapsed, 1),
        "cpu_percent": rounded(100 * cpu / elapsed, 1),
        "background_live": background,
        "tool_reaction_p99_ms": latency_summary(rec.tool_ns)["p99_ms"],
        "tool_outputs": len(rec.tool_ns),
        "loop_lag_p99_ms": lag["p99_ms"],
        "loop_lag_max_ms": lag["max_ms"],
        "loop_lag_samples": lag["count"],
        "gc_max_pause_ms": inside["gc_max_pause_ms"],
        "gc_max_pause_cpu_ms": inside["gc_max_pause_cpu_ms"],
        "gc": inside["gc"],
        "controller_window_s": inside["seconds"],
        "noise": quiet,
    }


def merge(store: str, level: int, rate: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row: the median of each figure over the runs, the collector's passes summed (max: the largest)."""
    out: dict[str, Any] = {"rate": rate, "live_calls": level, "store": store}
    for key in FIGURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        pick = max if key in WORST else median  # a pause is a pause: the worst of the runs, not their median
        out[key] = rounded(pick(values)) if values else None
    gc_by_gen: dict[str, dict[str, Any]] = {}
    for gen in ("0", "1", "2"):
        passes = [r["gc"][gen] for r in runs]
        maxima = [p["max_ms"] for p in passes if p["max_ms"] is not None]
        cpu = [p["cpu_max_ms"] for p in passes if p["cpu_max_ms"] is not None]
        gc_by_gen[gen] = {
            "count": sum(p["count"] for p in passes),
            "max_ms": max(maxima) if maxima else None,
            "cpu_max_ms": max(cpu) if cpu else None,
            "total_ms": rounded(sum(p["total_ms"] for p in passes)),
        }
    out["gc"] = gc_by_gen
    out["count"] = sum(r["count"] for r in runs)
    out["lost"] = sum(r["lost"] for r in runs)
    out["runs"] = len(runs)
    out["spread"] = {k: spread([r[k] for r in runs if r.get(k) is not None]) for k in ("p99_ms", "gc_max_pause_ms")}
    out["noise"] = {
        key: rounded(median([r["noise"][key] for r in runs if r["noise"].get(key) is not None]))
        for key in ("steal_percent", "probe_lag_p50_ms", "probe_lag_p99_ms", "probe_lag_max_ms")
    }
    return out


async def one_store(bench: Bench, plan: HousePlan, store: str, env: dict[str, str],
                    say: Callable[[str], None]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with diagnosed_controller(bench, env) as (child, diag):
        peer = bench.peer
        peer.target(child.port)
        # warm-up: the first calls import and build what later ones reuse
        await peer.place_at_rate(100, max(5, plan.rates[0]), 2, hold_s=0.1)
        await peer.wait_for(lambda: peer.live == 0, 10)
        peer.forget_finished()
        for level in plan.levels:
            live = await fill(bench, level, plan.ramp_rate)
            await asyncio.sleep(plan.settle_s)
            say(f"ring under load, {store}: {live} calls live")
            for rate in plan.rates:
                runs = []
                for _ in range(plan.runs):
                    runs.append(await window(bench, child, diag, plan, rate))
                    await asyncio.sleep(plan.settle_s)
                row = merge(store, level, rate, runs)
                rows.append(row)
                say(f"  {rate}/s over {level}: p50 {row['p50_ms']} p99 {row['p99_ms']} max {row['max_ms']} ms, "
                    f"loop lag p99 {row['loop_lag_p99_ms']} ms, GC max {row['gc_max_pause_ms']} ms "
                    f"(gen counts {[row['gc'][g]['count'] for g in ('0', '1', '2')]})")
    return rows


async def scenario(bench: Bench, plan: HousePlan, say: Callable[[str], None]) -> dict[str, Any]:
    """``ring_under_load`` (the rows of every store) and ``ring_under_load_skipped`` (store → why)."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with talking(bench, plan):
        for store in database.STORES:
            async with contextlib.AsyncExitStack() as stack:
                if store == "sqlite":
                    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sipctl-bench-house-")))
                    env = {"SIPCTL_STATE__PATH": str(folder / "state.db")}
                elif bench.postgres.url is None:
                    skipped[store] = bench.postgres.skipped or "no PostgreSQL"
                    continue
                else:
                    try:
                        url = await stack.enter_async_context(database.throwaway_schema(bench.postgres.url))
                    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        skipped[store] = f"no schema on {bench.postgres.server}: {type(exc).__name__}: {exc}"[:300]
                        continue
                    env = {database.ENV: url}
                rows.extend(await one_store(bench, plan, store, env, say))
    return {"ring_under_load": rows, "ring_under_load_skipped": skipped, "ring_under_load_plan": asdict(plan)}


def _at(rows: list[dict[str, Any]], store: str, level: int, rate: int | None = None) -> list[dict[str, Any]]:
    return [r for r in rows if r["store"] == store and r["live_calls"] == level and rate in (None, r["rate"])]


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def target_rows(r: dict[str, Any]) -> list[tuple[str, str, Any, Callable[[float], bool], dict[str, Any] | None]]:
    """The issue's ring-under-load targets: (name, wanted, value, test, window) for the runner's target list."""
    rows = r.get("ring_under_load") or []
    out: list[tuple[str, str, Any, Callable[[float], bool], dict[str, Any] | None]] = []
    for store in database.STORES:
        for rate, limit in ((100, 5.0), (200, 10.0)):
            row = next(iter(_at(rows, store, 1000, rate)), None)
            out.append((f"ring_under_load_p99_{rate}_at_1000_{store}", f"<= {limit:g} ms",
                        row and row["p99_ms"], _at_most(limit), row or {}))
        top = _at(rows, store, 2000)
        worst = max((x["gc_max_pause_ms"] for x in top if x["gc_max_pause_ms"] is not None), default=None)
        out.append((f"gc_max_pause_at_2000_{store}", "<= 10 ms", worst, _at_most(10.0), None))
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table_lines(r: dict[str, Any]) -> list[str]:
    rows = r.get("ring_under_load") or []
    skipped = r.get("ring_under_load_skipped") or {}
    if not rows and not skipped:
        return []
    lines = [
        "| ring under load | live calls | calls/s | p50 ms | p90 ms | p99 ms | max ms | loop lag p99 ms "
        "| loop lag max ms | GC passes gen 0/1/2 | GC max ms gen 0/1/2 | GC max CPU ms | CPU % | probe p99 ms "
        "| steal % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        gens = [e["gc"][g] for g in ("0", "1", "2")]
        quiet = e.get("noise", {})
        lines.append(
            f"| {e['store']} | {e['live_calls']} | {e['rate']} | {_fmt(e['p50_ms'])} | {_fmt(e['p90_ms'])} | "
            f"{_fmt(e['p99_ms'])} | {_fmt(e['max_ms'])} | {_fmt(e['loop_lag_p99_ms'])} | "
            f"{_fmt(e['loop_lag_max_ms'])} | {'/'.join(str(g['count']) for g in gens)} | "
            f"{'/'.join(_fmt(g['max_ms']) for g in gens)} | {_fmt(e['gc_max_pause_cpu_ms'])} | "
            f"{_fmt(e['cpu_percent'])} | "
            f"{_fmt(quiet.get('probe_lag_p99_ms'))} | {_fmt(quiet.get('steal_percent'))} |"
        )
    for store, why in skipped.items():
        lines.append(f"| {store} | skipped: {why} |")
    lines.append("")
    return lines
