"""The admin API: live and recent calls, and an operator's hangup or transfer, or live control (#17: say,
context, mute, unmute). Bearer token from
``SIPCTL_ADMIN_TOKEN`` (constant-time compare), or the live-calls page's session cookie (see
:mod:`sip_controller.service.sessions`): its writes must carry the session's CSRF token and come from our own
origin. Wrong tokens are throttled per client (429 with ``Retry-After``). Every route answers 404 when no token is
configured."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sip_controller.calls.features import control
from sip_controller.calls.inputs import OperatorContext, OperatorHangup, OperatorMute, OperatorSay, OperatorTransfer
from sip_controller.calls.report import CallRecord, mask_number, report_document
from sip_controller.config import Console as ConsoleSettings
from sip_controller.service import history, history_export
from sip_controller.service.analysis import with_analysis
from sip_controller.service.sessions import (
    LoginThrottle,
    MemorySessionStore,
    Session,
    Sessions,
    StoreSessions,
    StoreThrottle,
    Throttle,
    client_key,
    on_loopback,
    retry_after_header,
    same_origin,
)
from sip_controller.state.console_sessions import LoginBackoff
from sip_controller.state.records import OUTCOMES, StoreError
from sip_controller.state.store import Store

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


def _store_failed(exc: StoreError) -> JSONResponse:
    """A store that failed under a request: logged (its message cut short), 503 for the client to retry."""
    log.warning("admin.store_failed", error=str(exc)[:300])
    return _error(503, "the call store is unavailable; retry")


class AdminAuth:
    """Who may use the admin API and the live-calls page: a bearer token, or a session made by signing in.

    Sessions and the wrong-token throttle live in the shared store once :meth:`use_store` is called (the app does,
    as soon as its store is open, before it serves a request), so every replica honours them (#13); an AdminAuth
    built without a store (unit tests) keeps them in this process's memory."""

    def __init__(
        self,
        token: str | None,
        settings: ConsoleSettings | None = None,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        settings = settings or ConsoleSettings()
        self._settings = settings
        self._token = token.encode() if token else None
        self.secure_cookie = settings.secure_cookie
        self.sessions = Sessions(
            MemorySessionStore(settings.max_sessions, clock=wall_clock), ttl_s=settings.session_ttl_s
        )
        self.throttle: Throttle = LoginThrottle(
            free_failures=settings.login_free_failures, max_wait_s=settings.login_backoff_max_s, clock=clock
        )
        self._warned_insecure = False
        if store is not None:
            self.use_store(store)

    def use_store(self, store: Store) -> None:
        """Keep sessions and wrong tokens in ``store`` (shared by the replicas) from now on."""
        settings = self._settings
        self.sessions = Sessions(StoreSessions(store, max_sessions=settings.max_sessions), ttl_s=settings.session_ttl_s)
        self.throttle = StoreThrottle(
            store, LoginBackoff(free_failures=settings.login_free_failures, max_wait_s=settings.login_backoff_max_s)
        )

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, presented: str | None) -> bool:
        """Constant-time compare with the token; no throttling (see :meth:`try_token`)."""
        return self._token is not None and presented is not None and hmac.compare_digest(
            presented.encode(), self._token
        )

    async def throttle_wait(self, request: Request) -> float:
        """Seconds this client must still wait before its next token is checked (0: go ahead)."""
        return await self.throttle.retry_after(client_key(request))

    async def try_token(self, request: Request, presented: str) -> tuple[bool, float]:
        """Check a token a client presented, throttled per client: ``(valid, wait)``. While the client must
        wait the token is not looked at (``(False, wait)``); a wrong token may start a wait."""
        wait = await self.throttle_wait(request)
        if wait > 0:
            return False, wait
        if self.check(presented):
            return True, 0.0
        return False, await self.throttle.failed(client_key(request))

    async def session(self, request: Request) -> Session | None:
        return await self.sessions.find(request.cookies.get(SESSION_COOKIE))

    async def authorize(self, request: Request, *, write: bool = False) -> Response | None:
        """None when the request may proceed (a cookie session is then ``request.state.session``); otherwise the
        answer: 404 when off, 401 not signed in, 403 a cookie write without the CSRF token or from another
        origin, 429 too many wrong tokens, 503 the store (which holds the sessions and the throttle) unavailable."""
        if not self.enabled:
            return _error(404, "not found")
        request.state.session = None
        try:
            return await self._authorize(request, write)
        except StoreError as exc:
            log.warning("console.auth_store_failed", error=str(exc)[:300])
            return _error(503, "the store is unavailable; retry", {"retry-after": "1"})

    async def _authorize(self, request: Request, write: bool) -> Response | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            ok, wait = await self.try_token(request, header[7:].strip())
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


class BadControl(ValueError):
    """A live-control body that cannot be used (422, naming the field)."""


def control_args(kind: control.Kind, raw: bytes) -> dict[str, Any]:
    """The arguments of a live-control request from its body (say: ``{"text", "when"}``, context: ``{"text"}``,
    mute and unmute: none); BadControl names what is wrong."""
    if kind in ("mute", "unmute"):
        return {}
    shape = '{"text": "…", "when": "now" | "next"}' if kind == "say" else '{"text": "…"}'
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise BadControl(f"the body must be JSON: {shape}") from None
    if not isinstance(body, dict):
        raise BadControl(f"the body must be a JSON object: {shape}")
    allowed = ("text", "when") if kind == "say" else ("text",)
    for key in body:
        if key not in allowed:
            raise BadControl(f"unknown field `{str(key)[:40]}`; the body is {shape}")
    if "text" not in body:
        raise BadControl("`text` is required")
    limit = control.MAX_SAY_CHARS if kind == "say" else control.MAX_CONTEXT_CHARS
    try:
        text = control.check_text(body["text"], limit=limit)
    except ValueError as exc:
        raise BadControl(f"`text` {exc}") from None
    if kind == "context":
        return {"text": text}
    when = body.get("when", "now")
    if when not in control.WHENS:
        raise BadControl("`when` must be \"now\" or \"next\"")
    return {"text": text, "when": when}


def control_input(kind: control.Kind, args: dict[str, Any]) -> OperatorSay | OperatorContext | OperatorMute:
    if kind == "say":
        return OperatorSay(args["text"], args["when"])
    if kind == "context":
        return OperatorContext(args["text"])
    return OperatorMute(kind == "mute")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def call_summary(
    record: CallRecord, *, live: bool, now: datetime | None = None, owner: str | None = None
) -> dict[str, Any]:
    """One row of ``GET /v1/calls`` for a call of this process: never the transcript, the caller masked."""
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
        "ended": None if live or record.duration_s is None else history.iso(history.record_ended_at(record)),
        "duration_s": duration,
        "caller": mask_number(record.caller),
        "ended_reason": record.ended_reason,
        "cost_usd": round(record.cost_usd, 6),
        "owner": owner if live else None,
        "outcome": None if live else "unknown",  # no analysis in this process's memory (#17)
        "analysis_summary": None,
    }


