"""``sipctl simulator``: the simulator on its own, for any client to develop and test against.

It serves OpenAI's side (``/v1/realtime/calls/{id}/accept|reject|refer|hangup`` and the ``/v1/realtime``
sideband) and signs its webhooks to one URL, as :class:`~sip_controller.simulator.Simulator` does in the tests;
beside it, a small control API places scripted calls and tells what happened to them:

- ``POST /_sim/calls`` with ``{"call": {…}}`` (one call in the scenario file's shape, inline) or
  ``{"scenario": "path.yaml", "call": "name"}`` (a call of a scenario file; ``call`` may be left out when the
  file has one call): rings, delivers the webhook, answers ``201 {"call_id", "name", "url"}``.
- ``GET /_sim/calls``: every call placed, ``{"calls": [{"call_id", "name", "ended", "ended_by"}]}``.
- ``GET /_sim/calls/{call_id}``: the call's record (accept bodies, session, client events, responses,
  transcripts, hangups and refers, audio state, ``ended_by``, …), ``ended``, and ``problems``: its
  ``expect`` block checked once it has ended.

Bad input is answered ``400 {"error": {"message": …}}`` naming what to fix; an unknown call ``404``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from .core import Simulator
from .records import SimCall, check_expectations
from .scenario import CallSpec, ScenarioError, format_validation_error, load_scenario
from .webhook_sender import new_webhook_secret

CONTROL_PREFIX = "/_sim"
DEFAULT_API_KEY = "sk-sim-local"


class BadRequest(ValueError):
    """Control-API input that cannot be used; the message says what to fix."""


def _problem(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is not a webhook signing secret (``whsec_`` and base64 key bytes), or None."""
    if not secret.startswith("whsec_"):
        return "it must start with whsec_"
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return "after whsec_ it must be base64"
    if len(key) < 16:
        return f"its key is {len(key)} bytes, at least 16 are needed"
    return None


def call_from_request(data: object, base_dir: Path) -> CallSpec:
    """The call a ``POST /_sim/calls`` body asks for; raises :class:`BadRequest`."""
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object: {"call": {...}} or {"scenario": "file.yaml", "call": "name"}')
    unknown = sorted(set(data) - {"call", "scenario"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}: the body has call and scenario")
    call = data.get("call")
    if "scenario" not in data:
        if not isinstance(call, dict):
            raise BadRequest(
                "call: expected one call as an object (the scenario file's call shape), or give "
                '"scenario": "file.yaml" with "call": "<name>"'
            )
        spec = {"name": "call", **call}
        try:
            return CallSpec.model_validate(spec)
        except ValidationError as exc:
            raise BadRequest(
                format_validation_error(exc, spec, "call").replace("invalid scenario", "invalid call")
            ) from None
    path = data["scenario"]
    if not isinstance(path, str) or not path:
        raise BadRequest("scenario: expected the path of a scenario file")
    if call is not None and not isinstance(call, str):
        raise BadRequest("call: with scenario, expected the name of one of its calls")
    file = Path(path) if Path(path).is_absolute() else base_dir / path
    try:
        scenario = load_scenario(file)
    except ScenarioError as exc:
        raise BadRequest(str(exc)) from None
    names = [c.name for c in scenario.calls]
    if call is None:
        if len(scenario.calls) != 1:
            raise BadRequest(f"call: {path} has {len(names)} calls, name one of them: {', '.join(names)}")
        return scenario.calls[0]
    for spec_ in scenario.calls:
        if spec_.name == call:
            return spec_
    raise BadRequest(f"call: {path} has no call named {call!r} (its calls: {', '.join(names)})")


def call_view(call: SimCall) -> dict[str, Any]:
    """``GET /_sim/calls/{id}``: the record as JSON, whether it ended, and its expectations checked."""
    view = call.summary()
    view["ended"] = call.is_ended
    view["problems"] = check_expectations(call) if call.is_ended else []
    return view


class ControlApi:
    """The ``/_sim`` routes of one :class:`Simulator` (set :attr:`sim` before serving)."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.sim: Simulator | None = None
        self.base_dir = base_dir or Path.cwd()

    def _simulator(self) -> Simulator:
        if self.sim is None:  # pragma: no cover - set before the server starts
            raise RuntimeError("ControlApi.sim is not set")
        return self.sim

    async def place(self, request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except ValueError:
            return _problem("the body is not JSON")
        try:
            spec = call_from_request(data, self.base_dir)
        except BadRequest as exc:
            return _problem(str(exc))
        call = await self._simulator().place_call(spec)
        url = f"{CONTROL_PREFIX}/calls/{call.call_id}"
        return JSONResponse(
            {"call_id": call.call_id, "name": call.name, "url": url, "delivery_statuses": call.delivery_statuses},
            status_code=201,
            headers={"location": url},
        )

    async def list_calls(self, request: Request) -> JSONResponse:
        calls = [
            {"call_id": c.call_id, "name": c.name, "ended": c.is_ended, "ended_by": c.ended_by}
            for c in self._simulator().calls.values()
        ]
        return JSONResponse({"calls": calls})

    async def show(self, request: Request) -> JSONResponse:
        call_id = request.path_params["call_id"]
        call = self._simulator().calls.get(call_id)
        if call is None:
            return _problem(f"no call {call_id!r} was placed here", status=404)
        return JSONResponse(call_view(call))

    @property
    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{CONTROL_PREFIX}/calls", self.place, methods=["POST"]),
            Route(f"{CONTROL_PREFIX}/calls", self.list_calls, methods=["GET"]),
            Route(f"{CONTROL_PREFIX}/calls/{{call_id}}", self.show, methods=["GET"]),
        ]


@contextlib.asynccontextmanager
async def standalone(
    *,
    webhook_url: str,
    secret: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEFAULT_API_KEY,
    time_scale: float = 1.0,
    base_dir: Path | None = None,
) -> AsyncIterator[Simulator]:
    """A :class:`Simulator` serving OpenAI's side and the control API on ``host:port``."""
    control = ControlApi(base_dir)
    sim = Simulator(
        webhook_secret=secret or new_webhook_secret(),
        webhook_url=webhook_url,
        api_key=api_key,
        time_scale=time_scale,
        host=host,
        port=port,
        routes=control.routes,
    )
    control.sim = sim
    async with sim:
        yield sim


def banner(sim: Simulator, *, generated_secret: bool, out: TextIO) -> None:
    """What a client needs, one ``NAME=value`` a line (the lines a test or a script reads)."""
    origin = sim.base_url.removesuffix("/v1")
    print("sipctl simulator: OpenAI's Realtime SIP side, until Ctrl-C", file=out)
    print(f"OPENAI_BASE_URL={sim.base_url}", file=out)
    print(f"OPENAI_API_KEY={sim.api_key}", file=out)
    note = "  (generated: give it to the client)" if generated_secret else ""
    print(f"OPENAI_WEBHOOK_SECRET={sim.webhook_secret}{note}", file=out)
    print(f"WEBHOOK_URL={sim.webhook_url}", file=out)
    print(f"CONTROL_API={origin}{CONTROL_PREFIX}/calls", file=out)
    out.flush()


async def serve_until(stop: asyncio.Event, *, out: TextIO, **options: Any) -> None:
    """``sipctl simulator``: serve until ``stop`` is set (SIGINT/SIGTERM), then hang up every call and stop."""
    generated = options.get("secret") is None
    async with standalone(**options) as sim:
        banner(sim, generated_secret=generated, out=out)
        await stop.wait()
        print(f"sipctl simulator: stopping ({len(sim.calls)} calls placed)", file=out)
        out.flush()
