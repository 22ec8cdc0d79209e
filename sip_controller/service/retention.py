"""The call history's retention (#17): a bounded background job that deletes finished calls older than
``history.retain_days`` and strips the transcripts of calls older than ``history.transcript_retain_days``.

The app's lifespan owns the task (started after the store opens, cancelled at shutdown, like the sweep). Each pass
is one ``Store.purge`` of at most ``history.purge_batch`` calls (one transaction, oldest first); a full pass is
followed by the next after :data:`CATCH_UP_S` (a backlog drains in steps, never in one long transaction), otherwise
by the next after ``history.purge_every_s``. Every replica may run it: the deletes are idempotent (PostgreSQL's
passes skip the rows another replica is deleting). A failed pass is logged and tried again at the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from sip_controller.config import History
from sip_controller.state.records import Purged
from sip_controller.state.store import Store

log = structlog.get_logger("sip_controller.service.retention")

DAY_S = 86_400.0
#: the pause between two passes while there is a backlog
CATCH_UP_S = 1.0


def enabled(settings: History) -> bool:
    return settings.retain_days is not None or settings.transcript_retain_days is not None


async def purge_pass(store: Store, settings: History, now: float) -> Purged:
    """One bounded pass at ``now``: calls that ended over ``retain_days`` ago deleted, then transcripts of calls
    that ended over ``transcript_retain_days`` ago stripped; at most ``purge_batch`` calls in all. Logs
    ``history.purged`` with the counts when it did something."""
    before = 0.0 if settings.retain_days is None else now - settings.retain_days * DAY_S
    transcripts = None if settings.transcript_retain_days is None else now - settings.transcript_retain_days * DAY_S
    done = await store.purge(before=before, transcripts_before=transcripts, limit=settings.purge_batch)
    if done.calls or done.transcripts:
        log.info("history.purged", calls=done.calls, transcripts=done.transcripts, batch=settings.purge_batch)
    return done


async def retention_loop(
    store: Store,
    settings: History,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """:func:`purge_pass` until cancelled: again after :data:`CATCH_UP_S` while passes come back full, else after
    ``purge_every_s``. Returns at once when no retention is configured."""
    if not enabled(settings):
        return
    while True:
        pause = settings.purge_every_s
        try:
            done = await purge_pass(store, settings, clock())
        except Exception as exc:  # the store's or its driver's: never the end of the loop
            log.warning("history.purge_failed", error=type(exc).__name__)
        else:
            if done.calls + done.transcripts >= settings.purge_batch:
                pause = CATCH_UP_S
        await sleep(pause)
