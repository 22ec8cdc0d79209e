"""The admin API: live and recent calls, and an operator's hangup or transfer. Bearer token from
``SIPCTL_ADMIN_TOKEN`` (constant-time compare); every route answers 404 when no token is configured."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sip_controller.calls.inputs import OperatorHangup, OperatorTransfer
from sip_controller.calls.report import CallRecord, mask_number, report_document

ADMIN_COOKIE = "sipctl_admin"
#: cookie-authenticated writes must carry this header: a cross-site form cannot send it (CSRF)
CSRF_HEADER = "x-sipctl-request"

Endpoint = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class AdminAuth:
    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, presented: str | None) -> bool:
        return self._token is not None and presented is not None and hmac.compare_digest(
            presented.encode(), self._token
        )

    def authorize(self, request: Request, *, write: bool = False) -> Response | None:
        """None when the request may proceed; otherwise the answer (404 when off, 401 when not allowed)."""
        if not self.enabled:
            return _error(404, "not found")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and self.check(header[7:].strip()):
            return None
        cookie = request.cookies.get(ADMIN_COOKIE)
        if self.check(cookie) and (not write or request.headers.get(CSRF_HEADER) == "1"):
            return None
        return JSONResponse(
            {"error": "a valid bearer token is required"}, status_code=401, headers={"www-authenticate": "Bearer"}
        )


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def call_summary(record: CallRecord, *, live: bool, now: datetime | None = None) -> dict[str, Any]:
    """One row of ``GET /v1/calls``: never the transcript, the caller masked."""
    duration: float | None
    if live:
        elapsed = ((now or datetime.now(UTC)) - record.received_at).total_seconds()
        duration = round(max(0.0, elapsed), 3)
    else:
        duration = record.duration_s
    return {
        "call_id": record.call_id,
        "profile": record.profile,
        "state": record.state,
        "live": live,
        "started": _iso(record.received_at),
        "duration_s": duration,
        "caller": mask_number(record.caller),
        "ended_reason": record.ended_reason,
        "cost_usd": round(record.cost_usd, 6),
    }


def routes(auth: AdminAuth, runtime: Callable[[Request], Any], *, mask_caller: bool) -> list[Route]:
    """``runtime(request)`` gives the app's Runtime (registry and settings)."""

    async def list_calls(request: Request) -> Response:
        if (denied := auth.authorize(request)) is not None:
            return denied
        registry = runtime(request).registry
        live_ids = {r.call_id for r in registry.live_records()}
        calls = [call_summary(r, live=r.call_id in live_ids) for r in registry.records()]
        return JSONResponse({"calls": calls})

    async def get_call(request: Request) -> Response:
        if (denied := auth.authorize(request)) is not None:
            return denied
        record = runtime(request).registry.get(request.path_params["call_id"])
        if record is None:
            return _error(404, "no such call")
        return JSONResponse(report_document(record, mask_caller=mask_caller))

    async def hangup(request: Request) -> Response:
        if (denied := auth.authorize(request, write=True)) is not None:
            return denied
        now_flag = request.query_params.get("now", "false").lower()
        if now_flag not in ("true", "false", "1", "0"):
            return _error(422, "`now` must be true or false")
        call_id = request.path_params["call_id"]
        registry = runtime(request).registry
        supervisor = registry.supervisor(call_id)
        if supervisor is None:
            return _error(404 if registry.get(call_id) is None else 409, "no live call with that id")
        supervisor.post(OperatorHangup(now=now_flag in ("true", "1")))
        return JSONResponse({"status": "hanging_up", "call_id": call_id}, status_code=202)

    async def transfer(request: Request) -> Response:
        if (denied := auth.authorize(request, write=True)) is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, RecursionError):
            return _error(422, "the body must be JSON: {\"target\": \"<allow-listed name>\"}")
        if not isinstance(body, dict) or not isinstance(body.get("target"), str):
            return _error(422, "the body must be {\"target\": \"<allow-listed name>\"}")
        call_id = request.path_params["call_id"]
        registry = runtime(request).registry
        supervisor = registry.supervisor(call_id)
        if supervisor is None:
            return _error(404 if registry.get(call_id) is None else 409, "no live call with that id")
        targets = supervisor.machine.profile.transfer.targets
        if body["target"] not in targets:
            return _error(422, f"unknown target; use one of: {', '.join(targets) or 'none configured'}")
        supervisor.post(OperatorTransfer(body["target"]))
        return JSONResponse({"status": "transferring", "call_id": call_id, "target": body["target"]}, status_code=202)

    async def openapi(request: Request) -> Response:
        if not auth.enabled:
            return _error(404, "not found")
        return JSONResponse(OPENAPI)

    return [
        Route("/v1/calls", list_calls, methods=["GET"]),
        Route("/v1/calls/{call_id}", get_call, methods=["GET"]),
        Route("/v1/calls/{call_id}/hangup", hangup, methods=["POST"]),
        Route("/v1/calls/{call_id}/transfer", transfer, methods=["POST"]),
        Route("/v1/openapi.json", openapi, methods=["GET"]),
    ]


_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_SUMMARY = {
    "type": "object",
    "required": ["call_id", "profile", "state", "live", "started", "duration_s", "caller", "ended_reason", "cost_usd"],
    "properties": {
        "call_id": {"type": "string"},
        "profile": {"type": "string"},
        "state": {"type": "string"},
        "live": {"type": "boolean"},
        "started": {"type": "string", "format": "date-time"},
        "duration_s": {"type": ["number", "null"]},
        "caller": {"type": ["string", "null"]},
        "ended_reason": {"type": ["string", "null"]},
        "cost_usd": {"type": "number"},
    },
}


def _responses(ok: int, schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {str(ok): {"description": "OK", "content": {"application/json": {"schema": schema}}}}
    for status in errors:
        out[str(status)] = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    return out


_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "sip-controller admin API", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/calls": {
            "get": {
                "summary": "Live and recent calls",
                "responses": _responses(
                    200, {"type": "object", "required": ["calls"], "properties": {"calls": {"type": "array",
                                                                                            "items": _SUMMARY}}},
                    401,
                ),
            }
        },
        "/v1/calls/{call_id}": {
            "get": {
                "summary": "One call's full record (the end-of-call report document, transcript so far)",
                "parameters": [_CALL_ID],
                "responses": _responses(200, {"type": "object", "required": ["call_id"]}, 401, 404),
            }
        },
        "/v1/calls/{call_id}/hangup": {
            "post": {
                "summary": "End a live call: a spoken goodbye then hangup, or at once with now=true",
                "parameters": [
                    _CALL_ID,
                    {"name": "now", "in": "query", "required": False, "schema": {"type": "boolean"}},
                ],
                "responses": _responses(
                    202, {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
                    401, 404, 409, 422,
                ),
            }
        },
        "/v1/calls/{call_id}/transfer": {
            "post": {
                "summary": "Transfer a live call to an allow-listed target of its profile",
                "parameters": [_CALL_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["target"], "properties": {"target": {"type": "string"}},
                    }}},
                },
                "responses": _responses(
                    202, {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
                    401, 404, 409, 422,
                ),
            }
        },
    },
}

