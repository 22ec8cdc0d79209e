"""Runs the post-call analyses (#17) FROM THE STORE, in a bounded pool, off the ring path.

A finished call whose profile has an ``analysis`` block leaves an ``analysis.requested`` outbox row in the same
transaction as its report (:func:`sip_controller.calls.analysis.request_item`). The worker's loop:

1. takes those rows (``claim_outbox`` on the ``analysis`` destination) and turns each into a pending analysis
   (``create_analysis``: once per call, however often the row is seen), then marks the row delivered;
2. claims due analyses (``claim_analyses``, leased: whichever replica claims one runs it; a process that dies
   mid-analysis leaves the lease to pass and the next claim, here or on another replica, runs it again), at most
   ``analysis.max_concurrent`` running at once in this process;
3. runs each: the call's report from the store, the request to the Responses API through the calls API's HTTP
   client and retry policy, the answer checked against the schema, its cost; then ``finish_analysis`` stores the
   result with its ``call.analyzed`` outbox rows (one transaction) and the notifier delivers them, after the
   call's ``call.ended``, which never waited for any of this.

A failed try (no answer, 429/5xx after the quick retries, an answer that is not valid against the schema) is
recorded and due again after a backoff (``retry_initial_s`` doubling up to ``retry_max_s``); after
``analysis.max_attempts`` tries, or at once for a refusal that asking again cannot change (a 4xx), it is failed
for good: the stored analysis says why and ``call.analyzed`` carries that too. Transcripts are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import structlog

from sip_controller.calls import analysis as calls_analysis
from sip_controller.config import Settings
from sip_controller.realtime.responses import ResponsesAPI, UnusableAnswer
from sip_controller.realtime.rest import OpenAIError, RateLimited, ServerError, TransportError
from sip_controller.realtime.retries import DEFAULT_POLICY, RetryPolicy, with_retries
from sip_controller.service.notifier import ReportNotifier
from sip_controller.state.analyses import AnalysisRow
from sip_controller.state.store import Store

log = structlog.get_logger("sip_controller.service.analysis")

#: quick retries of one request within one attempt (the calls API's policy), before the attempt counts as failed
REQUEST_ATTEMPTS = 3


def _final(exc: Exception) -> bool:
    """True when trying again later cannot help: OpenAI refused the request itself (400/401/403/404/422)."""
    if isinstance(exc, OpenAIError) and not isinstance(exc, UnusableAnswer):
        return not isinstance(exc, RateLimited | ServerError | TransportError)
    return False


def _why(exc: Exception) -> str:
    if isinstance(exc, UnusableAnswer):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, OpenAIError):
        return f"HTTP {exc.status} {exc.code or type(exc).__name__}: {exc.message}" if exc.status else exc.message
    if isinstance(exc, calls_analysis.AnalysisFailed):
        return f"{exc.code}: {exc}"
    return type(exc).__name__


class AnalysisWorker:
    """Owned by the app lifespan: ``start()`` after the store is open, ``kick()`` when a call finished (the
    registry's hook), ``aclose(timeout)`` at shutdown (analyses in progress are given back to the store for the
    next process)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        api: ResponsesAPI,
        *,
        worker: str,
        policy: RetryPolicy = DEFAULT_POLICY,
        wall_clock: Callable[[], float] = time.time,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        """``worker`` names this process in the leases; ``on_stored`` is told when an outcome and its deliveries
        were written (the notifier's ``kick``)."""
        self._settings = settings
        self._store = store
        self._api = api
        self._worker = worker
        self._policy = policy
        self._wall_clock = wall_clock
        self._on_stored = on_stored
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        #: what this process did (for tests and logs)
        self.completed = 0
        self.failed = 0
        self.retried = 0

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="analysis:loop")
            log.info("analysis.started", max_concurrent=self._settings.analysis.max_concurrent)

    def kick(self) -> None:
        self._wake.set()

    async def aclose(self, timeout: float) -> None:
        """Stop taking analyses; let those in progress finish within ``timeout`` seconds and give the rest back to
        the store (due at once, the attempt not counted): the next process, or another replica, runs them. Returns
        within ``timeout`` (a store too slow to take an analysis back leaves its lease to pass instead: it is
        claimable again after ``analysis.lease_s``, never lost)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        running = dict(self._running)
        given_back = 0
        if running:
            # a quarter of the time (at most a second) is kept for giving the unfinished ones back
            reserve = min(1.0, timeout / 4)
            _done, pending = await asyncio.wait(running.values(), timeout=max(0.0, deadline - reserve - loop.time()))
            for task in pending:
                task.cancel()
            unfinished = [call_id for call_id, task in running.items() if task in pending]
            for call_id in unfinished:
                with contextlib.suppress(asyncio.CancelledError):
                    await running[call_id]
            try:
                async with asyncio.timeout(max(0.05, deadline - loop.time())):
                    for call_id in unfinished:
                        given_back += await self._store.release_analysis(self._worker, call_id)
            except Exception as exc:  # the store slow or away: the leases pass instead
                log.warning("analysis.release_failed", error=type(exc).__name__, left=len(unfinished) - given_back)
        log.info(
            "analysis.stopped", completed=self.completed, failed=self.failed, retried=self.retried,
            given_back=given_back,
        )  # fmt: skip

    # ---- the loop -------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        cfg = self._settings.analysis
        while not self._closing:
            self._wake.clear()
            try:
                await self._take_requests()
                free = cfg.max_concurrent - len(self._running)
                rows = await self._store.claim_analyses(self._worker, limit=free, lease_s=cfg.lease_s) if free else []
            except Exception as exc:  # the store away for a moment: never the end of the loop
                log.warning("analysis.claim_failed", error=type(exc).__name__)
                rows = []
            for row in rows:
                task = asyncio.create_task(self._run(row), name=f"analysis:{row.call_id}")
                self._running[row.call_id] = task
                task.add_done_callback(functools.partial(self._done, row.call_id))
            if rows and len(rows) == free:
                continue  # more may be due: look again as soon as a slot frees (_done wakes the loop)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.poll_s):
                    await self._wake.wait()

    def _done(self, call_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(call_id, None)
        self._wake.set()

    async def _take_requests(self) -> None:
        """The ``analysis.requested`` rows finished calls left: each becomes a pending analysis, once."""
        rows = await self._store.claim_outbox(
            self._worker, limit=50, lease_s=60.0, destination=calls_analysis.ANALYSIS_DESTINATION
        )
        for row in rows:
            call_id = str(row.payload.get("call_id") or row.call_id)
            profile = str(row.payload.get("profile") or "")
            await self._store.create_analysis(call_id, profile)
        if rows:
            await self._store.mark_delivered([row.id for row in rows])

    # ---- one analysis ---------------------------------------------------------------------------------------

    async def _run(self, row: AnalysisRow) -> None:
        try:
            await self._analyse(row)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not end the pool: the lease passes and the analysis is tried again
            log.exception("analysis.crashed", call_id=row.call_id)

    async def _analyse(self, row: AnalysisRow) -> None:
        settings = self._settings
        spec = calls_analysis.wanted(settings, row.profile)
        model = calls_analysis.model_for(settings, spec) if spec is not None else settings.analysis.model
        if spec is None:
            await self._give_up(row, model, f"profile {row.profile!r} has no analysis block any more", None)
            return
        report = await self._store.get_report(row.call_id)
        if report is None:
            await self._give_up(row, model, "the call has no report in the store", None)
            return
        body = calls_analysis.request_body(settings, spec, report)
        timeout = settings.analysis.timeout_s
        started = time.monotonic()
        try:
            answer = await with_retries(
                lambda: self._api.create(body, timeout=timeout),
                self._policy,
                attempts=REQUEST_ATTEMPTS,
                timeout_s=timeout * REQUEST_ATTEMPTS,
            )
            value = calls_analysis.parse_answer(answer, spec)
        except (OpenAIError, calls_analysis.AnalysisFailed) as exc:
            await self._failed(row, model, exc, report)
            return
        cost = calls_analysis.answer_cost(settings.pricing, model, answer)
        now = self._wall_clock()
        document = calls_analysis.completed_document(
            value, answer, model=model, cost_usd=cost, attempts=row.attempts, at=now
        )
        outbox = calls_analysis.analyzed_items(
            calls_analysis.analyzed_document(report, document), settings.reports, at=now
        )
        if await self._store.finish_analysis(self._worker, row.call_id, result=document, cost_usd=cost, outbox=outbox):
            self.completed += 1
            log.info(
                "analysis.completed", call_id=row.call_id, profile=row.profile, model=document["model"],
                attempts=row.attempts, cost_usd=cost, seconds=round(time.monotonic() - started, 3),
                success=document["success"],
            )  # fmt: skip
            self._stored()
        else:
            log.warning("analysis.lease_lost", call_id=row.call_id)

    async def _failed(self, row: AnalysisRow, model: str, exc: Exception, report: dict[str, Any]) -> None:
        why = _why(exc)
        cfg = self._settings.analysis
        if _final(exc) or row.attempts >= cfg.max_attempts:
            await self._give_up(row, model, why, report)
            return
        wait = min(cfg.retry_max_s, cfg.retry_initial_s * 2 ** (row.attempts - 1))
        if await self._store.fail_analysis(
            self._worker, row.call_id, error=why, next_attempt_at=self._wall_clock() + wait
        ):
            self.retried += 1
            log.warning(
                "analysis.attempt_failed", call_id=row.call_id, attempts=row.attempts, error=why, retry_in_s=wait
            )

    async def _give_up(self, row: AnalysisRow, model: str, why: str, report: dict[str, Any] | None) -> None:
        now = self._wall_clock()
        document = calls_analysis.failed_document(why, model=model, attempts=row.attempts, at=now)
        base = report or {"call_id": row.call_id, "profile": row.profile}
        outbox = calls_analysis.analyzed_items(
            calls_analysis.analyzed_document(base, document), self._settings.reports, at=now
        )
        if await self._store.fail_analysis(
            self._worker, row.call_id, error=why, next_attempt_at=None, result=document, outbox=outbox
        ):
            self.failed += 1
            log.error("analysis.failed", call_id=row.call_id, attempts=row.attempts, error=why)
            self._stored()

    def _stored(self) -> None:
        if self._on_stored is not None:
            self._on_stored()


def shutdown_wait_s(settings: Settings) -> float:
    """How long the analyses in progress may still run when the app stops: half of ``reports.flush_timeout_s`` (the
    other half, at least, delivers what is queued, ``call.analyzed`` included), never more than one request's
    ``analysis.timeout_s``. Both come out of ``reports.flush_timeout_s``: the exit after a drain is not delayed."""
    return min(settings.analysis.timeout_s, settings.reports.flush_timeout_s / 2)


async def close_with_deliveries(analyses: AnalysisWorker, notifier: ReportNotifier, settings: Settings) -> None:
    """The app's shutdown of the analyses, then of the deliveries, within ``reports.flush_timeout_s`` in all."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await analyses.aclose(shutdown_wait_s(settings))
    finally:
        await notifier.aclose(max(0.0, settings.reports.flush_timeout_s - (loop.time() - started)))


def analysis_view(row: AnalysisRow) -> dict[str, Any]:
    """A call's analysis as ``GET /v1/calls/{id}`` shows it: the stored document, or where a pending one is."""
    if row.result is not None and row.status != "pending":
        return dict(row.result)
    return {"status": "pending", "attempts": row.attempts, "last_error": row.last_error}


async def with_analysis(store: Store | None, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (a call's report) with its ``analysis`` and ``cost_breakdown`` when the call has one (#17);
    unchanged otherwise, or when the store cannot say."""
    call_id = document.get("call_id")
    if store is None or not isinstance(call_id, str):
        return document
    try:
        row = await store.get_analysis(call_id)
    except Exception as exc:  # the store away: the report still answers, without its analysis
        log.warning("analysis.read_failed", call_id=call_id, error=type(exc).__name__)
        return document
    if row is None:
        return document
    view = analysis_view(row)
    raw = document.get("cost_usd")
    call_cost = float(raw) if isinstance(raw, int | float) else None
    return {**document, "analysis": view, "cost_breakdown": calls_analysis.cost_breakdown(call_cost, row.cost_usd)}
