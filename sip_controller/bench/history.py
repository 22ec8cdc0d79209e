"""``sipctl bench --history [N]``: the call history's queries on a store holding N finished calls (#17).

N calls (default 100,000) that ended over the last 30 days are seeded into a SQLite file and into a throwaway
PostgreSQL schema (skipped, saying why, when no server answers; :mod:`.database`): each with a realistic report
(10 to 30 transcript lines of varied words, usage-like costs), its full-text row, and for most of them an analysis
(a verdict and a summary), written the fastest way each backend offers (``executemany`` in one SQLite
transaction; ``COPY`` into PostgreSQL, the text vectors computed by the server), in chunks so memory stays
bounded. Then, on each store through the :class:`~sip_controller.state.store.Store` the service uses, the
median of :data:`RUNS` runs (after one warm-up) of:

- ``overview_24h``: ``Store.overview`` over the last 24 hours, hour buckets;
- ``overview_30d``: over the last 30 days (every seeded call), day buckets;
- ``list_filtered``: the first page (50) of the list filtered by ``ended_reason`` and ``profile``;
- ``search``: the first page of a full-text search for a word in about one call in twenty;
- ``export_1000``: 1,000 rows of CSV through the export's own streaming code.

The target is each at most :data:`TARGET_MS` ms. Results go to ``<out>/history.json`` and a table. A benchmark,
not a test: the smoke test runs it at N=200 and checks the shape of its results, never a time.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from sip_controller.bench import database, write_result
from sip_controller.service import history_export
from sip_controller.service.history import ListQuery
from sip_controller.state.postgres import PostgresStore
from sip_controller.state.records import HistoryQuery, dumps
from sip_controller.state.sqlite import SQLiteStore
from sip_controller.state.store import Store

DEFAULT_CALLS = 100_000
RUNS = 5
TARGET_MS = 300.0
#: calls generated and written at a time
CHUNK = 5_000
DAY = 86_400.0
#: the seeded calls ended over this many days up to the bench's "now"
SPREAD_DAYS = 30
PROFILES = ("default", "sales", "support", "billing")
#: (ended_reason, weight)
REASONS = (
    ("agent_end_call", 50), ("caller_hangup", 25), ("transferred", 10), ("max_duration", 3), ("silence_timeout", 4),
    ("rejected", 5), ("session_error", 1), ("transfer_failed", 2),
)  # fmt: skip
#: the word the search looks for: put in about one call in twenty
NEEDLE = "refund"
_WORD_TEXT = (
    "hello hi thanks thank you please sorry yes no okay sure great fine right well maybe actually really just "
    "order delivery parcel package tracking number account invoice bill payment card bank transfer balance "
    "appointment booking reservation table room flight ticket seat date time tomorrow today monday tuesday "
    "wednesday thursday friday saturday sunday morning afternoon evening week month year address street city "
    "postcode email phone name surname spell again repeat slowly quickly wait hold moment minute second help "
    "problem issue broken damaged missing late early cancel change update confirm check verify reset password "
    "login internet router connection signal speed slow fast plan contract upgrade price cost discount offer "
    "manager agent person human someone colleague department sales support billing technical team store shop "
    "open close hours weekend holiday closed available busy free full wrong correct exactly perfect lovely "
    "kitchen garden car insurance claim policy doctor clinic prescription pharmacy school class teacher lesson"
)
_WORDS = tuple(_WORD_TEXT.split())
_OPENERS = ("Hi, I'm calling about my", "Hello, I need help with the", "Yes, it's about the", "Could you check my")


def _sentence(rng: random.Random, needle: bool) -> str:
    words = rng.choices(_WORDS, k=rng.randint(5, 16))
    if needle:
        words.insert(rng.randrange(len(words) + 1), NEEDLE)
    return " ".join(words).capitalize() + rng.choice((".", "?", ".", "!"))


def _call(rng: random.Random, i: int, now: float) -> dict[str, Any]:
    """One finished call's columns, report and text."""
    ended = now - rng.random() * SPREAD_DAYS * DAY
    reason = rng.choices([r for r, _ in REASONS], weights=[w for _, w in REASONS])[0]
    answered = reason != "rejected"
    duration = rng.uniform(20, 600) if answered else 0.0
    ring = rng.uniform(0.25, 2.5) if answered else None
    received = ended - duration - (ring or 0.0)
    needle = rng.random() < 0.05
    lines = []
    if answered:
        count = rng.randint(10, 30)
        for n in range(count):
            text = _sentence(rng, needle and n == count // 2)
            if n == 0:
                text = f"{rng.choice(_OPENERS)} {rng.choice(_WORDS)}. {text}"
            lines.append({"role": "caller" if n % 2 == 0 else "assistant", "text": text, "at_s": round(n * 7.5, 3)})
    transcription = round(duration / 60 * 0.006, 6)
    cost = round(transcription + duration / 60 * rng.uniform(0.05, 0.3), 6) if answered else 0.0
    call_id = f"rtc_bench_{i:07d}"
    report = {
        "schema_version": 1, "call_id": call_id, "profile": None, "caller": "+1415***0123", "caller_masked": True,
        "ended_reason": reason, "transcript": lines, "tool_calls": [], "cost_usd": cost,
        "transcription_cost_usd": transcription,
    }  # fmt: skip
    profile = rng.choice(PROFILES)
    report["profile"] = profile
    verdict = rng.random()
    analysed = answered and verdict < 0.7
    success = verdict < 0.45
    return {
        "call_id": call_id, "profile": profile, "caller": f"+1415555{rng.randrange(10_000):04d}",
        "received_at": received, "accepted_at": None if ring is None else received + ring, "ended_at": ended,
        "ended_reason": reason, "cost_usd": cost, "report": dumps(report), "model_usd": cost - transcription,
        "transcription_usd": transcription if answered else 0.0,
        "text": "\n".join(str(line["text"]) for line in lines),
        "outcome": ("succeeded" if success else "failed") if analysed else None,
        "analysis_usd": 0.0004 if analysed else None,
        "analysis_summary": (f"The caller asked about {rng.choice(_WORDS)}; " + ("resolved." if success else
                             "not resolved.")) if analysed else None,
    }  # fmt: skip


def _chunks(n: int, now: float, seed: int = 17) -> Iterator[list[dict[str, Any]]]:
    rng = random.Random(seed)
    for start in range(0, n, CHUNK):
        yield [_call(rng, i, now) for i in range(start, min(n, start + CHUNK))]


def _analysis_result(c: dict[str, Any]) -> str:
    return dumps({"status": "completed", "summary": c["analysis_summary"], "success": c["outcome"] == "succeeded"})


# ---- seeding ---------------------------------------------------------------------------------------------------


def seed_sqlite(path: Path, n: int, now: float) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        next_id = 1
        for chunk in _chunks(n, now):
            conn.executemany(
                "INSERT INTO calls (call_id, owner, epoch, state, profile, inputs, caller, dialed, received_at, "
                "accepted_at, deadlines, cost_usd, updated_at, ended_at, ended_reason, report, model_usd, "
                "transcription_usd, analysis_usd, outcome, analysis_summary) VALUES (?, 'bench', 1, 'ended', ?, "
                "'{}', ?, '+18005550199', ?, ?, '{}', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c["call_id"], c["profile"], c["caller"], c["received_at"], c["accepted_at"], c["cost_usd"],
                  c["ended_at"], c["ended_at"], c["ended_reason"], c["report"], c["model_usd"],
                  c["transcription_usd"], c["analysis_usd"], c["outcome"], c["analysis_summary"]) for c in chunk],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO call_analyses (call_id, profile, status, attempts, created_at, due_at, result, "
                "cost_usd, finished_at) VALUES (?, ?, 'done', 1, ?, ?, ?, ?, ?)",
                [(c["call_id"], c["profile"], c["ended_at"], c["ended_at"], _analysis_result(c), c["analysis_usd"],
                  c["ended_at"]) for c in chunk if c["outcome"] is not None],
            )  # fmt: skip
            texts = [c for c in chunk if c["text"]]
            ids = range(next_id, next_id + len(texts))
            conn.executemany("INSERT INTO call_search (id, call_id) VALUES (?, ?)",
                             [(i, c["call_id"]) for i, c in zip(ids, texts, strict=True)])  # fmt: skip
            conn.executemany("INSERT INTO call_text (rowid, body) VALUES (?, ?)",
                             [(i, c["text"]) for i, c in zip(ids, texts, strict=True)])  # fmt: skip
            next_id += len(texts)
        conn.execute("COMMIT")
        conn.execute("INSERT INTO call_text (call_text) VALUES ('optimize')")
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def seed_postgres(url: str, n: int, now: float) -> None:
    conn = await asyncpg.connect(url, timeout=database.CONNECT_TIMEOUT_S)
    try:
        await conn.execute("CREATE TEMP TABLE seed_text (call_id text, body text)")
        for chunk in _chunks(n, now):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "calls",
                    columns=["call_id", "owner", "epoch", "state", "profile", "inputs", "caller", "dialed",
                             "received_at", "accepted_at", "deadlines", "cost_usd", "updated_at", "ended_at",
                             "ended_reason", "report", "model_usd", "transcription_usd", "analysis_usd", "outcome",
                             "analysis_summary"],
                    records=[(c["call_id"], "bench", 1, "ended", c["profile"], "{}", c["caller"], "+18005550199",
                              c["received_at"], c["accepted_at"], "{}", c["cost_usd"], c["ended_at"], c["ended_at"],
                              c["ended_reason"], c["report"], c["model_usd"], c["transcription_usd"],
                              c["analysis_usd"], c["outcome"], c["analysis_summary"]) for c in chunk],
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "call_analyses",
                    columns=["call_id", "profile", "status", "attempts", "created_at", "due_at", "result", "cost_usd",
                             "finished_at"],
                    records=[(c["call_id"], c["profile"], "done", 1, c["ended_at"], c["ended_at"], _analysis_result(c),
                              c["analysis_usd"], c["ended_at"]) for c in chunk if c["outcome"] is not None],
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "seed_text", records=[(c["call_id"], c["text"]) for c in chunk if c["text"]]
                )
        await conn.execute(
            "INSERT INTO call_search (call_id, body) SELECT call_id, to_tsvector('simple', body) FROM seed_text"
        )
        await conn.execute("VACUUM ANALYZE calls")
        await conn.execute("VACUUM ANALYZE call_search")
        await conn.execute("VACUUM ANALYZE call_analyses")
    finally:
        await conn.close()


