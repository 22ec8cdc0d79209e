"""Background work on the store that every replica runs: the bounded sweep.

The service owns the task (design principle 5): ``task = asyncio.create_task(sweep_loop(store))`` at start,
``task.cancel()`` (and await it) at shutdown. Every replica may run it; the deletes are idempotent.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, astuple

import structlog

from sip_controller.state.records import SweepCounts
from sip_controller.state.store import Store

log = structlog.get_logger("sip_controller.state.jobs")


async def sweep_once(
    store: Store, *, limit: int = 1000, max_rounds: int = 10, keep_batches_s: float | None = None
) -> SweepCounts:
    """Sweep until nothing is left or ``max_rounds`` sweeps of at most ``limit`` rows of each kind ran; what was
    deleted in all. Bounded both ways: no one sweep holds the store long, and one run never loops forever.
    ``keep_batches_s``: how long finished outbound batches are kept (``twilio.batch_retain_days``; None: forever)."""
    total = SweepCounts()
    for _ in range(max_rounds):
        counts = await store.sweep(limit=limit, keep_batches_s=keep_batches_s)
        total = SweepCounts(*(a + b for a, b in zip(astuple(total), astuple(counts), strict=True)))
        if max(astuple(counts)) < limit:
            break
    return total


async def sweep_loop(
    store: Store, *, every_s: float = 30.0, limit: int = 1000, max_rounds: int = 10, keep_batches_s: float | None = None
) -> None:
    """:func:`sweep_once` every ``every_s`` seconds until cancelled. A failed sweep (the database away for a
    moment) is logged and tried again next time: it never ends the loop."""
    while True:
        try:
            counts = await sweep_once(store, limit=limit, max_rounds=max_rounds, keep_batches_s=keep_batches_s)
        except Exception as exc:  # the store's or its driver's (asyncpg, sqlite3): never the end of the loop
            log.warning("store.sweep_failed", error=type(exc).__name__)
        else:
            if counts.total:
                log.debug("store.swept", **asdict(counts))
        await asyncio.sleep(every_s)
