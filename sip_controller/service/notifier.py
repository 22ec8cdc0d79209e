"""Delivers call reports FROM THE OUTBOX (design principle 6): ``call.started`` / ``call.ended`` events to the
operator's endpoints (Standard Webhooks-signed at each attempt) and one line per call in a JSONL call log.

The rows are written by the registry in the transactions that start and finish calls
(:mod:`sip_controller.calls.outbox`); nothing here holds a report in memory. One loop per destination (each
endpoint, the call log) claims due rows with a lease (``claim_outbox``), sends them in the order they were written
(so a call's ``call.started`` goes before its ``call.ended``), and marks them delivered. A failure pauses that
destination with jittered exponential backoff (``wait_initial`` doubling up to ``wait_max``; a short Retry-After is
honoured), probing with one row until it answers again; the row keeps its place. A row is given up (kept, counted)
when the endpoint refused it (a 4xx other than 408/429) ``reports.max_attempts`` times, or when it has failed for
longer than ``reports.retry_for_s``: a sink that is down delays reports and loses none before then (the backlog is
on disk, in the store). Rows still pending at shutdown stay in the outbox: the next process (or another replica)
delivers them. A process that dies between a delivery and its ``mark_delivered`` sends it again after the lease:
the ``webhook-id`` is the same on every attempt (it comes from the row's key), so receivers drop the repeat.

With several replicas every one runs these loops over the shared outbox; a JSONL line goes to the file of
whichever replica claims it. Deliveries go over one httpx client
(:func:`~sip_controller.realtime.rest.new_http_client`, the process's one kind of HTTP client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from standardwebhooks import Webhook

from sip_controller.calls.outbox import JSONL, endpoint_destination, event_id, jsonl_line
from sip_controller.config import ConfigError, Reports
from sip_controller.realtime.rest import HTTP_ERRORS, new_http_client
from sip_controller.state.records import OutboxRow
from sip_controller.state.store import Store

log = structlog.get_logger("sip_controller.service.notifier")


@dataclass(frozen=True)
class DeliveryPolicy:
    """Backoff of a destination after a failure: ``wait_initial`` doubling per failure in a row up to ``wait_max``,
    plus up to ``wait_jitter`` seconds at random; ``poll_s``: how often an idle loop looks for due rows (a new
    report wakes it at once in this process; rows written by other replicas or due again are found by polling);
    ``batch``: rows claimed at a time; ``lease_s``: how long a claimed row is this process's before another may
    take it (longer than a batch can take)."""

    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0
    poll_s: float = 1.0
    batch: int = 20
    lease_s: float = 300.0


DEFAULT_DELIVERY_POLICY = DeliveryPolicy()


@dataclass
class NotifierStats:
    """What this process did, for ``/metrics`` and logs. ``failed``: failed delivery attempts; ``gave_up``: rows
    given up by this process; ``written``/``write_failed``: call-log lines written and failed writes (lines);
    ``dropped`` stays 0 (nothing is dropped any more: the outbox keeps what is not delivered), kept for the
    metric's outcome label."""

    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retried: int = 0
    gave_up: int = 0
    written: int = 0
    write_failed: int = 0


@dataclass(frozen=True)
class _Endpoint:
    index: int
    url: str
    #: scheme, host and path only (a query string may carry a token): what the logs show
    safe_url: str
    signer: Webhook | None
    #: the outbox destination of its rows
    destination: str


