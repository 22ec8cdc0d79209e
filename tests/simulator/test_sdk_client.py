"""A client that is not ours runs against the simulator (issue 15): the ``openai`` SDK itself answers a simulated
call — it verifies the webhook with ``client.webhooks.unwrap``, accepts with ``client.realtime.calls.accept``,
attaches the sideband with ``client.realtime.connect(call_id=…)``, greets, answers a function call and hangs up
with ``client.realtime.calls.hangup``. The simulator does nothing special for it: the SDK only gets
``base_url=<simulator>/v1`` and the API key. The referee judges the SDK's own client events and REST bodies too."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from openai.types.realtime import RealtimeAudioConfigParam, RealtimeFunctionToolParam, RealtimeServerEvent
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sip_controller.service.loopback import serve
from sip_controller.simulator import (
    CallSpec,
    Expectation,
    Simulator,
    Step,
    ToolCall,
    check_expectations,
    new_webhook_secret,
)

pytestmark = [pytest.mark.anyio, pytest.mark.sdk_referee(clients=True)]

SCALE = 0.05
KEY = "sk-sim-sdk-client"
AUDIO: RealtimeAudioConfigParam = {
    "input": {"format": {"type": "audio/pcmu"}},
    "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
}
ORDER_TOOL: RealtimeFunctionToolParam = {
    "type": "function",
    "name": "order_status",
    "description": "Look up an order.",
    "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
}


@dataclass
class Inbox:
    """A plain webhook endpoint: it keeps each delivery (raw body and headers) for the SDK to verify."""

    deliveries: asyncio.Queue[tuple[bytes, dict[str, str]]] = field(default_factory=asyncio.Queue)

    async def handle(self, request: Request) -> Response:
        await self.deliveries.put((await request.body(), dict(request.headers)))
        return Response(status_code=200)

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hooks", self.handle, methods=["POST"])])


@dataclass
class Setup:
    sim: Simulator
    inbox: Inbox
    client: openai.AsyncOpenAI
    secret: str


@contextlib.asynccontextmanager
async def sdk_against_simulator() -> AsyncIterator[Setup]:
    secret = new_webhook_secret()
    inbox = Inbox()
    async with (
        serve(inbox.app) as hooks,
        Simulator(webhook_secret=secret, webhook_url=f"{hooks.url}/hooks", api_key=KEY, time_scale=SCALE) as sim,
    ):
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key=KEY, webhook_secret=secret, max_retries=0)
        try:
            yield Setup(sim, inbox, client, secret)
        finally:
            await client.close()
        assert sim.task_errors == []


async def until(
    connection: Any, kind: str, seen: list[RealtimeServerEvent], timeout: float = 5.0
) -> RealtimeServerEvent:
    """Read the SDK connection's parsed events (appended to ``seen``) up to the first of type ``kind``."""
    async with asyncio.timeout(timeout):
        async for event in connection:
            seen.append(event)
            if event.type == "error":
                raise AssertionError(f"the simulator refused an SDK client event: {event.error}")
            if event.type == kind:
                return event  # type: ignore[no-any-return]
    raise AssertionError(f"the sideband closed before {kind}")


async def test_the_openai_sdk_answers_greets_runs_a_function_and_hangs_up() -> None:
    spec = CallSpec(
        name="sdk-client",
        greeting_wait=10,
        max_call_seconds=200,
        steps=[
            Step(
                say="Where is my order A17?",
                tool=ToolCall(name="order_status", arguments={"order": "A17"}),
                then="Your order A17 ships today.",
            )
        ],
        expect=Expectation(
            ended_by="agent", accept_count=1, greeting_heard=True, hangup_after_audio=True, audio_state="clean"
        ),
    )
    async with sdk_against_simulator() as setup:
        client = setup.client
        placed = await setup.sim.place_call(spec)
        body, headers = await asyncio.wait_for(setup.inbox.deliveries.get(), 5)

        event = client.webhooks.unwrap(body.decode(), headers)  # the SDK verifies the signature itself
        assert isinstance(event, RealtimeCallIncomingWebhookEvent)
        assert event.type == "realtime.call.incoming"
        call_id = event.data.call_id
        assert call_id == placed.call_id
        assert any(h.name == "From" for h in event.data.sip_headers)

        await client.realtime.calls.accept(
            call_id,
            type="realtime",
            model="gpt-realtime",
            instructions="You answer the phone for a shop. Be brief.",
            audio=AUDIO,
            tools=[ORDER_TOOL],
        )
        seen: list[RealtimeServerEvent] = []
        async with client.realtime.connect(call_id=call_id) as connection:
            created = await until(connection, "session.created", seen)
            assert created.type == "session.created"

            await connection.response.create(response={"instructions": 'Greet the caller: "Hello, shop here."'})
            await until(connection, "output_audio_buffer.stopped", seen)

            arguments = await until(connection, "response.function_call_arguments.done", seen)
            assert arguments.type == "response.function_call_arguments.done"
            assert arguments.name == "order_status"
            assert json.loads(arguments.arguments) == {"order": "A17"}
            await until(connection, "response.done", seen)

            await connection.conversation.item.create(
                item={
                    "type": "function_call_output",
                    "call_id": arguments.call_id,
                    "output": json.dumps({"status": "ships today"}),
                }
            )
            await until(connection, "conversation.item.done", seen)
            await connection.response.create()
            await until(connection, "output_audio_buffer.stopped", seen)

            await client.realtime.calls.hangup(call_id)
            ended = await setup.sim.wait_ended(call_id, 5)

    assert check_expectations(ended) == []
    assert ended.accept_count == 1
    transcripts = [e.transcript for e in seen if e.type == "response.output_audio_transcript.done"]
    assert transcripts == ["Hello, shop here.", "Your order A17 ships today."]
    # the SDK's own history helpers work from items: both assistant turns and the function call are there
    done_items = [e.item for e in seen if e.type == "conversation.item.done"]
    kinds = [(item.type, getattr(item, "role", None)) for item in done_items]
    assert kinds == [
        ("message", "assistant"),
        ("message", "user"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "assistant"),
    ]
    sent = [e.type for e in ended.client_events]
    assert sent == ["response.create", "conversation.item.create", "response.create"]
