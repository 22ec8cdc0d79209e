"""The simulator's HTTP face: OpenAI's four SIP call endpoints and the sideband WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from .errors import (
    ApiError,
    bad_api_key,
    call_not_found,
    invalid_json,
    invalid_type,
    invalid_value,
    missing_parameter,
    out_of_range,
    unknown_parameter,
)
from .faults import Endpoint
from .model import CallRuntime, SimContext
from .responses import ResponsesLog, responses_route
from .rules import validate_session

_TARGET_URI = re.compile(r"^(tel:\+[1-9][0-9]{1,14}|sips?:[^\s@]+@[^\s@]+|sips?:\+?[0-9]{3,15})$")


def _error(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _injected(ctx: SimContext, runtime: CallRuntime, endpoint: Endpoint) -> JSONResponse | None:
    """Fault injection for one request: the added latency, then an injected error response or ``None``."""
    delay = runtime.faults.latency(endpoint)
    if delay > 0:
        runtime.faults.note(ctx.now(), f"{endpoint}_latency", seconds=round(ctx.scaled(delay), 6))
        await asyncio.sleep(ctx.scaled(delay))
    failure = runtime.faults.error(endpoint, ctx.now())
    if failure is None:
        return None
    error, headers = failure
    return _error(error, headers)


def _check_key(ctx: SimContext, authorization: str | None) -> ApiError | None:
    scheme, _, provided = (authorization or "").partition(" ")
    provided = provided.strip()
    if scheme.lower() != "bearer" or not provided:
        return bad_api_key(None)
    if not hmac.compare_digest(provided.encode(), ctx.api_key.encode()):
        return bad_api_key(provided)
    return None


async def _read_json(request: Request, *, optional: bool = False) -> tuple[Any, ApiError | None]:
    raw = await request.body()
    if optional and not raw.strip():
        return None, None
    try:
        return json.loads(raw), None
    except ValueError:
        return raw.decode("utf-8", "replace"), invalid_json()


def create_app(ctx: SimContext) -> Starlette:
    """One Starlette app serving ``/v1/realtime/calls/{call_id}/*`` and ``/v1/realtime`` (WebSocket)."""

    def live_call(request: Request) -> tuple[CallRuntime | None, JSONResponse | None]:
        auth_error = _check_key(ctx, request.headers.get("authorization"))
        if auth_error is not None:
            return None, _error(auth_error)
        call_id = request.path_params["call_id"]
        runtime = ctx.runtimes.get(call_id)
        if runtime is None or runtime.is_ended:
            if runtime is not None and request.url.path.endswith("/accept"):
                runtime.rec.accept_attempts += 1
                runtime.rec.late_accepts += 1
            return None, _error(call_not_found(call_id))
        return runtime, None

    async def accept(request: Request) -> Response:
        runtime, failure = live_call(request)
        if runtime is None:
            assert failure is not None
            return failure
        runtime.rec.accept_attempts += 1
        gives_up = runtime.faults.faults.hangup_while_ringing
        if gives_up is not None and not runtime.accepted.is_set():
            # the caller hangs up while this accept is in flight: it loses the race
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ctx.scaled(gives_up) + 1.0):
                    await runtime.rec.ended.wait()
            runtime.rec.late_accepts += 1
            return _error(call_not_found(runtime.rec.call_id))
        injected = await _injected(ctx, runtime, "accept")
        if injected is not None:
            return injected
        race = runtime.faults.accept_race(runtime.rec.call_id, ctx.now())
        if race is not None:
            return _error(race)
        if runtime.is_ended:
            runtime.rec.late_accepts += 1
            return _error(call_not_found(runtime.rec.call_id))
        body, error = await _read_json(request)
        ctx.observe("rest_request", runtime.rec.call_id, "accept", body)
        runtime.rec.accept_bodies.append(body)
        if error is None:
            error = validate_session(body, reject_vad_tuning=ctx.reject_vad_tuning, allow_flat_voice=True)
        if error is not None:
            runtime.rec.accept_errors.append(error.body())
            return _error(error)
        if runtime.is_ended:  # the caller gave up while the body was read
            return _error(call_not_found(runtime.rec.call_id))
        if runtime.accepted.is_set():  # as OpenAI answers a second accept of the same call
            runtime.rec.accept_count += 1
            return _error(ApiError(400, "This call has already been accepted.", code="call_already_accepted"))
        runtime.accept(body)
        if runtime.faults.answer_lost(ctx.now()):
            # the accept took effect, but its answer never reaches the client: held until the client gives up
            for _ in range(int(ctx.scaled(runtime.faults.faults.accept_answer_hold) / 0.01) + 1):
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.01)
        return Response(status_code=200)

    async def reject(request: Request) -> Response:
        runtime, failure = live_call(request)
        if runtime is None:
            assert failure is not None
            return failure
        injected = await _injected(ctx, runtime, "reject")
        if injected is not None:
            return injected
        if runtime.is_ended:
            return _error(call_not_found(runtime.rec.call_id))
        body, error = await _read_json(request, optional=True)
        ctx.observe("rest_request", runtime.rec.call_id, "reject", body)
        status_code = 603
        if error is None and body is not None:
            if not isinstance(body, dict):
                error = invalid_type("body", "an object", body)
            elif extra := sorted(set(body) - {"status_code"}):
                error = unknown_parameter(extra[0])
            elif "status_code" in body:
                code = body["status_code"]
                if isinstance(code, bool) or not isinstance(code, int):
                    error = invalid_type("status_code", "an integer", code)
                elif not 300 <= code <= 699:
                    error = out_of_range("status_code", code, 300, 699)
                else:
                    status_code = code
        if error is not None:
            return _error(error)
        await runtime.reject(status_code)
        return Response(status_code=200)

    async def refer(request: Request) -> Response:
        runtime, failure = live_call(request)
        if runtime is None:
            assert failure is not None
            return failure
        injected = await _injected(ctx, runtime, "refer")
        if injected is not None:
            return injected
        if runtime.is_ended:
            return _error(call_not_found(runtime.rec.call_id))
        body, error = await _read_json(request)
        ctx.observe("rest_request", runtime.rec.call_id, "refer", body)
        if error is None:
            if not isinstance(body, dict):
                error = invalid_type("body", "an object", body)
            elif "target_uri" not in body:
                error = missing_parameter("target_uri")
            elif not isinstance(body["target_uri"], str):
                error = invalid_type("target_uri", "a string", body["target_uri"])
            elif not _TARGET_URI.match(body["target_uri"]):
                error = invalid_value("target_uri", body["target_uri"])
            elif not runtime.accepted.is_set():
                error = ApiError(400, "The call has not been accepted.", code="call_not_accepted")
        if error is not None:
            return _error(error)
        failed = runtime.refer(body["target_uri"])
        return _error(failed) if failed is not None else Response(status_code=200)

    async def hangup(request: Request) -> Response:
        runtime, failure = live_call(request)
        if runtime is None:
            assert failure is not None
            return failure
        injected = await _injected(ctx, runtime, "hangup")
        if injected is not None:
            return injected
        if runtime.is_ended:
            return _error(call_not_found(runtime.rec.call_id))
        body, _ = await _read_json(request, optional=True)
        ctx.observe("rest_request", runtime.rec.call_id, "hangup", body)
        await runtime.agent_hangup()
        return Response(status_code=200)

    async def sideband(ws: WebSocket) -> None:
        auth_error = _check_key(ctx, ws.headers.get("authorization"))
        call_id = ws.query_params.get("call_id")
        if auth_error is not None:
            await ws.send_denial_response(_error(auth_error))
            return
        if not call_id:
            await ws.send_denial_response(_error(missing_parameter("call_id")))
            return
        runtime = ctx.runtimes.get(call_id)
        if runtime is None or runtime.is_ended or not runtime.accepted.is_set():
            await ws.send_denial_response(_error(call_not_found(call_id)))
            return
        injected = await _injected(ctx, runtime, "sideband")
        if injected is not None:
            await ws.send_denial_response(injected)
            return
        if runtime.is_ended:
            await ws.send_denial_response(_error(call_not_found(call_id)))
            return
        if runtime.has_socket:
            await ws.send_denial_response(
                _error(
                    ApiError(409, "A sideband is already attached to this call.", code="sideband_attached")
                )
            )
            return
        await ws.accept()
        await runtime.attach(ws)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is not None:
                    await runtime.on_client_text(text)
                else:
                    await runtime.on_client_bytes()
        finally:
            runtime.detach(ws)

    routes = [
        Route("/v1/realtime/calls/{call_id}/accept", accept, methods=["POST"]),
        Route("/v1/realtime/calls/{call_id}/reject", reject, methods=["POST"]),
        Route("/v1/realtime/calls/{call_id}/refer", refer, methods=["POST"]),
        Route("/v1/realtime/calls/{call_id}/hangup", hangup, methods=["POST"]),
        WebSocketRoute("/v1/realtime", sideband),
    ]
    # the Responses API for the post-call analysis (#17); what it saw is app.state.responses
    seen = ResponsesLog()
    routes.append(responses_route(ctx, seen))
    app = Starlette(routes=routes)
    app.state.responses = seen
    return app
