"""Delivers end-of-call reports: ``call.started`` / ``call.ended`` events to the operator's endpoints
(Standard Webhooks-signed, retried with bounded jittered backoff) and one line per call in a JSONL call log.

Nothing here may hold up a call: the registry's hooks only build the document and queue it. Deliveries and
log lines wait in bounded queues (when full, the oldest is dropped with a warning and counted), a few workers
send them over one ``httpx.AsyncClient``, and one writer appends the log lines off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import stamina
import structlog
from standardwebhooks import Webhook

from sip_controller.calls.report import CallRecord, report_document, started_document
from sip_controller.config import ConfigError, Reports

log = structlog.get_logger("sip_controller.service.notifier")

CALL_STARTED = "call.started"
CALL_ENDED = "call.ended"


@dataclass(frozen=True)
class DeliveryPolicy:
    """Backoff between attempts (stamina: jittered exponential) and the total time one delivery may take."""

    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0
    #: no new attempt is started after this many seconds (receivers check signatures within 5 minutes;
    #: every attempt is signed afresh anyway)
    total_s: float = 240.0


DEFAULT_DELIVERY_POLICY = DeliveryPolicy()


@dataclass
class NotifierStats:
    """Outcomes, for metrics later. ``dropped``: deliveries lost to a full queue or to the shutdown timeout."""

    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retried: int = 0
    written: int = 0
    write_failed: int = 0
    write_dropped: int = 0


@dataclass(frozen=True)
class _Endpoint:
    index: int
    url: str
    #: scheme, host and path only (a query string may carry a token): what the logs show
    safe_url: str
    signer: Webhook | None


@dataclass(frozen=True)
class _Event:
    id: str
    type: str
    call_id: str
    body: str


@dataclass(frozen=True)
class _Delivery:
    endpoint: int
    event: _Event


class _Refused(Exception):
    """The endpoint answered with a status that is not 2xx."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class _AttemptTimeout(Exception):
    pass


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
        endpoints.append(_Endpoint(i, ep.url, _safe_url(ep.url), signer))
    if problems:
        raise ConfigError(problems)
    return endpoints


