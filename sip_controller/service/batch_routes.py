"""The batch API (#16), admin bearer token:

- ``POST /v1/outbound/batches``: a JSON body (``profile``, ``rows``, ``pacing``, ``calling_hours``, ``retries``,
  ``from``) or a CSV upload (``Content-Type: text/csv``; the settings as query parameters). Each bad row is reported
  by number, the good ones queued (201); with no good row nothing is made (422). ``Idempotency-Key`` makes a
  repeated request return the batch it made (200, ``replayed``).
- ``GET /v1/outbound/batches``: the newest batches (``limit``, 1 to 200, default 50), each with its progress (the
  console's batch panel).
- ``GET /v1/outbound/batches/{id}``: progress (rows by state and by outcome).
- ``POST /v1/outbound/batches/{id}/pause``, ``/resume``, ``/cancel``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any, cast

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sip_controller.config import Settings, TwilioCredentials
from sip_controller.service.admin import AdminAuth
from sip_controller.service.batches import BatchRefused, CheckedBatch, from_csv, from_json, row_zone, window_opens_at
from sip_controller.state.batches import BatchAction, BatchRecord, NewBatch, NewBatchRow
from sip_controller.state.records import StoreError

log = structlog.get_logger("sip_controller.service.batches")

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_IDEMPOTENCY_KEY = 200
ACTIONS = ("pause", "resume", "cancel")
#: the most batches ``GET /v1/outbound/batches`` lists
MAX_LISTED = 200


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def batch_view(record: BatchRecord) -> dict[str, Any]:
    finished = record.states.get("done", 0) + record.states.get("canceled", 0)
    total = record.total
    return {
        "id": record.id,
        "status": record.status,
        "profile": record.profile,
        "pacing": {"calls_per_second": record.calls_per_second, "max_in_flight": record.max_in_flight},
        "calling_hours": record.options.get("calling_hours"),
        "retries": record.options.get("retries"),
        "rows": total,
        "finished": finished,
        "progress": round(finished / total, 4) if total else 1.0,
        "states": record.states,
        "outcomes": record.outcomes,
        "rejected": record.rejected,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def new_batch(checked: CheckedBatch, now: float, key: str | None) -> NewBatch:
    """The store's batch for a checked request; each row first due when its calling hours open."""
    options = checked.options
    rows = []
    for good in checked.good:
        tz = row_zone(options.calling_hours, good.timezone)
        due = now if options.calling_hours is None or tz is None else window_opens_at(now, options.calling_hours, tz)
        rows.append(NewBatchRow(good.row, good.to, good.variables, due, good.timezone))
    return NewBatch(
        id=f"batch_{secrets.token_hex(8)}", profile=options.profile, calls_per_second=options.calls_per_second,
        max_in_flight=options.max_in_flight, rows=rows, options=options.as_json(), rejected=checked.rejected,
        idempotency_key=key, request_hash=checked.request_hash,
    )  # fmt: skip


def routes(
    twilio: TwilioCredentials | None,
    settings: Settings,
    auth: AdminAuth,
    runtime: Callable[[Request], Any],
    wall_clock: Callable[[], float],
) -> list[Route]:
    def kick(request: Request) -> None:
        dialler = getattr(request.app.state, "dialler", None)
        if dialler is not None:
            dialler.kick()

    async def create(request: Request) -> Response:
        if (denied := await auth.authorize(request, write=True)) is not None:
            return denied
        if twilio is None:
            return _error(404, "Twilio is not configured: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, "
                               "OPENAI_PROJECT_ID and SIPCTL_PUBLIC_URL")  # fmt: skip
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            return _error(422, f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} characters")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(413, f"the body is over {MAX_BODY_BYTES} bytes; split the batch")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, f"the body is over {MAX_BODY_BYTES} bytes; split the batch")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if content_type == "text/csv":
                try:
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError:
                    return _error(422, "the CSV must be UTF-8")
                checked = from_csv(settings, text, dict(request.query_params))
            else:
                try:
                    body = json.loads(raw or b"null")
                except (ValueError, RecursionError):
                    return _error(422, "the body must be JSON (or a CSV upload with Content-Type: text/csv)")
                checked = from_json(settings, body)
        except BatchRefused as exc:
            return _error(422, str(exc))
        if not checked.good:
            return _error(422, "no row can be called; nothing was queued", rejected=checked.rejected)
        try:
            record, created = await runtime(request).store.create_batch(new_batch(checked, wall_clock(), key))
        except StoreError as exc:
            log.warning("batch.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        if not created:
            if record.request_hash != checked.request_hash:
                return _error(422, "Idempotency-Key was used for another batch; use a new key for a new batch")
            return JSONResponse({**batch_view(record), "replayed": True})
        log.info("batch.created", batch_id=record.id, rows=len(checked.good), rejected=len(checked.rejected),
                 profile=record.profile)  # fmt: skip
        kick(request)
        return JSONResponse({**batch_view(record), "accepted": len(checked.good)}, status_code=201)

    async def index(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        if twilio is None:
            return _error(404, "Twilio is not configured")
        unknown = sorted(set(request.query_params) - {"limit"})
        if unknown:
            return _error(422, f"unknown query parameter(s) {', '.join(u[:40] for u in unknown[:5])}; use limit")
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LISTED:
            return _error(422, f"limit: a whole number from 1 to {MAX_LISTED}")
        try:
            records = await runtime(request).store.list_batches(limit=int(raw))
        except StoreError as exc:
            log.warning("batch.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        return JSONResponse({"batches": [batch_view(record) for record in records]})

    async def collection(request: Request) -> Response:
        """One route for both methods, so that another method's 405 names both in ``Allow``."""
        return await (index(request) if request.method in ("GET", "HEAD") else create(request))

    async def show(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        if twilio is None:
            return _error(404, "Twilio is not configured")
        try:
            record = await runtime(request).store.get_batch(request.path_params["id"])
        except StoreError as exc:
            log.warning("batch.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        if record is None:
            return _error(404, "no such batch")
        return JSONResponse(batch_view(record))

    async def act(request: Request) -> Response:
        if (denied := await auth.authorize(request, write=True)) is not None:
            return denied
        if twilio is None:
            return _error(404, "Twilio is not configured")
        action = request.path_params["action"]
        if action not in ACTIONS:
            return _error(404, f"no such action; use {', '.join(ACTIONS)}")
        try:
            record, changed = await runtime(request).store.set_batch_status(
                request.path_params["id"], cast("BatchAction", action)
            )
        except StoreError as exc:
            log.warning("batch.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        if record is None:
            return _error(404, "no such batch")
        if not changed and record.status in ("canceled", "done") and (action, record.status) != ("cancel", "canceled"):
            return _error(409, f"the batch is {record.status}; it cannot {action}", batch=batch_view(record))
        log.info("batch.status", batch_id=record.id, action=action, status=record.status, changed=changed)
        if record.status == "running":
            kick(request)
        return JSONResponse(batch_view(record))

    return [
        Route("/v1/outbound/batches", collection, methods=["GET", "POST"]),
        Route("/v1/outbound/batches/{id}", show, methods=["GET"]),
        Route("/v1/outbound/batches/{id}/{action}", act, methods=["POST"]),
    ]
