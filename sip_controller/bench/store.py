"""The store on the ring path: how long claiming a webhook and creating its call row takes, per backend.

One ring is what the intake will do before it answers a webhook: ``claim("webhook:<id>")``,
``claim("call:<call_id>")`` and ``create_call`` (with the capacity check, ``max_live``), three transactions, timed
together from the first call to the last answer. Rings run one after another (the latency of one ring, not a
throughput test), after a warm-up; the store is a real SQLite file in a temporary folder and, with
``--database-url`` (or ``SIPCTL_DATABASE_URL``), PostgreSQL in a throwaway schema that is dropped afterwards.

    python -m sip_controller.bench.store [--rings 3000] [--database-url postgresql://…] [--json]

The numbers this prints are quoted in ``state/sqlite.py``, ``state/postgres.py`` and the CHANGELOG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sip_controller.bench.stats import percentile
from sip_controller.state.postgres import PostgresStore
from sip_controller.state.records import Fence, NewCall
from sip_controller.state.sqlite import SQLiteStore
from sip_controller.state.store import Store

#: live calls kept up while ringing (the default limits.max_concurrent_calls)
LIVE = 100
#: what a call's session inputs weigh in the row (instructions dominate)
INPUTS = {
    "incoming": {"call_id": "", "sip_headers": [{"name": "From", "value": "sip:+14155550100@pstn.example"}] * 6},
    "instructions": "You are the front desk of a dental practice. " * 40,
    "profile": {"voice": "marin", "tools": ["end_call", "transfer_call"], "max_duration_s": 1800},
}


@dataclass(frozen=True)
class Result:
    backend: str
    rings: int
    median_ms: float
    p99_ms: float
    max_ms: float


async def ring_path(store: Store, rings: int, *, warmup: int = 200, live: int = LIVE) -> list[float]:
    """Seconds per ring, for ``rings`` rings after ``warmup`` unmeasured ones. Between rings (not timed) the
    oldest call is finished once ``live`` calls are up, so the store holds a steady set of live calls and a
    growing history, as in service."""
    timings: list[float] = []
    up: deque[Fence] = deque()
    for i in range(warmup + rings):
        call_id = f"rtc_{secrets.token_hex(12)}"
        started = time.perf_counter()
        assert await store.claim(f"webhook:wh_{call_id}", 3600)
        assert await store.claim(f"call:{call_id}", 3600)
        call = NewCall(call_id, "bench", "default", INPUTS, time.time(), caller="+14155550100", dialed="+18005550199")
        row = await store.create_call(call, max_live=live + 1)
        if i >= warmup:
            timings.append(time.perf_counter() - started)
        assert row is not None
        up.append(row.fence)
        if len(up) >= live:
            await store.finish_call(up.popleft(), state="ended", ended_reason="caller_hangup", report={"n": i})
    return timings


def summarize(backend: str, timings: Sequence[float]) -> Result:
    ms = sorted(t * 1000 for t in timings)
    return Result(backend, len(ms), percentile(ms, 50), percentile(ms, 99), ms[-1])


async def run(rings: int, database_url: str | None) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="sipctl-bench-") as folder:
        async with await SQLiteStore.open(Path(folder) / "state.db") as sqlite:
            results.append(summarize("sqlite", await ring_path(sqlite, rings)))
    if database_url:
        import asyncpg

        schema = f"sipctl_bench_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f"CREATE SCHEMA {schema}")
            try:
                async with await PostgresStore.open(database_url, schema=schema) as pg:
                    results.append(summarize("postgresql", await ring_path(pg, rings)))
            finally:
                await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await admin.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sip_controller.bench.store", description=__doc__.split("\n")[0])
    parser.add_argument("--rings", type=int, default=3000, help="measured rings per backend (default 3000)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SIPCTL_DATABASE_URL"),
        help="PostgreSQL, where a throwaway schema is made and dropped (default: SIPCTL_DATABASE_URL)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.rings, args.database_url))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print("ring path: claim webhook-id + claim call_id + create call row (3 transactions)")
        for r in results:
            print(
                f"  {r.backend:<10} {r.rings} rings  median {r.median_ms:.3f} ms  p99 {r.p99_ms:.3f} ms  "
                f"max {r.max_ms:.3f} ms"
            )
        if not args.database_url:
            print("  (PostgreSQL: pass --database-url or set SIPCTL_DATABASE_URL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