def _append_lines(path: Path, lines: list[str]) -> None:
    """One ``write`` per batch on an ``O_APPEND`` file: lines are never interleaved or torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(lines))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class ReportNotifier:
    """Owned by the app lifespan: ``start()``, hook ``call_started`` / ``call_ended`` into the registry,
    ``aclose(timeout)`` after the registry has shut down (so the calls it ended are still reported)."""

    def __init__(
        self,
        reports: Reports,
        *,
        client: httpx.AsyncClient | None = None,
        environ: Mapping[str, str] | None = None,
        policy: DeliveryPolicy = DEFAULT_DELIVERY_POLICY,
        concurrency: int = 4,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``client`` (if given) stays owned by the caller; otherwise one is made on start (only when there
        are endpoints) and closed by ``aclose``."""
        self._reports = reports
        self._client = client
        self._own_client = False
        self._environ = environ
        self._policy = policy
        self._concurrency = max(1, concurrency)
        self._wall_clock = wall_clock
        self._endpoints: list[_Endpoint] = []
        self._path = Path(reports.jsonl_path) if reports.jsonl_path else None
        self._deliveries: deque[_Delivery] = deque()
        self._lines: deque[str] = deque()
        self._delivery_ready = asyncio.Event()
        self._lines_ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self.stats = NotifierStats()

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve the endpoints' secrets (raising :class:`ConfigError` naming the field) and start the
        workers. Events queued before ``start`` are sent once it runs."""
        if self._started:
            return
        self._endpoints = resolve_endpoints(self._reports, self._environ)
        self._started = True
        for ep in self._endpoints:
            if ep.signer is None:
                log.warning("notifier.endpoint_unsigned", endpoint=ep.safe_url)
        if self._endpoints:
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=self._reports.timeout_s)
                self._own_client = True
            self._workers = [
                asyncio.create_task(self._deliver_loop(), name=f"notifier:deliver:{i}")
                for i in range(self._concurrency)
            ]
        if self._path is not None:
            self._writer = asyncio.create_task(self._write_loop(), name="notifier:jsonl")
        log.info(
            "notifier.started",
            endpoints=len(self._endpoints),
            events=list(self._reports.events),
            jsonl=self._path is not None,
        )

    async def aclose(self, timeout: float) -> None:
        """Take no more reports; deliver and write what is queued within ``timeout`` seconds, then give up on
        the rest (counted as dropped) and close the client if it is ours."""
        if self._closed:
            return
        self._closing = True
        self._delivery_ready.set()
        self._lines_ready.set()
        tasks = [*self._workers, *([self._writer] if self._writer is not None else [])]
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._closed = True
        abandoned, unwritten = len(self._deliveries), len(self._lines)
        self._deliveries.clear()
        self._lines.clear()
        self.stats.dropped += abandoned
        self.stats.write_dropped += unwritten
        if pending or abandoned or unwritten:
            log.warning(
                "notifier.flush_incomplete",
                timeout_s=timeout,
                abandoned_deliveries=abandoned,
                unwritten_lines=unwritten,
            )
        if self._own_client and self._client is not None:
            await self._client.aclose()
        self._client = None
        log.info("notifier.stopped", **vars(self.stats))

    # ---- registry hooks (synchronous, never block) --------------------------------------------------

    def call_started(self, record: CallRecord) -> None:
        """``registry.on_started`` hook: queue the ``call.started`` event (the document is built now)."""
        if CALL_STARTED not in self._reports.events or not self._reports.endpoints:
            return
        if self._closing:
            self._refuse(record, CALL_STARTED, deliveries=len(self._reports.endpoints), lines=0)
            return
        document = started_document(record, mask_caller=self._reports.mask_caller)
        self._queue_event(CALL_STARTED, record.call_id, document)

    def call_ended(self, record: CallRecord) -> None:
        """``registry.on_finished`` hook: queue the call-log line and the ``call.ended`` event."""
        wants_event = CALL_ENDED in self._reports.events and bool(self._reports.endpoints)
        if not wants_event and self._path is None:
            return
        if self._closing:
            deliveries = len(self._reports.endpoints) if wants_event else 0
            self._refuse(record, CALL_ENDED, deliveries=deliveries, lines=int(self._path is not None))
            return
        document = report_document(record, mask_caller=self._reports.mask_caller)
        if self._path is not None:
            self._queue_line(record.call_id, _dumps(document) + "\n")
        if wants_event:
            self._queue_event(CALL_ENDED, record.call_id, document)

    def _refuse(self, record: CallRecord, event_type: str, *, deliveries: int, lines: int) -> None:
        """A report after ``aclose`` began: counted and logged, never queued."""
        self.stats.dropped += deliveries
        self.stats.write_dropped += lines
        log.warning("notifier.closed_dropped", call_id=record.call_id, event_type=event_type)

    def _queue_event(self, event_type: str, call_id: str, document: dict[str, Any]) -> None:
        created = datetime.fromtimestamp(self._wall_clock(), UTC).isoformat(timespec="milliseconds")
        event_id = f"evt_{uuid.uuid4().hex}"
        body = _dumps(
            {"type": event_type, "id": event_id, "created_at": created.replace("+00:00", "Z"), "data": document}
        )
        event = _Event(event_id, event_type, call_id, body)
        for i in range(len(self._reports.endpoints)):
            if len(self._deliveries) >= self._reports.queue_size:
                old = self._deliveries.popleft()
                self.stats.dropped += 1
                log.warning(
                    "notifier.queue_full_dropped",
                    dropped_call_id=old.event.call_id,
                    dropped_event_type=old.event.type,
                    queue_size=self._reports.queue_size,
                )
            self._deliveries.append(_Delivery(i, event))
        self._delivery_ready.set()

    def _queue_line(self, call_id: str, line: str) -> None:
        if len(self._lines) >= self._reports.queue_size:
            self._lines.popleft()
            self.stats.write_dropped += 1
            log.warning("notifier.jsonl_queue_full_dropped", call_id=call_id, queue_size=self._reports.queue_size)
        self._lines.append(line)
        self._lines_ready.set()

    # ---- workers ------------------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        while True:
            while not self._deliveries:
                if self._closing:
                    return
                self._delivery_ready.clear()
                await self._delivery_ready.wait()
            item = self._deliveries.popleft()
            try:
                await self._deliver(self._endpoints[item.endpoint], item.event)
            except asyncio.CancelledError:
                self.stats.dropped += 1  # cut off by the shutdown timeout
                raise
            except Exception:  # a bug must not stop the worker
                self.stats.failed += 1
                log.exception("notifier.delivery_crashed", call_id=item.event.call_id, event_type=item.event.type)

    def _retry_on(self, exc: Exception) -> bool | float:
        decision: bool | float = False
        if isinstance(exc, httpx.TransportError | _AttemptTimeout):
            decision = True
        elif isinstance(exc, _Refused) and (exc.status == 429 or exc.status >= 500):
            decision = True if exc.retry_after is None else min(exc.retry_after, self._policy.wait_max)
        return decision

    async def _deliver(self, endpoint: _Endpoint, event: _Event) -> None:
        attempts = 0
        try:
            async for attempt in stamina.retry_context(
                on=self._retry_on,
                attempts=self._reports.max_attempts,
                timeout=self._policy.total_s,
                wait_initial=self._policy.wait_initial,
                wait_max=self._policy.wait_max,
                wait_jitter=self._policy.wait_jitter,
            ):
                with attempt:
                    attempts += 1
                    await self._post(endpoint, event)
        except (httpx.HTTPError, _Refused, _AttemptTimeout) as exc:
            self.stats.retried += max(0, attempts - 1)
            self.stats.failed += 1
            log.warning(
                "notifier.delivery_failed",
                call_id=event.call_id,
                event_type=event.type,
                event_id=event.id,
                endpoint=endpoint.safe_url,
                attempts=attempts,
                error=str(exc) if isinstance(exc, _Refused) else type(exc).__name__,
            )
            return
        self.stats.retried += attempts - 1
        self.stats.delivered += 1
        log.info(
            "notifier.delivered",
            call_id=event.call_id,
            event_type=event.type,
            event_id=event.id,
            endpoint=endpoint.safe_url,
            attempts=attempts,
        )

    async def _post(self, endpoint: _Endpoint, event: _Event) -> None:
        assert self._client is not None
        now = datetime.fromtimestamp(self._wall_clock(), UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
        }
        if endpoint.signer is not None:
            headers["webhook-signature"] = endpoint.signer.sign(event.id, now, event.body)
        timeout = self._reports.timeout_s
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.post(
                    endpoint.url, content=event.body.encode("utf-8"), headers=headers, timeout=timeout
                )
        except TimeoutError:
            raise _AttemptTimeout(f"no answer within {timeout}s") from None
        if not 200 <= response.status_code < 300:
            raise _Refused(response.status_code, _retry_after(response.headers.get("retry-after")))

    async def _write_loop(self) -> None:
        assert self._path is not None
        while True:
            while not self._lines:
                if self._closing:
                    return
                self._lines_ready.clear()
                await self._lines_ready.wait()
            batch = list(self._lines)
            self._lines.clear()
            try:
                await asyncio.to_thread(_append_lines, self._path, batch)
            except OSError as exc:
                self.stats.write_failed += len(batch)
                log.error("notifier.jsonl_write_failed", lines=len(batch), error=type(exc).__name__, detail=str(exc))
            else:
                self.stats.written += len(batch)