async def list_cluster_calls(
    runtime: Any, query: history.ListQuery, *, wall_clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """``GET /v1/calls``: the cluster's live calls (first page), then finished calls newest first, one page.
    Without a shared store: this process's live and recent calls (one page, no cursor)."""
    registry = runtime.registry
    me = history.process_id(runtime)
    local_live = {r.call_id: r for r in registry.live_records()}
    store = history.cluster_store(runtime)
    calls: list[dict[str, Any]] = []
    if query.include_live:
        rows = await store.list_live(limit=history.MAX_LIVE) if store is not None else []
        now = wall_clock()
        seen: set[str] = set()
        for row in rows:
            seen.add(row.call_id)
            if not query.matches_live(row.profile, row.caller):
                continue
            record = local_live.get(row.call_id)
            if record is not None:
                calls.append(call_summary(record, live=True, owner=row.owner))
            else:
                calls.append(history.row_summary(row, now))
        for record in local_live.values():  # not (yet) in the store
            if record.call_id not in seen and query.matches_live(record.profile, record.caller):
                calls.append(call_summary(record, live=True, owner=me))
        calls.sort(key=lambda c: str(c["started"]), reverse=True)
    if store is not None:
        page = await store.list_finished(query.history)
        calls += [history.row_summary(row, 0.0) for row in page.calls]
        return {"calls": calls, "next_cursor": page.next_cursor}
    if query.history.cursor is None:
        finished = [
            r
            for r in registry.records()
            if r.call_id not in local_live
            and query.matches_finished(
                r.profile, r.caller, r.ended_reason, history.record_ended_at(r), " ".join(t.text for t in r.transcripts)
            )
        ]
        finished.sort(key=history.record_ended_at, reverse=True)
        calls += [call_summary(r, live=False) for r in finished[: query.history.limit]]
    return {"calls": calls, "next_cursor": None}


def _who(request: Request) -> str:
    """Who made an admin request, for an audit line: the bearer token, or a console session (by a digest of its
    key, never the key)."""
    session = getattr(request.state, "session", None)
    if session is None:
        return "token"
    return "session:" + hashlib.sha256(session.key.encode()).hexdigest()[:12]


def routes(
    auth: AdminAuth, runtime: Callable[[Request], Any], *, mask_caller: bool, export_max_rows: int = 100_000
) -> list[Route]:
    """``runtime(request)`` gives the app's Runtime (registry and settings)."""

    async def list_calls(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        try:
            query = history.parse_list_query(request.query_params)
        except history.BadParameter as exc:
            return _error(400, str(exc))
        try:
            return JSONResponse(await list_cluster_calls(runtime(request), query))
        except StoreError as exc:
            return _store_failed(exc)

    async def get_call(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        call_id = request.path_params["call_id"]
        rt = runtime(request)
        record = rt.registry.get(call_id)
        store = history.cluster_store(rt)
        if record is not None:
            document = report_document(record, mask_caller=mask_caller)
            if record.ended_reason is not None:  # finished: its analysis, if any (#17), else null
                document = await with_analysis(store, document)
                document = {**document, "analysis": document.get("analysis")}
            return JSONResponse(document)
        if store is None:
            return _error(404, "no such call")
        try:
            row = await store.get_call(call_id)
            report = None if row is None or row.live else await store.get_report(call_id)
        except StoreError as exc:
            return _store_failed(exc)
        if row is None:
            return _error(404, "no such call")
        if report is None:  # live on another replica (its transcript stays there), or finished without a report
            return JSONResponse(history.row_summary(row, time.time()))
        document = await with_analysis(store, history.masked_report(report, mask_caller=mask_caller))
        return JSONResponse({**document, "analysis": document.get("analysis")})

    async def reveal(request: Request) -> Response:
        """The call's numbers unmasked (#17), for an operator who asks; the reveal is logged (never the number)."""
        if (denied := await auth.authorize(request, write=True)) is not None:
            return denied
        call_id = request.path_params["call_id"]
        rt = runtime(request)
        record = rt.registry.get(call_id)
        numbers: tuple[str | None, str | None] | None = None
        if record is not None:
            numbers = (record.caller, record.dialed)
        elif (store := history.cluster_store(rt)) is not None:
            try:
                row = await store.get_call(call_id)
            except StoreError as exc:
                return _store_failed(exc)
            numbers = None if row is None else (row.caller, row.dialed)
        if numbers is None:
            return _error(404, "no such call")
        log.info("history.caller_revealed", call_id=call_id, who=_who(request))
        return JSONResponse({"call_id": call_id, "caller": numbers[0], "dialed": numbers[1]})

    async def export(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        try:
            fmt, query = history_export.parse_export(request.query_params)
        except history.BadParameter as exc:
            return _error(400, str(exc))
        store = history.cluster_store(runtime(request))
        if store is None:
            return _error(404, "no call history: this process runs without a store")
        try:
            first = await history_export.first_page(store, query)
        except StoreError as exc:
            return _store_failed(exc)
        now = time.time()
        who = _who(request)

        def done(rows: int) -> None:
            log.info("history.exported", format=fmt, rows=rows, who=who)

        body = history_export.stream(store, query, fmt, first, max_rows=export_max_rows, on_done=done)
        disposition = f'attachment; filename="{history_export.filename(fmt, now)}"'
        return StreamingResponse(
            body, media_type=history_export.FORMATS[fmt], headers={"content-disposition": disposition}
        )

    async def overview(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        try:
            query = history.parse_overview_query(request.query_params, time.time())
        except history.BadParameter as exc:
            return _error(400, str(exc))
        store = history.cluster_store(runtime(request))
        if store is None:
            return _error(404, "no call history: this process runs without a store")
        try:
            found = await store.overview(query.since, query.until, bucket_s=query.bucket_s)
        except StoreError as exc:
            return _store_failed(exc)
        return JSONResponse(history.overview_json(found, query.bucket))

    async def elsewhere(request: Request, call_id: str, kind: str, args: dict[str, Any]) -> Response:
        """The call is not live in this process: queue the command for its owner, if it is live in the cluster."""
        rt = runtime(request)
        store = history.cluster_store(rt)
        known = rt.registry.get(call_id) is not None
        if store is None:
            return _error(409 if known else 404, "no live call with that id")
        try:
            row = await store.get_call(call_id)
            if row is None or not row.live or row.owner == history.process_id(rt):
                # unknown, over, or ours but no longer supervised here (it is ending)
                return _error(409 if known or row is not None else 404, "no live call with that id")
            if kind in control.KINDS and row.state in ("ending", "hanging_up"):
                return _error(409, "the call is ending")
            if kind == "transfer":
                profile = rt.settings.profiles.get(row.profile)
                targets = profile.transfer.targets if profile is not None else ()
                if args["target"] not in targets:
                    return _error(422, f"unknown target; use one of: {', '.join(targets) or 'none configured'}")
            command_id = await store.post_command(call_id, kind, args)
        except StoreError as exc:
            return _store_failed(exc)
        if command_id is None:
            return _error(409, "no live call with that id")
        log.info("admin.command_posted", call_id=call_id, kind=kind, owner=row.owner, command_id=command_id)
        status = {"hangup": "hanging_up", "transfer": "transferring"}.get(kind, "queued")
        extra = {"kind": kind} if kind in control.KINDS else {}
        if "text" in args:  # the text is the operator's: not echoed back, not logged
            args = {key: value for key, value in args.items() if key != "text"}
        return JSONResponse(
            {"status": status, "call_id": call_id, **extra, **args, "owner": row.owner, "command_id": command_id},
            status_code=202,
        )

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
            return await elsewhere(request, call_id, "hangup", {"now": now_flag in ("true", "1")})
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
            return await elsewhere(request, call_id, "transfer", {"target": body["target"]})
        targets = supervisor.machine.profile.transfer.targets
        if body["target"] not in targets:
            return _error(422, f"unknown target; use one of: {', '.join(targets) or 'none configured'}")
        supervisor.post(OperatorTransfer(body["target"]))
        return JSONResponse({"status": "transferring", "call_id": call_id, "target": body["target"]}, status_code=202)

    def live_control(kind: control.Kind) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if (denied := await auth.authorize(request, write=True)) is not None:
                return denied
            try:
                args = control_args(kind, await request.body())
            except BadControl as exc:
                return _error(422, str(exc))
            call_id = request.path_params["call_id"]
            supervisor = runtime(request).registry.supervisor(call_id)
            if supervisor is None:
                return await elsewhere(request, call_id, kind, args)
            machine = supervisor.machine
            why = machine.control.refusal(machine, kind)
            if why is not None:
                return _error(409, why)
            supervisor.post(control_input(kind, args))
            extra = {"when": args["when"]} if "when" in args else {}
            return JSONResponse({"status": "queued", "call_id": call_id, "kind": kind, **extra}, status_code=202)

        return endpoint

    async def openapi(request: Request) -> Response:
        if not auth.enabled:
            return _error(404, "not found")
        return JSONResponse(OPENAPI)

    return [
        Route("/v1/calls", list_calls, methods=["GET"]),
        Route("/v1/calls/export", export, methods=["GET"]),  # before /v1/calls/{call_id}, which would take it
        Route("/v1/overview", overview, methods=["GET"]),
        Route("/v1/calls/{call_id}", get_call, methods=["GET"]),
        Route("/v1/calls/{call_id}/reveal", reveal, methods=["POST"]),
        Route("/v1/calls/{call_id}/hangup", hangup, methods=["POST"]),
        Route("/v1/calls/{call_id}/transfer", transfer, methods=["POST"]),
        *(Route(f"/v1/calls/{{call_id}}/{kind}", live_control(kind), methods=["POST"]) for kind in control.KINDS),
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
        "ended": {"type": ["string", "null"], "format": "date-time"},
        "duration_s": {"type": ["number", "null"]},
        "caller": {"type": ["string", "null"]},
        "ended_reason": {"type": ["string", "null"]},
        "cost_usd": {"type": "number"},
        "owner": {"type": ["string", "null"], "description": "the replica (process id) supervising a live call"},
        "outcome": {"type": ["string", "null"], "enum": ["succeeded", "failed", "unknown", None],
                    "description": "the post-call analysis's verdict on its success criteria (unknown: not analysed, "
                                   "or no verdict); null for a live call"},
        "analysis_summary": {"type": ["string", "null"], "description": "the analysis's short summary"},
    },
}
_TIME = {
    "type": "string",
    "description": "RFC 3339 with an offset (2025-01-31T12:00:00Z) or epoch seconds",
    "pattern": r"^([0-9]{1,12}(\.[0-9]{1,9})?|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2}))$",
}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 200}
_FILTER_PARAMETERS: list[dict[str, Any]] = [
    {"name": "since", "in": "query", "required": False, "schema": _TIME,
     "description": "finished calls that ended at or after this time"},
    {"name": "until", "in": "query", "required": False, "schema": _TIME,
     "description": "finished calls that ended before this time"},
    {"name": "ended_reason", "in": "query", "required": False,
     "schema": {"type": "string", "enum": list(history.ENDED_REASONS)}},
    {"name": "profile", "in": "query", "required": False, "schema": _TEXT},
    {"name": "caller", "in": "query", "required": False,
     "schema": {"type": "string", "pattern": r"^\+[1-9][0-9]{1,14}$",
                "description": "E.164, e.g. +14155550123 (shown masked in the answer)"}},
    {"name": "outcome", "in": "query", "required": False,
     "schema": {"type": "string", "enum": list(OUTCOMES)},
     "description": "the post-call analysis's verdict (unknown: not analysed, or no verdict)"},
    {"name": "q", "in": "query", "required": False, "schema": _TEXT,
     "description": "full-text search of the transcripts: words (all of them), \"a phrase\", -word to leave out; "
                    "at least one word"},
]
_LIST_PARAMETERS: list[dict[str, Any]] = [
    *_FILTER_PARAMETERS,
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": history.MAX_LIMIT, "default": history.DEFAULT_LIMIT}},
    {"name": "cursor", "in": "query", "required": False,
     "schema": {**_TEXT, "pattern": "^[A-Za-z0-9_-]+$", "description": "next_cursor of the previous page"}},
]


def _responses(ok: int, schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {str(ok): {"description": "OK", "content": {"application/json": {"schema": schema}}}}
    for status in errors:
        out[str(status)] = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    return out


_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_OVERVIEW = {
    "type": "object",
    "required": ["since", "until", "bucket", "calls", "per_bucket", "ended_reasons", "cost_per_day",
                 "ring_to_answer_ms", "avg_handle_s", "transfer_rate", "success_rate"],
    "properties": {
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "bucket": {"type": "string", "enum": list(history.BUCKETS)},
        "calls": {"type": "integer", "minimum": 0},
        "per_bucket": {"type": "array", "items": {"type": "object", "required": ["start", "calls"], "properties": {
            "start": {"type": "string", "format": "date-time"}, "calls": {"type": "integer", "minimum": 0}}}},
        "ended_reasons": {"type": "object", "additionalProperties": {"type": "integer"}},
        "cost_per_day": {"type": "array", "items": {
            "type": "object", "required": ["day", "model_usd", "transcription_usd", "analysis_usd"], "properties": {
                "day": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                "model_usd": {"type": "number"}, "transcription_usd": {"type": "number"},
                "analysis_usd": {"type": "number"}}}},
        "ring_to_answer_ms": {"type": "object", "required": ["p50", "p95"],
                              "properties": {"p50": _NULLABLE_NUMBER, "p95": _NULLABLE_NUMBER}},
        "avg_handle_s": _NULLABLE_NUMBER,
        "transfer_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "success_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    },
}  # fmt: skip
_E164 = {"type": "string", "pattern": r"^\+[1-9][0-9]{1,14}$", "description": "E.164, e.g. +14155550123"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_OUTBOUND_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "description": "the outbound request's id (out_…)"},
    "to": {"type": ["string", "null"], "description": "the number called (masked when reports.mask_caller)"},
    "from": _NULLABLE_TEXT,
    "profile": _NULLABLE_TEXT,
    "variables": {"type": "object", "additionalProperties": {"type": "string"}},
    "call_sid": {"type": ["string", "null"], "description": "Twilio's CallSid once the Calls API answered"},
    "status": {"type": "string", "description": "Twilio's call status (queued, ringing, in-progress, …)"},
    "answered_by": {"type": ["string", "null"], "description": "answering-machine detection's AnsweredBy"},
    "error_code": {"type": ["integer", "null"], "description": "Twilio's error code of a failed call"},
    "call_id": {"type": ["string", "null"], "description": "the OpenAI call (rtc_…) it became, or its report's id"},
    "events": {"type": "array", "items": {"type": "object"}},
    "park": {"type": ["object", "null"], "description": "a hold parked on Twilio (#16): status (parked, bridging, "
             "ended, closed), spell, since, listens, checks, legs (the OpenAI call ids parked), spells_over; null: "
             "never parked"},
    "replayed": {"type": "boolean", "description": "true: the Idempotency-Key's call, placed before"},
}
_OUTBOUND = {
    "type": "object",
    "required": ["id", "to", "from", "profile", "variables", "call_sid", "status", "answered_by", "error_code",
                 "call_id", "events"],
    "properties": _OUTBOUND_PROPERTIES,
}  # fmt: skip
_BATCH = {
    "type": "object",
    "required": ["id", "status", "profile", "pacing", "rows", "finished", "progress", "states", "outcomes", "rejected"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["running", "paused", "canceled", "done"]},
        "profile": {"type": "string"},
        "pacing": {"type": "object", "properties": {"calls_per_second": {"type": "number"},
                                                    "max_in_flight": {"type": "integer"}}},
        "calling_hours": {"type": ["object", "null"]},
        "retries": {"type": ["object", "null"]},
        "rows": {"type": "integer"},
        "finished": {"type": "integer"},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "states": {"type": "object", "additionalProperties": {"type": "integer"},
                   "description": "rows by state: queued, placing, in_flight, done, canceled"},
        "outcomes": {"type": "object", "additionalProperties": {"type": "integer"},
                     "description": "finished rows by outcome: completed, voicemail, no_answer, busy, failed, "
                                    "canceled, do_not_call"},
        "rejected": {"type": "array", "items": {"type": "object", "required": ["row", "error"], "properties": {
            "row": {"type": "integer"}, "error": {"type": "string"}}}},
        "accepted": {"type": "integer"},
        "replayed": {"type": "boolean"},
    },
}  # fmt: skip
_BATCH_REQUEST = {
    "type": "object",
    "required": ["rows"],
    "additionalProperties": False,
    "properties": {
        "profile": {"type": "string"},
        "from": {"type": "string", "description": "E.164 caller ID for every row (default: the configured one)"},
        "rows": {"type": "array", "maxItems": 10000, "items": {
            "type": "object", "required": ["to"], "additionalProperties": False,
            "properties": {"to": {"type": "string"}, "variables": {"type": "object",
                                                                   "additionalProperties": {"type": "string"}},
                           "timezone": {"type": "string", "description": "IANA zone of the callee"}},
        }},
        "pacing": {"type": "object", "additionalProperties": False, "properties": {
            "calls_per_second": {"type": "number", "minimum": 0.01, "maximum": 50},
            "max_in_flight": {"type": "integer", "minimum": 1, "maximum": 1000}}},
        "calling_hours": {"type": "object", "additionalProperties": False, "required": ["start", "end"],
                          "properties": {"start": {"type": "string", "example": "09:00"},
                                         "end": {"type": "string", "example": "18:00"},
                                         "timezone": {"type": "string"}}},
        "retries": {"type": "object", "additionalProperties": False, "properties": {
            "no_answer": {"type": "integer", "minimum": 0, "maximum": 10},
            "busy": {"type": "integer", "minimum": 0, "maximum": 10},
            "delay_s": {"type": "number", "minimum": 0, "maximum": 604800}}},
    },
}  # fmt: skip
_BATCH_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "string"}, "rejected": {"type": "array"}, "batch": {"type": "object"}},
}  # fmt: skip
_BATCH_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _batch_action(action: str, what: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": what,
            "parameters": [_BATCH_ID],
            "responses": {
                **_responses(200, _BATCH, 401, 403, 404, 429, 503),
                "409": {"description": "the batch is finished (canceled or done)",
                        "content": {"application/json": {"schema": _BATCH_ERROR}}},
            },
        }
    }  # fmt: skip