# ---- measuring ---------------------------------------------------------------------------------------------------


async def _export_rows(store: Store, rows: int) -> int:
    query = ListQuery(HistoryQuery(limit=history_export.PAGE))
    first = await history_export.first_page(store, query)
    written = 0
    async for chunk in history_export.stream(store, query, "csv", first, max_rows=rows, on_done=lambda _: None):
        written += chunk.count(b"\n")
    return written - 1  # the header


def _queries(store: Store, now: float) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "overview_24h": lambda: store.overview(now - DAY, now, bucket_s=3600),
        "overview_30d": lambda: store.overview(now - SPREAD_DAYS * DAY, now, bucket_s=86_400),
        "list_filtered": lambda: store.list_finished(HistoryQuery(ended_reason="agent_end_call", profile="sales")),
        "search": lambda: store.list_finished(HistoryQuery(text=NEEDLE)),
        "export_1000": lambda: _export_rows(store, 1000),
    }


async def measure(store: Store, now: float, runs: int = RUNS) -> dict[str, Any]:
    timings: dict[str, Any] = {}
    for name, query in _queries(store, now).items():
        await query()  # warm-up: the first run reads the pages from disk
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            await query()
            samples.append((time.perf_counter() - started) * 1000)
        median = statistics.median(samples)
        timings[name] = {"median_ms": round(median, 1), "runs_ms": [round(s, 1) for s in samples],
                         "met": median <= TARGET_MS}  # fmt: skip
    return timings


