"""The hangup janitor: hangups that must still be confirmed, finished by any replica, across restarts (#13).

A call whose hangup OpenAI has not confirmed stays ``hanging_up`` in the store with a ``wake_at`` (its next try).
While its supervisor lives, the supervisor retries (``CallOptions.on_hanging_up`` records each round). When nobody
supervises it any more (its owner's lease lapsed: a crash, a drain that had to exit; or this process owns it without
a live supervisor: a restart's leftovers after a takeover), the janitor takes it: it sends ``RealtimeCalls.hangup``
(REST only: no sideband is needed), and

- 2xx or 404 (the call is gone): the call is finished in the store, in one transaction, with its report
  (``hangup_confirmed: true`` and the attempts) and the report's outbox rows;
- anything else: the call stays ``hanging_up`` and is due again after a backoff (0.25 s doubling up to
  ``retry_max_s``), with no limit: until OpenAI confirms.

The report: a process that leaves a call ``hanging_up`` writes the report it would have sent as a
:data:`PENDING_REPORT` entry (:func:`leave_hanging_up` does both in one write); the janitor completes that document
(state, ``hangup_confirmed``, ``hangup_attempts``) and hands it to ``outbox_for`` for the deliveries. A bridged
call's Twilio recording whose callback came while the call was still live (after the report was left, so only on
the Twilio call's row) goes into it; one that comes while the janitor writes goes out late through
``late_recording`` (``CallRegistry.late_recording``), as for a call its supervisor finishes (``calls/recordings.py``).

Start it from the app's lifespan as a task the service owns (design principle 5), next to ``sweep_loop``::

    janitor = asyncio.create_task(
        run_hangup_janitor(
            store, api, process_id, supervised=registry.supervisor, outbox_for=...,
            late_recording=registry.late_recording,
        ),
        name="hangup-janitor",
    )
    ...
    janitor.cancel()  # at shutdown, then await it (CancelledError)

Fencing: every write carries the call's fence (an orphan is taken over first: epoch + 1), so a call is never
hung up and finished by two processes at once; a ``Fenced`` write means another replica has it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from sip_controller.calls.recordings import LateRecording, recording_since, row_recording
from sip_controller.realtime.rest import CallGone, OpenAIError, RealtimeCalls
from sip_controller.state.records import HANGING_UP, CallRow, Entry, Fence, Fenced, OutboxItem
from sip_controller.state.store import Store

log = structlog.get_logger("sip_controller.calls.hangups")

#: the entry kind holding the report a call left ``hanging_up`` is to be finished with
PENDING_REPORT = "pending_report"
#: the entry kind of each hangup the janitor tried that OpenAI did not confirm
HANGUP_RETRY = "hangup_retry"

#: the report's deliveries (``call.ended`` webhooks, the JSONL line), from the finished report document
OutboxFor = Callable[[Mapping[str, Any]], Sequence[OutboxItem]]


@dataclass(frozen=True)
class JanitorPass:
    """What one pass did: hangups confirmed (2xx), calls found gone (404), hangups still unconfirmed, and due calls
    left alone (supervised here, or owned by a live replica)."""

    confirmed: int = 0
    gone: int = 0
    unconfirmed: int = 0
    skipped: int = 0


async def leave_hanging_up(
    store: Store,
    fence: Fence,
    report: Mapping[str, Any],
    *,
    wake_at: float,
    entries: Sequence[Entry] = (),
    at: float | None = None,
) -> None:
    """For a process that stops supervising a call whose hangup is unconfirmed (a drain that has to exit): keep
    the call live in ``hanging_up`` with ``wake_at``, its last ``entries`` and ``report`` (the document it would
    have sent) in one write, for the janitor of any replica to finish."""
    now = time.time() if at is None else at
    pending = Entry(PENDING_REPORT, now, dict(report))
    await store.append(fence, [*entries, pending], state=HANGING_UP, wake_at=wake_at)


def retry_delay(failures: int, *, base_s: float = 0.25, max_s: float = 30.0) -> float:
    """The wait after the ``failures``-th unconfirmed hangup: ``base_s`` doubling, capped at ``max_s``."""
    return float(min(max_s, base_s * 2 ** min(max(failures, 1) - 1, 30)))


async def hangup_pass(
    store: Store,
    api: RealtimeCalls,
    process_id: str,
    *,
    supervised: Callable[[str], object] = lambda _call_id: None,
    outbox_for: OutboxFor | None = None,
    clock: Callable[[], float] = time.time,
    retry_max_s: float = 30.0,
    limit: int = 100,
    on_retry: Callable[[str], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    late_recording: LateRecording | None = None,
) -> JanitorPass:
    """One pass over the due ``hanging_up`` calls (see the module docstring). ``supervised(call_id)`` is truthy
    for a call this process still supervises (e.g. ``registry.supervisor``): its supervisor retries it.
    ``on_retry`` is told each hangup still unconfirmed, ``on_finished`` called once after a pass finished calls.
    ``late_recording`` (``registry.late_recording``) sends a Twilio recording that came while a finished call's
    report was being written; without it, that one is not sent (a recording already on the row always goes into
    the report)."""
    due = await store.hanging_up_calls(limit=limit)
    if not due:
        return JanitorPass()
    orphans = {row.call_id for row in await store.orphaned_calls(limit=max(limit, 1000))}
    confirmed = gone = unconfirmed = skipped = 0
    for row in due:
        try:
            taken = await _take(store, row, process_id, orphans, supervised)
            if taken is None:
                skipped += 1
                continue
            outcome = await _hang_up(
                store, api, taken, clock=clock, outbox_for=outbox_for, retry_max_s=retry_max_s,
                late_recording=late_recording,
            )  # fmt: skip
        except Fenced as exc:
            log.info("hangup.fenced", call_id=row.call_id, why=exc.reason)  # another replica has it
            skipped += 1
            continue
        if outcome == "confirmed":
            confirmed += 1
        elif outcome == "gone":
            gone += 1
        else:
            unconfirmed += 1
            if on_retry is not None:
                on_retry(row.call_id)
    if (confirmed or gone) and on_finished is not None:
        on_finished()  # reports are in the outbox: e.g. wake the notifier
    return JanitorPass(confirmed, gone, unconfirmed, skipped)


async def _take(
    store: Store, row: CallRow, process_id: str, orphans: set[str], supervised: Callable[[str], object]
) -> CallRow | None:
    """The row to act on under a fence of ours, or None when the call is not ours to hang up."""
    if row.owner == process_id:
        return None if supervised(row.call_id) else row
    if row.call_id not in orphans:
        return None  # its owner is alive: its supervisor retries
    return await store.take_over(row.call_id, process_id, expected_epoch=row.epoch)


async def _hang_up(
    store: Store,
    api: RealtimeCalls,
    row: CallRow,
    *,
    clock: Callable[[], float],
    outbox_for: OutboxFor | None,
    retry_max_s: float,
    late_recording: LateRecording | None,
) -> str:
    fence = row.fence
    await store.verify(fence)  # a REST action whose effect outlives us: only under a fence that holds
    try:
        await api.hangup(row.call_id)
    except CallGone:
        await _finish(store, row, clock=clock, outbox_for=outbox_for, how="gone", late_recording=late_recording)
        return "gone"
    except OpenAIError as exc:
        entries = await store.read_entries(row.call_id)
        failures = 1 + sum(1 for e in entries if e.kind == HANGUP_RETRY)
        delay = retry_delay(failures, max_s=retry_max_s)
        now = clock()
        note = Entry(HANGUP_RETRY, now, {"status": exc.status, "error": str(exc)[:300], "retry_in_s": delay})
        await store.append(fence, [note], state=HANGING_UP, wake_at=now + delay)
        log.warning("hangup.unconfirmed", call_id=row.call_id, status=exc.status, retry_in_s=delay, tries=failures)
        return "unconfirmed"
    await _finish(store, row, clock=clock, outbox_for=outbox_for, how="confirmed", late_recording=late_recording)
    return "confirmed"


async def _finish(
    store: Store,
    row: CallRow,
    *,
    clock: Callable[[], float],
    outbox_for: OutboxFor | None,
    how: str,
    late_recording: LateRecording | None,
) -> None:
    entries = await store.read_entries(row.call_id)
    pending = [e.data for e in entries if e.kind == PENDING_REPORT]
    tries = sum(1 for e in entries if e.kind == HANGUP_RETRY) + 1
    report: dict[str, Any] = dict(pending[-1]) if pending else {"call_id": row.call_id, "profile": row.profile}
    # a bridged call's Twilio side: the report's (left by its owner), else what the call row keeps for a takeover
    twilio = report.get("twilio") or row.inputs.get("twilio")
    try:
        recording = await row_recording(store, twilio)  # its callback came while the call was live: only there
    except Exception as exc:  # the store away: the check after the write (late_recording) may still find it
        log.warning("hangup.recording_unread", call_id=row.call_id, error=type(exc).__name__)
        recording = None
    if recording is not None:
        report["recording"] = recording
    previous = report.get("hangup_attempts")
    now = clock()
    report.update(
        state="ended",
        ended_reason=report.get("ended_reason") or "shutdown",
        hangup_confirmed=True,
        hangup_attempts=(previous if isinstance(previous, int) else 0) + tries,
    )
    errors = report.get("errors")
    report["errors"] = [*(errors if isinstance(errors, list) else []), f"hangup confirmed by another run ({how})"]
    outbox = list(outbox_for(report)) if outbox_for is not None else []
    mark = Entry("mark", now, {"event": f"hangup {how}: finished by {row.owner}"})
    await store.finish_call(
        row.fence, state="ended", ended_reason=str(report["ended_reason"]), report=report, outbox=outbox,
        entries=[mark], ended_at=now,
    )
    log.info("hangup.finished", call_id=row.call_id, how=how, attempts=report["hangup_attempts"])
    if late_recording is not None:  # a recording callback that came while the report was being written
        # the report's call: a parked call's is its first leg's (#16)
        await recording_since(store, str(report.get("call_id") or row.call_id), twilio, report, late_recording)


async def run_hangup_janitor(
    store: Store,
    api: RealtimeCalls,
    process_id: str,
    *,
    every_s: float = 2.0,
    supervised: Callable[[str], object] = lambda _call_id: None,
    outbox_for: OutboxFor | None = None,
    clock: Callable[[], float] = time.time,
    retry_max_s: float = 30.0,
    limit: int = 100,
    on_retry: Callable[[str], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    late_recording: LateRecording | None = None,
) -> None:
    """:func:`hangup_pass` every ``every_s`` seconds until cancelled. A failed pass (the store or OpenAI away for a
    moment) is logged and tried again next time: it never ends the loop."""
    while True:
        try:
            done = await hangup_pass(
                store, api, process_id, supervised=supervised, outbox_for=outbox_for, clock=clock,
                retry_max_s=retry_max_s, limit=limit, on_retry=on_retry, on_finished=on_finished,
                late_recording=late_recording,
            )
        except Exception as exc:  # the store's or its driver's: never the end of the loop
            log.warning("hangup.pass_failed", error=type(exc).__name__)
        else:
            if done.confirmed or done.gone or done.unconfirmed:
                log.info("hangup.pass", confirmed=done.confirmed, gone=done.gone, unconfirmed=done.unconfirmed)
        await asyncio.sleep(every_s)