_OUTBOUND_REQUEST = {
    "type": "object",
    "required": ["to"],
    "additionalProperties": False,
    "properties": {
        "to": _E164,
        "from": {**_E164, "description": "caller ID (default: the profile's outbound.from_number, else "
                 "twilio.from_number)"},
        "profile": {"type": "string", "description": "default: the default profile"},
        "variables": {"type": "object", "additionalProperties": {"type": "string"},
                      "description": "exactly the variables the profile declares ({{ var:name }})"},
    },
}  # fmt: skip
_TWILIO_FORM = {
    "required": True,
    "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "required": ["AccountSid", "CallSid"], "additionalProperties": {"type": "string"},
        "properties": {"AccountSid": {"type": "string"}, "CallSid": {"type": "string"}},
    }}},
}  # fmt: skip


def _twilio_webhook(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    """A route Twilio calls: signed with X-Twilio-Signature, not the bearer token."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {"post": {
        "summary": summary,
        "tags": ["twilio-webhooks"],
        "security": [],
        "parameters": [{"name": "X-Twilio-Signature", "in": "header", "required": False, "schema": {"type": "string"},
                        "description": "Twilio's signature of SIPCTL_PUBLIC_URL + path and the form; 403 without"}],
        "requestBody": _TWILIO_FORM,
        "responses": {
            "200": {"description": "OK", "content": ok},
            "400": {"description": "a signed form that is not a Twilio callback", "content": text},
            "403": {"description": "not signed by Twilio for this account", "content": text},
            "404": {"description": "Twilio not configured, or a CallSid of no call of ours",
                    "content": {"application/json": {"schema": _ERROR}}},
            "413": {"description": "too large", "content": text},
            "503": {"description": "the call store is unavailable (Twilio retries)",
                    "content": {"application/json": {"schema": _ERROR}}},
        },
    }}  # fmt: skip


def _parked_webhook() -> dict[str, Any]:
    """``POST /twilio/parked``: a parked call's listening rounds (#16); the query names the park."""
    route = _twilio_webhook(
        "A parked call's listening round (<Gather input=speech> action, #16): TwiML listening again, bridging a fresh "
        "OpenAI session when a person is back, or giving up",
        {"application/xml": {"schema": {"type": "string"}}},
    )
    post = route["post"]
    post["parameters"] = [
        *post["parameters"],
        {"name": "twilio_id", "in": "query", "required": True, "schema": {"type": "string"},
         "description": "the Twilio call's id (ours), as in the action URL the controller gave Twilio"},
        {"name": "spell", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1},
         "description": "which park of the call (1, 2, …)"},
    ]  # fmt: skip
    post["responses"]["404"]["description"] = "Twilio not configured, or no parked call of ours with this id, CallSid"
    return route