async def _sanity(store: Store, now: float, n: int) -> dict[str, int]:
    """What the queries found (so a fast answer is not an empty one)."""
    month = await store.overview(now - SPREAD_DAYS * DAY, now, bucket_s=86_400)
    found = await store.list_finished(HistoryQuery(text=NEEDLE, limit=1000))
    listed = await store.list_finished(HistoryQuery(ended_reason="agent_end_call", profile="sales"))
    return {"calls_in_30d": month.calls, "search_hits_first_1000": len(found.calls), "list_page": len(listed.calls),
            "export_rows": await _export_rows(store, min(1000, n))}  # fmt: skip


async def run_sqlite(folder: Path, n: int, now: float, runs: int) -> dict[str, Any]:
    path = folder / "history-bench.db"
    await (await SQLiteStore.open(path)).aclose()  # the schema
    started = time.perf_counter()
    await asyncio.to_thread(seed_sqlite, path, n, now)
    seeded = time.perf_counter() - started
    store = await SQLiteStore.open(path)
    try:
        return {"seed_s": round(seeded, 1), "found": await _sanity(store, now, n),
                "timings": await measure(store, now, runs)}  # fmt: skip
    finally:
        await store.aclose()


async def run_postgres(url: str, n: int, now: float, runs: int) -> dict[str, Any]:
    async with database.throwaway_schema(url, "sipctl_bench_history") as schema_url:
        await (await PostgresStore.open(schema_url, pool_size=2)).aclose()  # the schema
        started = time.perf_counter()
        await seed_postgres(schema_url, n, now)
        seeded = time.perf_counter() - started
        store = await PostgresStore.open(schema_url, pool_size=2)
        try:
            return {"seed_s": round(seeded, 1), "found": await _sanity(store, now, n),
                    "timings": await measure(store, now, runs)}  # fmt: skip
        finally:
            await store.aclose()