class _Refused(Exception):
    """The endpoint answered with a status that is not 2xx."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class _AttemptTimeout(Exception):
    pass


#: how one attempt fails
_FAILED: tuple[type[Exception], ...] = (*HTTP_ERRORS, _Refused, _AttemptTimeout)


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def resolve_endpoints(reports: Reports, environ: Mapping[str, str] | None = None) -> list[_Endpoint]:
    """Read each endpoint's signing secret from the environment; every problem names its config field."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    endpoints: list[_Endpoint] = []
    for i, ep in enumerate(reports.endpoints):
        signer: Webhook | None = None
        field = f"reports.endpoints.{i}.secret_env"
        if ep.secret_env is not None:
            secret = env.get(ep.secret_env, "").strip()
            if not secret:
                problems.append(
                    f"{field}: the environment variable {ep.secret_env} is not set; export the endpoint's "
                    "whsec_… signing secret there"
                )
                continue
            if not secret.startswith("whsec_"):
                problems.append(
                    f"{field}: the environment variable {ep.secret_env} does not hold a whsec_… secret; "
                    "Standard Webhooks secrets are 'whsec_' + base64"
                )
                continue
            try:
                signer = Webhook(secret)
            except Exception:  # bad base64 or empty after the prefix (the message could echo the secret)
                problems.append(f"{field}: the secret in {ep.secret_env} is not 'whsec_' + base64 of random bytes")
                continue
        endpoints.append(_Endpoint(i, ep.url, _safe_url(ep.url), signer, endpoint_destination(ep.url)))
    if problems:
        raise ConfigError(problems)
    return endpoints




def _append_lines(path: Path, lines: list[str]) -> None:
    """One ``write`` per batch on an ``O_APPEND`` file: lines are never interleaved or torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(lines))


def _retryable(exc: Exception) -> tuple[bool, float | None]:
    """Whether a failed attempt is worth repeating soon, and the endpoint's Retry-After if it gave one."""
    if isinstance(exc, _Refused):
        return (exc.status in (408, 429) or exc.status >= 500), exc.retry_after
    return True, None  # no answer: a transport error, a timeout


class _Paused:
    """A destination's failures in a row and when it may be tried again (``time.monotonic``)."""

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0