_CONTROL_SUMMARY = {
    "say": "Have the agent say exactly this line: now (what it is saying is cut off) or next (after the answer in "
    "progress)",
    "context": "Add a system message the agent sees from now on (e.g. the parcel is late; offer a discount)",
    "mute": "The agent stops answering on its own; the caller is still heard and transcribed",
    "unmute": "The agent answers on its own again (undoes mute)",
}


#: not blank, and no control character but newline and tab (what ``control.check_text`` accepts)
_CONTROL_TEXT = r"^[^\x00-\x08\x0b-\x1f]*[^\s\x00-\x1f][^\x00-\x08\x0b-\x1f]*$"


def _control_text(limit: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": limit, "pattern": _CONTROL_TEXT,
            "description": f"at most {limit} characters, not blank, no control characters but \\n and \\t"}  # fmt: skip


def _control_path(kind: control.Kind) -> dict[str, Any]:
    """A live-control route (#17): 202 queued through the call machine; 409 while the call is ending, during a
    transfer (say, mute, unmute), on hold or without turn detection (mute, unmute); 404 no live call."""
    operation: dict[str, Any] = {
        "summary": _CONTROL_SUMMARY[kind] + " (whichever replica owns the call; recorded on the report's timeline)",
        "parameters": [_CALL_ID],
        "responses": _responses(
            202,
            {"type": "object", "required": ["status", "call_id"], "properties": {
                "status": {"type": "string", "enum": ["queued"]}, "call_id": {"type": "string"},
                "kind": {"type": "string"}, "when": {"type": "string"},
                "owner": {"type": "string"}, "command_id": {"type": "integer"},
            }},
            401, 403, 404, 409, 422, 429, 503,
        ),
    }  # fmt: skip
    if kind == "say":
        schema: dict[str, Any] = {
            "type": "object", "required": ["text"], "additionalProperties": False,
            "properties": {"text": _control_text(control.MAX_SAY_CHARS),
                           "when": {"type": "string", "enum": list(control.WHENS), "default": "now"}},
        }  # fmt: skip
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    elif kind == "context":
        schema = {"type": "object", "required": ["text"], "additionalProperties": False,
                  "properties": {"text": _control_text(control.MAX_CONTEXT_CHARS)}}  # fmt: skip
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {"post": operation}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "sip-controller admin API", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/calls": {
            "get": {
                "summary": "The cluster's live calls (first page; not with since, until or ended_reason), then "
                "finished calls, newest first, a page at a time",
                "parameters": _LIST_PARAMETERS,
                "responses": _responses(
                    200,
                    {
                        "type": "object",
                        "required": ["calls", "next_cursor"],
                        "properties": {
                            "calls": {"type": "array", "items": _SUMMARY},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    },
                    400, 401, 429, 503,
                ),
            }
        },
        "/v1/calls/export": {
            "get": {
                "summary": "The finished calls of a filtered list (the list's filters), newest first, as CSV or JSONL "
                "(one summary a line), streamed; at most history.export_max_rows rows; the caller masked",
                "parameters": [
                    *_FILTER_PARAMETERS,
                    {"name": "format", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(history_export.FORMATS), "default": "csv"}},
                ],
                "responses": {
                    "200": {
                        "description": "a download (Content-Disposition: attachment; filename=\"calls-<UTC>.csv\")",
                        "content": {
                            "text/csv": {"schema": {"type": "string"}},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    **{k: v for k, v in _responses(200, {}, 400, 401, 404, 429, 503).items() if k != "200"},
                },
            }
        },
        "/v1/overview": {
            "get": {
                "summary": "The call history's overview over a range of ended calls: calls per hour or day, the "
                "ended_reason mix, cost per UTC day (model, transcription, analysis), ring-to-answer p50/p95, "
                "average handle time, transfer and success rates",
                "parameters": [
                    {"name": "since", "in": "query", "required": False, "schema": _TIME,
                     "description": "default: 24 hours before until"},
                    {"name": "until", "in": "query", "required": False, "schema": _TIME, "description": "default: now"},
                    {"name": "bucket", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(history.BUCKETS), "default": "hour"}},
                ],
                "responses": _responses(200, _OVERVIEW, 400, 401, 404, 429, 503),
            }
        },
        "/v1/calls/{call_id}": {
            "get": {
                "summary": "One call's full record: the end-of-call report document with its analysis (null when "
                "none) for a finished call (for a live call of this replica, the transcript so far; for a live call "
                "of another replica, its summary)",
                "parameters": [_CALL_ID],
                "responses": _responses(200, {"type": "object", "required": ["call_id"]}, 401, 404, 429, 503),
            }
        },
        "/v1/calls/{call_id}/reveal": {
            "post": {
                "summary": "The call's numbers unmasked, for an operator who asks (the reveal is logged as "
                "history.caller_revealed, without the number)",
                "parameters": [_CALL_ID],
                "responses": _responses(
                    200,
                    {"type": "object", "required": ["call_id", "caller", "dialed"], "properties": {
                        "call_id": {"type": "string"}, "caller": _NULLABLE_TEXT, "dialed": _NULLABLE_TEXT}},
                    401, 403, 404, 429, 503,
                ),
            }
        },
        "/v1/calls/{call_id}/hangup": {
            "post": {
                "summary": "End a live call, whichever replica owns it: a spoken goodbye then hangup, or at once with "
                "now=true",
                "parameters": [
                    _CALL_ID,
                    {"name": "now", "in": "query", "required": False, "schema": {"type": "boolean"}},
                ],
                "responses": _responses(
                    202, {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
                    401, 403, 404, 409, 422, 429, 503,
                ),
            }
        },
        "/v1/calls/{call_id}/transfer": {
            "post": {
                "summary": "Transfer a live call, whichever replica owns it, to an allow-listed target of its profile",
                "parameters": [_CALL_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["target"], "properties": {"target": {"type": "string"}},
                    }}},
                },
                "responses": _responses(
                    202, {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
                    401, 403, 404, 409, 422, 429, 503,
                ),
            }
        },
        **{f"/v1/calls/{{call_id}}/{kind}": _control_path(kind) for kind in control.KINDS},
        "/v1/outbound": {
            "post": {
                "summary": "Place an outbound call through Twilio's Calls API with a profile and its variables "
                "(404 when Twilio is not configured; 422 names what to fix, Twilio's refusal with twilio_code; 502: "
                "Twilio failed, ambiguous=true when the call may have been placed all the same)",
                "parameters": [{
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    "description": "the same key with the same request places nothing more (200, replayed=true)",
                }],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _OUTBOUND_REQUEST}}},
                "responses": {
                    **_responses(201, _OUTBOUND, 401, 403, 404, 422, 429, 502, 503),
                    "200": {"description": "already placed with this Idempotency-Key",
                            "content": {"application/json": {"schema": _OUTBOUND}}},
                },
            }
        },
        "/v1/outbound/{id}": {
            "get": {
                "summary": "An outbound call: the request, Twilio's status callbacks, and the OpenAI call it became",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": _responses(200, _OUTBOUND, 401, 404, 429, 503),
            }
        },
        "/v1/outbound/{id}/cancel": {
            "post": {
                "summary": "Stop an outbound call that is still queued or ringing (Twilio's Status=canceled); it is "
                "then reported as canceled by its status callback. 409 once answered or over (hang it up instead)",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": _responses(
                    202, {**_OUTBOUND, "properties": {**_OUTBOUND_PROPERTIES, "cancel": {"const": "requested"}}},
                    401, 403, 404, 409, 429, 502, 503,
                ),
            }
        },
        "/v1/outbound/batches": {
            "post": {
                "summary": "Queue a batch of outbound calls: JSON, or a CSV upload (Content-Type: text/csv; header row "
                "to,[timezone,]variables...; the settings as query parameters profile, from, calls_per_second, "
                "max_in_flight, hours_start, hours_end, timezone, retries_no_answer, retries_busy, retry_delay_s). "
                "Each bad row is reported by number (rejected) and the good ones queued; 422 with no good row",
                "parameters": [{
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    "description": "the same key with the same request makes nothing more (200, replayed=true)",
                }],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _BATCH_REQUEST},
                    "text/csv": {"schema": {"type": "string"}},
                }},
                "responses": {
                    **_responses(201, _BATCH, 401, 403, 404, 413, 429, 503),
                    "200": {"description": "already made with this Idempotency-Key",
                            "content": {"application/json": {"schema": _BATCH}}},
                    "422": {"description": "what to fix (and each row's error when no row can be called)",
                            "content": {"application/json": {"schema": _BATCH_ERROR}}},
                },
            },
            "get": {
                "summary": "The newest batches, each with its progress (the console's batch panel)",
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}}],
                "responses": _responses(200, {"type": "object", "required": ["batches"], "properties": {
                    "batches": {"type": "array", "items": _BATCH}}}, 401, 404, 422, 429, 503),
            },
        },
        "/v1/outbound/batches/{id}": {
            "get": {
                "summary": "A batch's progress: its rows by state and by outcome",
                "parameters": [_BATCH_ID],
                "responses": _responses(200, _BATCH, 401, 404, 429, 503),
            }
        },
        "/v1/outbound/batches/{id}/pause": _batch_action("pause", "Pause a batch: no new calls until resumed"),
        "/v1/outbound/batches/{id}/resume": _batch_action("resume", "Resume a paused batch"),
        "/v1/outbound/batches/{id}/cancel": _batch_action(
            "cancel", "Cancel a batch: its queued rows are canceled; calls already placed end as they end"
        ),
        "/twilio/voice": _twilio_webhook(
            "A Twilio number's voice webhook (A call comes in): TwiML bridging the call into OpenAI's SIP endpoint",
            {"application/xml": {"schema": {"type": "string"}}},
        ),
        "/twilio/status": _twilio_webhook(
            "Status and answering-machine callbacks of Twilio calls (the StatusCallback of calls placed here)",
            {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}}},
        ),
        "/twilio/recording": _twilio_webhook(
            "Recording callbacks of the calls a profile records (RecordingStatusCallback): the recording goes on the "
            "call's report, or out as a late call.recording event when the report already went",
            {"application/json": {"schema": {"type": "object", "properties": {
                "status": {"type": "string"}, "late": {"type": "boolean"}}}}},
        ),
        "/twilio/parked": _parked_webhook(),
    },
}

