"""The batch dialler (#16): an owned task of the app lifespan that works the store's outbound batches.

Each pass it (1) settles in-flight rows whose Twilio call is over (its status callbacks set the row's outcome:
``completed``, ``voicemail``, ``no_answer``, ``busy``, ``failed``, ``canceled``; ``no_answer`` and ``busy`` are
retried after ``retries.delay_s`` while retries are left), then (2) claims due rows with a lease (the store paces
them per batch across every replica: ``calls_per_second`` and ``max_in_flight``) and places each through
:func:`~sip_controller.service.twilio_routes.place_outbound`, the code path of ``POST /v1/outbound``. A row outside
its calling hours (in the callee's time zone) goes back to wait until the window opens; a number on the do-not-call
list (checked again now: the list may have changed since the batch was made) is ``do_not_call`` and never called.

Nothing is placed twice: the attempt's Idempotency-Key (``batch:<id>:<row>:<attempt>``) is on its Twilio call row,
so a row claimed again after a process died mid-placement finds that call instead of placing another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from sip_controller.calls.report import mask_number
from sip_controller.config import Settings, TwilioCredentials
from sip_controller.service.batches import BatchOptions, on_do_not_call, row_zone, stored_options, window_opens_at
from sip_controller.service.twilio_routes import OutboundRefused, outbound_request, place_outbound
from sip_controller.state.batches import BatchCallRow, InFlight
from sip_controller.state.records import StoreError
from sip_controller.state.store import Store
from sip_controller.telephony.calls_api import TwilioCalls

log = structlog.get_logger("sip_controller.service.dialler")

#: Twilio's final statuses as a row's outcome
OUTCOMES = {"busy": "busy", "no-answer": "no_answer", "canceled": "canceled", "failed": "failed"}


class BatchClock(Protocol):
    """The clock of outbound batches: calling hours, retry times, pacing and the dialler's pauses. Production runs
    on :class:`SystemClock`; ``sipctl simulate`` injects a simulated one (``simulator/batch_clock.py``) so that hours
    of calling-window time pass in seconds."""

    def time(self) -> float:
        """Epoch seconds now."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` of this clock's time have passed."""
        ...


class SystemClock:
    """The wall clock (``wall_clock``, default :func:`time.time`) and :func:`asyncio.sleep`."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock

    def time(self) -> float:
        return self._wall_clock()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def outcome_of(call: InFlight) -> tuple[str, str | None]:
    """A finished row's outcome from its Twilio call, and what went wrong (if anything)."""
    if call.twilio_status is None:
        return "failed", "the Twilio call's record is gone"
    if call.twilio_status == "requested":
        return "failed", "Twilio never confirmed the call was placed (the placing process may have died)"
    if call.twilio_status == "completed":
        answered = call.answered_by or ""
        return ("voicemail" if answered.startswith("machine") or answered == "fax" else "completed"), None
    outcome = OUTCOMES.get(call.twilio_status, "failed")
    return outcome, None if call.error_code is None else f"Twilio error {call.error_code}"