async def take(n: int, *, database_url: str | None = None, runs: int = RUNS) -> dict[str, Any]:
    now = time.time()
    result: dict[str, Any] = {
        "bench": "history", "calls": n, "runs": runs, "target_ms": TARGET_MS, "host": socket.gethostname(),
        "at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"), "stores": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sipctl-history-bench-") as folder:
        result["stores"]["sqlite"] = await run_sqlite(Path(folder), n, now, runs)
    pg = await database.find(database_url)
    if pg.url is None:
        result["stores"]["postgresql"] = {"skipped": pg.skipped}
    else:
        result["stores"]["postgresql"] = {"server": pg.server, **await run_postgres(pg.url, n, now, runs)}
    result["met"] = all(
        t["met"] for s in result["stores"].values() if "timings" in s for t in s["timings"].values()
    )
    return result


def render(result: dict[str, Any]) -> str:
    stores = list(result["stores"])
    head = f"call history, {result['calls']:,} calls (median of {result['runs']} runs, ms; target <= " \
        f"{result['target_ms']:g})"  # fmt: skip
    lines = [head, "", f"{'query':<16}" + "".join(f"{s:>14}" for s in stores)]
    names = next((list(s["timings"]) for s in result["stores"].values() if "timings" in s), [])
    for name in names:
        cells = []
        for store in stores:
            timing = result["stores"][store].get("timings", {}).get(name)
            cells.append("skipped" if timing is None else f"{timing['median_ms']:.1f}{'' if timing['met'] else ' !'}")
        lines.append(f"{name:<16}" + "".join(f"{c:>14}" for c in cells))
    lines.append(f"{'seed (s)':<16}" + "".join(f"{result['stores'][s].get('seed_s', '-'):>14}" for s in stores))
    for store in stores:
        if "skipped" in result["stores"][store]:
            lines.append(f"{store}: skipped: {result['stores'][store]['skipped']}")
    return "\n".join(lines)


def main(out_dir: Path, *, calls: int = DEFAULT_CALLS, database_url: str | None = None, runs: int = RUNS) -> int:
    if calls < 1:
        print("sipctl bench --history: the number of calls must be at least 1")
        return 2
    result = asyncio.run(take(calls, database_url=database_url, runs=runs))
    write_result(result, out_dir / "history.json", render)
    return 0
