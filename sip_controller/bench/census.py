"""``sipctl bench --census``: where the collector's objects come from, per live call.

One ``sipctl serve`` with its diagnostics on (``SIPCTL_DIAGNOSTICS=1``); after a warm-up, the objects the
collector tracks are counted by type (``GET /v1/diagnostics/census``: ``gc.get_objects``, so not the frozen
start-up heap) with no call live, and again with ``calls`` calls live and talking (a transcript line every 2 s, a
tool call every ~30 s) after ``talk_s`` of conversation; the difference divided by the calls is what each live call
keeps. Beside it: the controller's resident memory per call and, over a window of ``window_s`` at that level, its
collector's passes and its event-loop lag. Printed as a table and written to ``<out>/census.json``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sip_controller.bench import full_house, write_result
from sip_controller.bench.stats import rounded

#: rows of the per-type table
TOP = 25


def per_call(empty: dict[str, Any], full: dict[str, Any], calls: int) -> list[dict[str, Any]]:
    """Types by how many more of them the collector tracks per live call (the ``TOP`` largest)."""
    before, after = empty["by_type"], full["by_type"]
    rows = [
        {"type": name, "at_0": before.get(name, 0), "at_calls": count,
         "per_call": rounded((count - before.get(name, 0)) / max(1, calls), 2)}
        for name, count in after.items()
    ]  # fmt: skip
    rows.sort(key=lambda row: row["per_call"], reverse=True)
    return rows[:TOP]


async def take(calls: int, talk_s: float, window_s: float) -> dict[str, Any]:
    from sip_controller.bench.runner import FULL, Bench, _raise_fd_limit, _say

    _raise_fd_limit()
    plan = full_house.HOUSE_PLANS["full"]
    bench = Bench(FULL)
    await bench.peer.start()
    try:
        with full_house.talking(bench, plan):
            async with full_house.diagnosed_controller(bench) as (child, diag):
                peer = bench.peer
                peer.target(child.port)
                await peer.place_at_rate(100, 200, 5, hold_s=0.1)  # warm-up
                await peer.wait_for(lambda: peer.live == 0, 10)
                peer.forget_finished()
                await asyncio.sleep(1.0)
                rss0 = child.rss()
                empty = await diag.census()
                _say(f"census at 0 calls: {empty['tracked']} tracked, {empty['frozen']} frozen")
                live = await full_house.fill(bench, calls, plan.ramp_rate)
                await asyncio.sleep(talk_s)
                full = await diag.census()
                rss1 = child.rss()
                _say(f"census at {live} calls: {full['tracked']} tracked")
                lines0 = peer.rec.lines
                await diag.reset()
                rss_w0 = child.rss()
                await asyncio.sleep(window_s)
                window = await diag.window()
                rss_w1 = child.rss()
                lines = peer.rec.lines - lines0
    finally:
        await bench.peer.stop()
    return {
        "calls": live,
        "talk_s": talk_s,
        "tracked_at_0": empty["tracked"],
        "tracked_at_calls": full["tracked"],
        "tracked_per_call": rounded((full["tracked"] - empty["tracked"]) / max(1, live), 1),
        "frozen": empty["frozen"],
        "generations_at_calls": full["generations"],
        "gc_count_at_calls": full["gc_count"],
        "gc_threshold": empty["gc_threshold"],
        "rss_per_call_kb": rounded((rss1 - rss0) / 1024 / max(1, live), 2),
        "rss_growth_bytes_per_line": rounded((rss_w1 - rss_w0) / lines, 1) if lines else None,
        "window": window,
        "by_type": per_call(empty, full, live),
    }


def render(result: dict[str, Any]) -> str:
    w = result["window"]
    lines = [
        f"census: {result['calls']} calls live after {result['talk_s']:g} s of talk; the collector tracks "
        f"{result['tracked_at_0']} objects with none live, {result['tracked_at_calls']} with them "
        f"({result['tracked_per_call']} per call; {result['frozen']} frozen at start-up, thresholds "
        f"{result['gc_threshold']}); RSS {result['rss_per_call_kb']} KB per call, growth "
        f"{result['rss_growth_bytes_per_line']} B per transcript line",
        f"over {w['seconds']:g} s at that level: loop lag p99 {w['loop_lag']['p99_ms']} ms, max "
        f"{w['loop_lag']['max_ms']} ms; collector passes "
        + ", ".join(f"gen {g}: {v['count']} (max {v['max_ms']} ms)" for g, v in w["gc"].items()),
        "",
        "| type | tracked at 0 | tracked at N | per call |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['type']} | {r['at_0']} | {r['at_calls']} | {r['per_call']} |" for r in result["by_type"]]
    return "\n".join(lines)


def main(out_dir: Path, *, calls: int = 1000, talk_s: float = 10.0, window_s: float = 20.0) -> int:
    result = asyncio.run(take(calls, talk_s, window_s))
    write_result(result, out_dir / "census.json", render)
    return 0