class Dialler:
    """Owned by the app lifespan when Twilio is configured: ``start()``, ``kick()`` (a batch was made or resumed,
    a call ended), ``aclose()``. ``clock`` is the clock of calling hours, retry times and the loop's pauses (default:
    ``wall_clock`` and :func:`asyncio.sleep`); the store's batch clock (``store.batch_clock``, the same one) decides
    what is due."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        twilio: TwilioCredentials,
        calls_api: TwilioCalls,
        registry: Any,
        *,
        worker: str,
        wall_clock: Callable[[], float] = time.time,
        clock: BatchClock | None = None,
        lease_s: float = 60.0,
        idle_s: float = 1.0,
        busy_s: float = 0.05,
        stale_s: float = 3600.0,
        claim_limit: int = 50,
    ) -> None:
        self._settings = settings
        self._store = store
        self._twilio = twilio
        self._api = calls_api
        self._registry = registry
        self._worker = worker
        self._clock = (clock or SystemClock(wall_clock)).time
        self._sleep = (clock or SystemClock(wall_clock)).sleep
        self._lease_s = lease_s
        self._idle_s = idle_s
        self._busy_s = busy_s
        self._stale_s = stale_s
        self._claim_limit = claim_limit
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._busy_until = 0.0
        #: what this process did (tests and logs)
        self.placed = 0
        self.settled = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batches:dialler")

    def kick(self) -> None:
        self._wake.set()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop after the pass in progress (its placements finish: each is one Calls API request), or cancel it
        after ``timeout``; rows it held are claimed again once their lease passes, their calls found, not placed
        again."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                if await self.run_once():
                    self._busy_until = loop.time() + 2.0
            except Exception as exc:  # the store's or Twilio's: never the end of the loop
                log.warning("batch.pass_failed", error=type(exc).__name__, detail=str(exc)[:200])
            if self._closing:
                return
            pause = self._busy_s if loop.time() < self._busy_until else self._idle_s
            await self._pause(pause)
            self._wake.clear()

    async def _pause(self, seconds: float) -> None:
        """Until ``kick()`` or ``seconds`` of the batch clock, whichever comes first."""
        if self._wake.is_set():
            return
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._sleep(seconds))]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def run_once(self) -> bool:
        """One pass: settle what ended, place what is due. True when it did something. (The simulator stops the
        loop and calls this itself, in lockstep with its clock: ``simulator/batch_run.py``.)"""
        settled = await self._settle()
        if self._registry.draining:
            return settled > 0
        rows = await self._store.claim_batch_rows(self._worker, limit=self._claim_limit, lease_s=self._lease_s)
        if rows:
            options: dict[str, BatchOptions | None] = {}
            for batch_id in {r.batch_id for r in rows}:
                record = await self._store.get_batch(batch_id)
                options[batch_id] = None if record is None else stored_options(record.profile, record.options)
            await asyncio.gather(*(self._place(row, options[row.batch_id]) for row in rows))
        return bool(settled or rows)

    async def _settle(self) -> int:
        done = 0
        for call in await self._store.in_flight_batch_rows(stale_s=self._stale_s):
            row = call.row
            outcome, error = outcome_of(call)
            retry_at = None
            record = await self._store.get_batch(row.batch_id)
            if record is not None:
                options = stored_options(record.profile, record.options)
                if options.retries.allowed(outcome, row.attempt):
                    retry_at = self._opening(self._clock() + options.retries.delay_s, options, row)
            assert row.twilio_id is not None
            if await self._store.settle_batch_row(
                row.batch_id, row.row, outcome=outcome, retry_at=retry_at, error=error, twilio_id=row.twilio_id
            ):
                done += 1
                self.settled += 1
                log.info("batch.row_settled", batch_id=row.batch_id, row=row.row, outcome=outcome,
                         retry=retry_at is not None, attempt=row.attempt)  # fmt: skip
        return done

    def _opening(self, at: float, options: BatchOptions, row: BatchCallRow) -> float:
        if options.calling_hours is None:
            return at
        tz = row_zone(options.calling_hours, row.timezone)
        return at if tz is None else window_opens_at(at, options.calling_hours, tz)

    async def _place(self, row: BatchCallRow, options: BatchOptions | None) -> None:
        batch_id, number = row.batch_id, row.row
        try:
            if options is None:
                await self._store.settle_batch_row(batch_id, number, outcome="failed", error="the batch is gone",
                                                   worker=self._worker)  # fmt: skip
                return
            now = self._clock()
            opens = self._opening(now, options, row)
            if opens > now:
                await self._store.defer_batch_row(self._worker, batch_id, number, due_at=opens)
                log.info("batch.row_waits", batch_id=batch_id, row=number, opens_in_s=round(opens - now))
                return
            if on_do_not_call(self._settings, row.to_number):
                await self._store.settle_batch_row(
                    batch_id, number, outcome="do_not_call", worker=self._worker,
                    error="the number is on the do-not-call list (twilio.do_not_call)",
                )  # fmt: skip
                log.info("batch.do_not_call", batch_id=batch_id, row=number, to=mask_number(row.to_number))
                return
            body: dict[str, Any] = {"to": row.to_number, "profile": options.profile, "variables": row.variables}
            if options.from_number is not None:
                body["from"] = options.from_number
            try:
                to, caller_id, profile, variables = outbound_request(self._settings, body)
            except OutboundRefused as exc:  # the configuration changed since the batch was made
                await self._store.settle_batch_row(batch_id, number, outcome="failed", error=str(exc),
                                                   worker=self._worker)  # fmt: skip
                return
            digest = hashlib.sha256(json.dumps([to, caller_id, profile, variables], sort_keys=True).encode())
            placement = await place_outbound(
                self._twilio, self._settings, self._api, self._store, self._registry, to=to, caller_id=caller_id,
                profile_name=profile, variables=variables, key=row.idempotency_key, request_hash=digest.hexdigest(),
            )  # fmt: skip
            # the call's outcome (Twilio's refusal included: its row is failed) settles the row when it is over
            await self._store.placed_batch_row(self._worker, batch_id, number, placement.row.id)
            if placement.created:
                self.placed += 1
            log.info("batch.row_placed", batch_id=batch_id, row=number, twilio_id=placement.row.id,
                     attempt=row.attempt, found=not placement.created, to=mask_number(row.to_number))  # fmt: skip
        except StoreError as exc:  # the lease passes and the row is claimed again; its call, if any, found
            log.warning("batch.store_failed", batch_id=batch_id, row=number, error=str(exc)[:200])
