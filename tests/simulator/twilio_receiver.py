"""A tiny stand-in controller for the Twilio stand-in's tests: it receives Twilio's signed requests (checked with
the ``twilio`` package's own ``RequestValidator``), answers the voice webhook with the TwiML a test sets, and
plays OpenAI's client side (accept, optionally speak on the sideband, hang up) for each bridged call."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from sip_controller.service.loopback import serve
from sip_controller.simulator import Simulator, new_webhook_secret
from sip_controller.simulator.twilio_side import TwilioAccount

PCMU = {"type": "audio/pcmu"}
ACCEPT_BODY: dict[str, Any] = {
    "type": "realtime",
    "model": "gpt-realtime-2.1",
    "instructions": "You call on behalf of a clinic. Be brief.",
    "audio": {"input": {"format": PCMU}, "output": {"format": PCMU, "voice": "marin"}},
}


@dataclass
class Received:
    """One request from the Twilio stand-in: its route kind, form (or query) fields, and whether it was signed."""

    kind: str
    url: str
    params: dict[str, str]
    signed: bool
    headers: dict[str, str]


OpenAiPlay = Callable[["TinyController", str], Coroutine[Any, Any, None]]


async def accept_only(ctl: TinyController, call_id: str) -> None:
    await ctl.accept(call_id)


def accept_then_hang_up(after: float) -> OpenAiPlay:
    async def play(ctl: TinyController, call_id: str) -> None:
        await ctl.accept(call_id)
        await asyncio.sleep(after)
        await ctl.http.post(f"/realtime/calls/{call_id}/hangup")

    return play


def accept_say_hang_up(line: str) -> OpenAiPlay:
    """Accept, say ``line`` on the sideband, wait for its audio to end, hang up."""

    async def play(ctl: TinyController, call_id: str) -> None:
        await ctl.accept(call_id)
        url = ctl.sim.base_url.replace("http://", "ws://") + f"/realtime?call_id={call_id}"
        async with asyncio.timeout(10.0), connect(url, additional_headers=ctl.auth) as ws:
            create = {"type": "response.create", "response": {"instructions": f'Say exactly: "{line}"'}}
            await ws.send(json.dumps(create))
            async for raw in ws:
                if json.loads(raw).get("type") == "output_audio_buffer.stopped":
                    break
        await ctl.http.post(f"/realtime/calls/{call_id}/hangup")

    return play


@dataclass
class TinyController:
    sim: Simulator
    account: TwilioAccount
    http: httpx.AsyncClient
    url: str = ""
    twiml: str | Callable[[dict[str, str]], str] = "<Response><Hangup/></Response>"
    #: what ``/twilio/parked`` (a parked call's ``<Gather>`` action, #16) answers; None: as ``twiml``
    parked: str | Callable[[dict[str, str]], str] | None = None
    voice_status: int = 200
    openai: OpenAiPlay = accept_only
    received: list[Received] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.sim.api_key}"}

    def of(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.kind == kind]

    async def accept(self, call_id: str) -> None:
        response = await self.http.post(f"/realtime/calls/{call_id}/accept", json=ACCEPT_BODY)
        assert response.status_code == 200, response.text

    async def twilio(self, request: Request) -> Response:
        body = (await request.body()).decode()
        url = f"{self.url}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        params = dict(parse_qsl(body, keep_blank_values=True)) if request.method == "POST" else {}
        signature = request.headers.get("x-twilio-signature", "")
        signed = bool(RequestValidator(self.account.auth_token).validate(url, params, signature))
        shown = params if request.method == "POST" else dict(parse_qsl(request.url.query))
        kind = request.path_params["kind"]
        self.received.append(Received(kind, url, shown, signed, dict(request.headers)))
        if kind in ("voice", "action", "refer", "redirect", "parked"):
            if kind == "voice" and self.voice_status != 200:
                return Response(status_code=self.voice_status)
            answer = self.parked if kind == "parked" and self.parked is not None else self.twiml
            twiml = answer(shown) if callable(answer) else answer
            return Response(twiml, media_type="application/xml")
        return Response(status_code=204)

    async def openai_webhook(self, request: Request) -> Response:
        body = await request.body()
        event = Webhook(self.sim.webhook_secret).verify(body, dict(request.headers))
        self.webhooks.append(event)
        task = asyncio.create_task(self.openai(self, event["data"]["call_id"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return Response(status_code=200)

    def headers_of(self, call_id: str) -> list[tuple[str, str]]:
        for event in self.webhooks:
            if event["data"]["call_id"] == call_id:
                return [(h["name"], h["value"]) for h in event["data"]["sip_headers"]]
        raise KeyError(call_id)


@contextlib.asynccontextmanager
async def twilio_stack(
    *, time_scale: float = 0.02, account: TwilioAccount | None = None
) -> AsyncIterator[TinyController]:
    """The simulator with its Twilio stand-in, and the tiny controller on loopback wired to both."""
    account = account or TwilioAccount(api_keys={"SK" + "0" * 32: "key-secret"})
    async with (
        Simulator(webhook_secret=new_webhook_secret(), time_scale=time_scale, twilio=account) as sim,
        httpx.AsyncClient(timeout=10.0) as http,
    ):
        http.base_url = httpx.URL(sim.base_url)
        http.headers["Authorization"] = f"Bearer {sim.api_key}"
        ctl = TinyController(sim=sim, account=account, http=http)
        app = Starlette(
            routes=[
                Route("/twilio/{kind}", ctl.twilio, methods=["GET", "POST"]),
                Route("/webhooks/openai", ctl.openai_webhook, methods=["POST"]),
            ]
        )
        async with serve(app) as server:
            ctl.url = server.url
            sim.webhook_url = f"{server.url}/webhooks/openai"
            try:
                yield ctl
            finally:
                for task in list(ctl.tasks):
                    task.cancel()
                await asyncio.gather(*ctl.tasks, return_exceptions=True)
            assert sim.task_errors == []