class ReportNotifier:
    """Owned by the app lifespan: ``start()`` after the store is open, ``kick()`` when rows were written (the
    registry's hooks), ``aclose(timeout)`` after the registry has shut down (what it leaves pending stays in the
    outbox for the next process)."""

    def __init__(
        self,
        reports: Reports,
        store: Store,
        *,
        worker: str,
        client: httpx.AsyncClient | None = None,
        environ: Mapping[str, str] | None = None,
        policy: DeliveryPolicy = DEFAULT_DELIVERY_POLICY,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``worker`` names this process in the outbox leases (its lease id). ``client`` (if given) stays owned by
        the caller; otherwise one is made on start (only when there are endpoints) and closed by ``aclose``."""
        self._reports = reports
        self._store = store
        self._worker = worker
        self._client = client
        self._own_client = False
        self._environ = environ
        self._policy = policy
        self._wall_clock = wall_clock
        self._endpoints: list[_Endpoint] = []
        self._path = Path(reports.jsonl_path) if reports.jsonl_path else None
        self._wake: dict[str, asyncio.Event] = {}
        self._paused: dict[str, _Paused] = {}
        #: rows claimed and not yet settled, by id: released at shutdown so the next process need not wait
        self._held: dict[int, OutboxRow] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._started = False
        self._closing = False
        self._closed = False
        self.stats = NotifierStats()

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve the endpoints' secrets (raising :class:`ConfigError` naming the field) and start one loop per
        destination."""
        if self._started:
            return
        self._endpoints = resolve_endpoints(self._reports, self._environ)
        self._started = True
        for ep in self._endpoints:
            if ep.signer is None:
                log.warning("notifier.endpoint_unsigned", endpoint=ep.safe_url)
        if self._endpoints and self._client is None:
            self._client = new_http_client(timeout=httpx.Timeout(self._reports.timeout_s))
            self._own_client = True
        seen: set[str] = set()
        for ep in self._endpoints:
            if ep.destination not in seen:
                seen.add(ep.destination)
                self._spawn(ep.destination, self._send_endpoint(ep))
        if self._path is not None:
            self._spawn(JSONL, self._send_lines(self._path))
        log.info(
            "notifier.started",
            endpoints=len(self._endpoints),
            events=list(self._reports.events),
            jsonl=self._path is not None,
        )

    def _spawn(self, destination: str, send: Callable[[list[OutboxRow]], Any]) -> None:
        self._wake[destination] = asyncio.Event()
        self._paused[destination] = _Paused()
        self._loops.append(asyncio.create_task(self._loop(destination, send), name=f"notifier:{destination}"))

    def kick(self) -> None:
        """New rows were written: look now rather than at the next poll."""
        for event in self._wake.values():
            event.set()

    async def aclose(self, timeout: float) -> None:
        """Take no more rows once each destination has nothing due (or is paused), within ``timeout`` seconds;
        give back the rows in hand, close the client if it is ours. Nothing is lost: what is left is pending in
        the outbox."""
        if self._closed:
            return
        self._closing = True
        self.kick()
        pending: set[asyncio.Task[None]] = set()
        if self._loops:
            _done, pending = await asyncio.wait(self._loops, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._closed = True
        for row in list(self._held.values()):
            await self._give_back(row, "shutdown")
        if pending:
            log.warning("notifier.flush_incomplete", timeout_s=timeout, loops=len(pending))
        if self._own_client and self._client is not None:
            await self._client.aclose()
        self._client = None
        log.info("notifier.stopped", **vars(self.stats))

    # ---- the loop of one destination ---------------------------------------------------------------

    async def _loop(self, destination: str, send: Callable[[list[OutboxRow]], Any]) -> None:
        wake = self._wake[destination]
        paused = self._paused[destination]
        while True:
            wait = paused.until - time.monotonic()
            if wait > 0:
                if self._closing:
                    return
                # a kick (new rows) does not end a pause, only closing does: cleared first, or a set event would
                # return at once and this loop would spin without ever yielding, freezing the process
                wake.clear()
                await self._sleep(wake, wait)
                continue
            wake.clear()
            limit = 1 if paused.failures else self._policy.batch  # while failing, probe with one row
            try:
                rows = await self._store.claim_outbox(
                    self._worker, limit=limit, lease_s=self._policy.lease_s, destination=destination
                )
            except Exception as exc:  # the store away for a moment: never the end of the loop
                log.warning("notifier.claim_failed", destination=destination, error=type(exc).__name__)
                if self._closing:
                    return
                await self._sleep(wake, self._policy.poll_s)
                continue
            if not rows:
                if self._closing:
                    return
                await self._sleep(wake, self._policy.poll_s)
                continue
            for row in rows:
                self._held[row.id] = row
            try:
                ok: bool = await send(rows)
            except Exception as exc:  # the store failing a mark, or a bug: never the end of the loop
                log.warning("notifier.send_failed", destination=destination, error=type(exc).__name__)
                for row in rows:
                    if row.id in self._held:
                        await self._give_back(row, f"notifier: {type(exc).__name__}")
                self._pause(destination, None)
                ok = False
            if ok:
                paused.failures = 0
            else:
                paused.failures += 1

    async def _sleep(self, wake: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await wake.wait()

    def _pause(self, destination: str, retry_after: float | None) -> float:
        paused = self._paused[destination]
        p = self._policy
        backoff = min(p.wait_max, p.wait_initial * 2.0 ** min(paused.failures, 30)) + random.uniform(0, p.wait_jitter)
        if retry_after is not None:
            backoff = min(max(retry_after, p.wait_initial), p.wait_max)
        paused.until = time.monotonic() + backoff
        return backoff

    async def _give_back(self, row: OutboxRow, error: str, *, give_up: bool = False) -> None:
        """Release ``row``: due again where it was (it keeps its place in the order), or given up."""
        self._held.pop(row.id, None)
        try:
            await self._store.mark_failed(
                self._worker, row.id, next_attempt_at=None if give_up else row.due_at, error=error
            )
        except Exception as exc:  # the lease runs out by itself
            log.warning("notifier.release_failed", row=row.id, error=type(exc).__name__)

    def _should_give_up(self, row: OutboxRow, retryable: bool) -> bool:
        if not retryable:
            return row.attempts >= self._reports.max_attempts
        return self._wall_clock() - row.created_at >= self._reports.retry_for_s

    # ---- endpoints ----------------------------------------------------------------------------------

    def _send_endpoint(self, endpoint: _Endpoint) -> Callable[[list[OutboxRow]], Any]:
        async def send(rows: list[OutboxRow]) -> bool:
            for i, row in enumerate(rows):
                try:
                    await self._post(endpoint, row)
                except _FAILED as exc:
                    await self._failed(endpoint, row, exc)
                    for rest in rows[i + 1 :]:
                        await self._give_back(rest, "deferred: the endpoint failed")
                    return False
                await self._store.mark_delivered([row.id])
                self._held.pop(row.id, None)
                self.stats.delivered += 1
                self.stats.retried += row.attempts > 1
                log.info(
                    "notifier.delivered",
                    call_id=row.call_id,
                    event_type=row.event,
                    event_id=event_id(row.key),
                    endpoint=endpoint.safe_url,
                    attempts=row.attempts,
                )
            return True

        return send

    async def _failed(self, endpoint: _Endpoint, row: OutboxRow, exc: Exception) -> None:
        self.stats.failed += 1
        retryable, retry_after = _retryable(exc)
        error = str(exc) if isinstance(exc, _Refused) else type(exc).__name__
        give_up = self._should_give_up(row, retryable)
        await self._give_back(row, error, give_up=give_up)
        backoff = self._pause(endpoint.destination, retry_after)
        if give_up:
            self.stats.gave_up += 1
            log.error(
                "notifier.delivery_given_up",
                call_id=row.call_id, event_type=row.event, endpoint=endpoint.safe_url, attempts=row.attempts,
                error=error,
            )  # fmt: skip
        else:
            log.warning(
                "notifier.delivery_failed",
                call_id=row.call_id, event_type=row.event, endpoint=endpoint.safe_url, attempts=row.attempts,
                error=error, retry_in_s=round(backoff, 2),
            )  # fmt: skip

    async def _post(self, endpoint: _Endpoint, row: OutboxRow) -> None:
        assert self._client is not None
        body = json.dumps(row.payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        now = datetime.fromtimestamp(self._wall_clock(), UTC)
        webhook_id = event_id(row.key)
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
        }
        if endpoint.signer is not None:
            headers["webhook-signature"] = endpoint.signer.sign(webhook_id, now, body)  # signed afresh each attempt
        timeout = self._reports.timeout_s
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.post(
                    endpoint.url, content=body.encode("utf-8"), headers=headers, timeout=timeout
                )
        except TimeoutError:
            raise _AttemptTimeout(f"no answer within {timeout}s") from None
        if not 200 <= response.status_code < 300:
            raise _Refused(response.status_code, _retry_after(response.headers.get("retry-after")))

    # ---- the call log -------------------------------------------------------------------------------

    def _send_lines(self, path: Path) -> Callable[[list[OutboxRow]], Any]:
        async def send(rows: list[OutboxRow]) -> bool:
            lines = [jsonl_line(row.payload) for row in rows]
            try:
                await asyncio.to_thread(_append_lines, path, lines)
            except OSError as exc:
                self.stats.write_failed += len(rows)
                backoff = self._pause(JSONL, None)
                given_up = 0
                for row in rows:
                    give_up = self._should_give_up(row, True)
                    given_up += give_up
                    await self._give_back(row, f"{type(exc).__name__}: {exc.strerror or exc}", give_up=give_up)
                self.stats.gave_up += given_up
                log.error(
                    "notifier.jsonl_write_failed",
                    lines=len(rows), error=type(exc).__name__, detail=str(exc), retry_in_s=round(backoff, 2),
                    given_up=given_up,
                )  # fmt: skip
                return False
            await self._store.mark_delivered([row.id for row in rows])
            for row in rows:
                self._held.pop(row.id, None)
            self.stats.written += len(rows)
            return True

        return send
