"""The admin API: live and recent calls, and an operator's hangup or transfer. Bearer token from
``SIPCTL_ADMIN_TOKEN`` (constant-time compare), or the live-calls page's session cookie (see
:mod:`sip_controller.service.sessions`): its writes must carry the session's CSRF token and come from our own
origin. Wrong tokens are throttled per client (429 with ``Retry-After``). Every route answers 404 when no token is
configured."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sip_controller.calls.inputs import OperatorHangup, OperatorTransfer
from sip_controller.calls.report import CallRecord, mask_number, report_document
from sip_controller.config import Console as ConsoleSettings
from sip_controller.service.sessions import (
    LoginThrottle,
    MemorySessionStore,
    Session,
    Sessions,
    SessionStore,
    client_key,
    on_loopback,
    retry_after_header,
    same_origin,
)

log = structlog.get_logger("sip_controller.service.admin")

#: the live-calls page's session cookie: an opaque random id, never the token
SESSION_COOKIE = "sipctl_session"
#: the cookie of earlier versions, which held the token itself: ignored, and deleted at sign-in and sign-out
LEGACY_COOKIE = "sipctl_admin"
#: cookie-authenticated writes carry the session's CSRF token in this header (a cross-site page cannot set it)
CSRF_HEADER = "x-sipctl-csrf"

Endpoint = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class AdminAuth:
    """Who may use the admin API and the live-calls page: a bearer token, or a session made by signing in."""

    def __init__(
        self,
        token: str | None,
        settings: ConsoleSettings | None = None,
        *,
        store: SessionStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        settings = settings or ConsoleSettings()
        self._token = token.encode() if token else None
        self.secure_cookie = settings.secure_cookie
        self.sessions = Sessions(
            store or MemorySessionStore(settings.max_sessions, clock=wall_clock),
            ttl_s=settings.session_ttl_s,
            clock=wall_clock,
        )
        self.throttle = LoginThrottle(
            free_failures=settings.login_free_failures, max_wait_s=settings.login_backoff_max_s, clock=clock
        )
        self._warned_insecure = False

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, presented: str | None) -> bool:
        """Constant-time compare with the token; no throttling (see :meth:`try_token`)."""
        return self._token is not None and presented is not None and hmac.compare_digest(
            presented.encode(), self._token
        )

    def throttle_wait(self, request: Request) -> float:
        """Seconds this client must still wait before its next token is checked (0: go ahead)."""
        return self.throttle.retry_after(client_key(request))

    def try_token(self, request: Request, presented: str) -> tuple[bool, float]:
        """Check a token a client presented, throttled per client: ``(valid, wait)``. While the client must
        wait the token is not looked at (``(False, wait)``); a wrong token may start a wait."""
        wait = self.throttle_wait(request)
        if wait > 0:
            return False, wait
        if self.check(presented):
            return True, 0.0
        return False, self.throttle.failed(client_key(request))

    async def session(self, request: Request) -> Session | None:
        return await self.sessions.find(request.cookies.get(SESSION_COOKIE))

    async def authorize(self, request: Request, *, write: bool = False) -> Response | None:
        """None when the request may proceed (a cookie session is then ``request.state.session``); otherwise the
        answer: 404 when off, 401 not signed in, 403 a cookie write without the CSRF token or from another
        origin, 429 too many wrong tokens."""
        if not self.enabled:
            return _error(404, "not found")
        request.state.session = None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            ok, wait = self.try_token(request, header[7:].strip())
            if ok:
                return None
            if wait > 0:
                return _error(429, "too many wrong tokens; wait and retry", {"retry-after": retry_after_header(wait)})
            return _error(401, "a valid bearer token is required", {"www-authenticate": "Bearer"})
        session = await self.session(request)
        if session is None:
            return _error(401, "a valid bearer token is required", {"www-authenticate": "Bearer"})
        if write and not (same_origin(request) and session.csrf_matches(request.headers.get(CSRF_HEADER))):
            return _error(403, f"CSRF check failed: send the session's token in {CSRF_HEADER} from this origin")
        request.state.session = session
        return None

    def _secure(self, request: Request) -> bool:
        if self.secure_cookie:
            return True
        if on_loopback(request):
            return False
        if not self._warned_insecure:
            self._warned_insecure = True
            log.warning("console.secure_cookie_kept", reason="secure_cookie is false but not served on loopback")
        return True

    async def start_session(self, request: Request, response: Response) -> None:
        """Sign in: revoke the session the browser had (if any), start a new one, set its cookie."""
        old = request.cookies.get(SESSION_COOKIE)
        if old:
            await self.sessions.revoke(old)
        session_id, _ = await self.sessions.create()
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=max(1, int(self.sessions.ttl_s + 0.999)),
            httponly=True,
            samesite="strict",
            secure=self._secure(request),
            path="/",
        )
        if LEGACY_COOKIE in request.cookies:
            response.delete_cookie(LEGACY_COOKIE, path="/", httponly=True, samesite="strict")

    async def end_session(self, request: Request, response: Response) -> None:
        """Sign out: revoke the session on the server and clear the cookie."""
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            await self.sessions.revoke(session_id)
        response.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=self._secure(request)
        )
        if LEGACY_COOKIE in request.cookies:
            response.delete_cookie(LEGACY_COOKIE, path="/", httponly=True, samesite="strict")


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
        if (denied := await auth.authorize(request)) is not None:
            return denied
        registry = runtime(request).registry
        live_ids = {r.call_id for r in registry.live_records()}
        calls = [call_summary(r, live=r.call_id in live_ids) for r in registry.records()]
        return JSONResponse({"calls": calls})

    async def get_call(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        record = runtime(request).registry.get(request.path_params["call_id"])
        if record is None:
            return _error(404, "no such call")
        return JSONResponse(report_document(record, mask_caller=mask_caller))

    async def hangup(request: Request) -> Response:
        if (denied := await auth.authorize(request, write=True)) is not None:
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
        if (denied := await auth.authorize(request, write=True)) is not None:
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
                    401, 429,
                ),
            }
        },
        "/v1/calls/{call_id}": {
            "get": {
                "summary": "One call's full record (the end-of-call report document, transcript so far)",
                "parameters": [_CALL_ID],
                "responses": _responses(200, {"type": "object", "required": ["call_id"]}, 401, 404, 429),
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
                    401, 403, 404, 409, 422, 429,
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
                    401, 403, 404, 409, 422, 429,
                ),
            }
        },
    },
}

