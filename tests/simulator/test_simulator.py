"""The simulator on real loopback sockets: REST checks, sideband, scripted callers, webhooks.

Each test drives the simulator the way a controller would (httpx + a websockets client) and receives
its webhooks on a throwaway Starlette app that verifies the Standard Webhooks signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from sip_controller.service.loopback import bind_socket, serve
from sip_controller.simulator import (
    CallSpec,
    Expectation,
    SimCall,
    Simulator,
    Step,
    ToolCall,
    check_expectations,
    load_scenario,
    new_webhook_secret,
)

pytestmark = pytest.mark.anyio

SCALE = 0.05
KEY = "sk-sim-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
PCMU = {"type": "audio/pcmu"}
END_CALL_TOOL = {
    "type": "function",
    "name": "end_call",
    "description": "End the call.",
    "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
}
GOOD_BODY: dict[str, Any] = {
    "type": "realtime",
    "model": "gpt-realtime-2.1",
    "instructions": "You answer the phone for a bakery. Be brief.",
    "audio": {
        "input": {"format": PCMU, "transcription": {"model": "gpt-4o-mini-transcribe"}},
        "output": {"format": PCMU, "voice": "marin"},
    },
    "tools": [END_CALL_TOOL],
}


def assistant_line(*, deltas: int = 1, plays: bool = True, audio: bool = True) -> list[str]:
    """What OpenAI sends for one assistant message, in its order (one transcript delta per six words)."""
    kind = "response.output_audio_transcript" if audio else "response.output_text"
    return [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        *(["output_audio_buffer.started"] if plays else []),
        *[f"{kind}.delta"] * deltas,
        f"{kind}.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]


#: OpenAI's order for a function call: added, argument deltas, arguments done, output item done, response done
FUNCTION_CALL = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]

#: a caller turn under server VAD with transcription on
CALLER_TURN = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
]

DEMO = Path(__file__).resolve().parents[2] / "sip_controller" / "simulator" / "scenarios" / "demo.yaml"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- a throwaway webhook receiver and the running pieces --------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]


@dataclass
class Receiver:
    """Verifies each delivery's signature, records it, answers with the queued statuses, then 200."""

    secret: str
    statuses: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    rejected: int = 0

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except Exception:
            self.rejected += 1
            return Response(status_code=400)
        self.deliveries.append(Delivery(headers, body, payload))
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/webhooks/openai", self.handle, methods=["POST"])])


@dataclass
class Env:
    sim: Simulator
    receiver: Receiver
    http: httpx.AsyncClient

    def ws_url(self, call_id: str) -> str:
        return self.sim.base_url.replace("http://", "ws://") + f"/realtime?call_id={call_id}"

    def sideband(self, call_id: str, key: str = KEY) -> Any:
        return connect(self.ws_url(call_id), additional_headers={"Authorization": f"Bearer {key}"})

    async def accept(self, call: SimCall, body: Any = None) -> httpx.Response:
        return await self.http.post(
            f"/realtime/calls/{call.call_id}/accept", json=GOOD_BODY if body is None else body
        )


@contextlib.asynccontextmanager
async def running(
    *,
    statuses: tuple[int, ...] = (),
    webhook_url: str | None = None,
    time_scale: float = SCALE,
    **kwargs: Any,
) -> AsyncIterator[Env]:
    secret = new_webhook_secret()
    receiver = Receiver(secret, list(statuses))
    async with serve(receiver.app) as hooks:
        url = webhook_url or f"{hooks.url}/webhooks/openai"
        async with Simulator(webhook_secret=secret, webhook_url=url, time_scale=time_scale, **kwargs) as sim:
            async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH, timeout=5.0) as http:
                yield Env(sim, receiver, http)
            assert sim.task_errors == []
    assert receiver.rejected == 0


async def next_event(ws: ClientConnection, timeout: float = 2.0) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


async def events_until(ws: ClientConnection, kind: str, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Every event up to and including the first of type ``kind``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            seen.append(json.loads(await ws.recv()))
            if seen[-1]["type"] == kind:
                return seen


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


async def send(ws: ClientConnection, event: dict[str, Any]) -> None:
    await ws.send(json.dumps(event))


# ---- /accept validation and audio state ------------------------------------------------------------


BAD_ACCEPTS: list[tuple[str, Any, str, str | None]] = [
    ("beta temperature", {"type": "realtime", "temperature": 0.8}, "unknown_parameter", "temperature"),
    ("missing type", {"model": "gpt-realtime-2.1"}, "missing_required_parameter", "type"),
    ("wrong type", {"type": "transcription"}, "invalid_value", "type"),
    ("beta modalities", {"type": "realtime", "modalities": ["audio"]}, "unknown_parameter", "modalities"),
    (
        "beta input_audio_format",
        {"type": "realtime", "input_audio_format": "g711_ulaw"},
        "unknown_parameter",
        "input_audio_format",
    ),
    (
        "top-level turn_detection",
        {"type": "realtime", "turn_detection": None},
        "unknown_parameter",
        "turn_detection",
    ),
    (
        "null format",
        {"type": "realtime", "audio": {"input": {"format": None}}},
        "invalid_type",
        "audio.input.format",
    ),
    (
        "beta format name",
        {"type": "realtime", "audio": {"output": {"format": {"type": "g711_ulaw"}}}},
        "invalid_value",
        "audio.output.format.type",
    ),
    (
        "pcm at 8 kHz",
        {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 8000}}}},
        "invalid_value",
        "audio.output.format.rate",
    ),
    (
        "misspelt voice key",
        {"type": "realtime", "audio": {"output": {"voices": "marin"}}},
        "unknown_parameter",
        "audio.output.voices",
    ),
    (
        "VAD tuning on accept",
        {
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}},
        },
        "unknown_parameter",
        "audio.input.turn_detection.threshold",
    ),
    (
        "silence tuning on accept",
        {
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}},
        },
        "unknown_parameter",
        "audio.input.turn_detection.silence_duration_ms",
    ),
    (
        "hosted tool",
        {"type": "realtime", "tools": [{"type": "web_search"}]},
        "invalid_value",
        "tools[0].type",
    ),
    (
        "function without name",
        {"type": "realtime", "tools": [END_CALL_TOOL, {"type": "function", "description": "x"}]},
        "missing_required_parameter",
        "tools[1].name",
    ),
    (
        "strict function",
        {"type": "realtime", "tools": [{**END_CALL_TOOL, "strict": True}]},
        "unknown_parameter",
        "tools[0].strict",
    ),
    ("not an object", ["type", "realtime"], "invalid_type", "session"),
    (
        "beta format string",
        {"type": "realtime", "audio": {"input": {"format": "g711_ulaw"}}},
        "invalid_type",
        "audio.input.format",
    ),
    (
        "beta pcm16 format type",
        {"type": "realtime", "audio": {"input": {"format": {"type": "pcm16"}}}},
        "invalid_value",
        "audio.input.format.type",
    ),
    (
        "function name with a space",
        {"type": "realtime", "tools": [{**END_CALL_TOOL, "name": "end call"}]},
        "invalid_value",
        "tools[0].name",
    ),
    (
        "duplicate function name",
        {"type": "realtime", "tools": [END_CALL_TOOL, END_CALL_TOOL]},
        "invalid_value",
        "tools[1].name",
    ),
    (
        "tool_choice names a missing tool",
        {"type": "realtime", "tools": [END_CALL_TOOL], "tool_choice": {"type": "function", "name": "transfer"}},
        "invalid_value",
        "tool_choice",
    ),
    (
        "mcp without a server",
        {"type": "realtime", "tools": [{"type": "mcp", "server_label": "crm"}]},
        "missing_required_parameter",
        "tools[0].server_url",
    ),
]


async def test_accept_rejects_invalid_bodies_with_openai_errors() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="bad-accepts", greeting_wait=0))
        for label, body, code, param in BAD_ACCEPTS:
            response = await env.accept(call, body)
            assert response.status_code == 400, label
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error", label
            assert (error["code"], error["param"]) == (code, param), label
            assert isinstance(error["message"], str), label
            assert error["message"].endswith("."), label
        unknown = await env.accept(call, {"type": "realtime", "temperature": 0.8})
        assert unknown.json()["error"]["message"] == "Unknown parameter: 'temperature'."
        not_json = await env.http.post(f"/realtime/calls/{call.call_id}/accept", content=b"{not json")
        assert not_json.status_code == 400
        assert not_json.json()["error"]["type"] == "invalid_request_error"

        assert call.accept_count == 0
        assert call.accepted_at is None
        assert len(call.accept_errors) == len(BAD_ACCEPTS) + 2
        assert len(call.accept_bodies) == len(BAD_ACCEPTS) + 2
        # Nothing was accepted, so the sideband is refused; a good body then goes through.
        with pytest.raises(InvalidStatus) as denied:
            async with env.sideband(call.call_id):
                pass
        assert denied.value.response.status_code == 404
        assert (await env.accept(call)).status_code == 200
        assert call.accept_count == 1


async def test_accept_takes_every_ga_field() -> None:
    body = {
        **GOOD_BODY,
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": PCMU, "noise_reduction": {"type": "far_field"}},
            "output": {"format": PCMU, "voice": {"id": "voice_abc123"}, "speed": 0.25},
        },
        "tools": [
            END_CALL_TOOL,
            {"type": "mcp", "server_label": "crm", "connector_id": "connector_gmail"},
        ],
        "tool_choice": {"type": "function", "name": "end_call"},
        "max_output_tokens": 4096,
        "reasoning": {"effort": "minimal"},
        "parallel_tool_calls": True,
    }
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="ga-fields", greeting_wait=0))
        response = await env.accept(call, body)
        assert response.status_code == 200, response.text
        assert call.session["audio"]["output"]["voice"] == {"id": "voice_abc123"}
        assert call.session["parallel_tool_calls"] is True
        assert call.audio_state == "clean"


async def test_vad_tuning_accepted_on_accept_when_the_quirk_is_off() -> None:
    body = {
        "type": "realtime",
        "audio": {
            "input": {"turn_detection": {"type": "server_vad", "threshold": 0.7, "silence_duration_ms": 600}}
        },
    }
    async with running(reject_vad_tuning_on_accept=False) as env:
        call = await env.sim.place_call(CallSpec(name="vad", greeting_wait=0))
        assert (await env.accept(call, body)).status_code == 200
        assert call.session["audio"]["input"]["turn_detection"]["threshold"] == 0.7
        assert call.session["audio"]["input"]["turn_detection"]["prefix_padding_ms"] == 300  # merged default


async def test_flat_voice_is_accepted_then_the_call_breaks() -> None:
    body = {
        "type": "realtime",
        "voice": "marin",
        "audio": {"input": {"format": PCMU}, "output": {"format": PCMU}},
    }
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="flat-voice", greeting_wait=0.5))
        assert (await env.accept(call, body)).status_code == 200
        assert call.audio_state == "broken"
        assert "voice" not in call.session
        async with env.sideband(call.call_id) as ws:
            assert (await next_event(ws))["type"] == "session.created"
            error = await next_event(ws)
            assert error["type"] == "error"
            assert error["error"]["param"] == "voice"
            await send(ws, {"type": "response.create", "response": {"instructions": "Hello there"}})
            events = await events_until(ws, "response.done")
            assert types(events) == assistant_line(plays=False)
            with pytest.raises(TimeoutError):
                await next_event(ws, timeout=0.3)  # no output_audio_buffer.started/stopped, ever
        assert call.errors_sent
        assert call.errors_sent[0]["error"]["param"] == "voice"
        assert call.responses[0].audio_started_at is None
        assert call.greeting_heard is False


@pytest.mark.parametrize(
    ("body", "state"),
    [
        pytest.param(GOOD_BODY, "clean", id="pcmu-both-with-tools"),
        pytest.param({"type": "realtime", "instructions": "Hi"}, "clean", id="negotiated-no-tools"),
        pytest.param({"type": "realtime", "tools": [END_CALL_TOOL]}, "static", id="tools-without-formats"),
        pytest.param(
            {"type": "realtime", "tools": [END_CALL_TOOL], "audio": {"output": {"format": PCMU}}},
            "static",
            id="tools-with-one-format",
        ),
        pytest.param(
            {
                "type": "realtime",
                "audio": {"input": {"format": PCMU}, "output": {"format": {"type": "audio/pcma"}}},
            },
            "static",
            id="mismatched-formats",
        ),
        pytest.param(
            {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": 24000}},
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                },
            },
            "static",
            id="pcm-on-a-phone-trunk",
        ),
    ],
)
async def test_audio_state_after_accept(body: dict[str, Any], state: str) -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="audio", greeting_wait=0))
        assert (await env.accept(call, body)).status_code == 200
        assert call.audio_state == state


async def test_session_update_with_tools_but_no_formats_turns_audio_static_for_good() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="update-static", greeting_wait=0))
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(
                ws, {"type": "session.update", "session": {"type": "realtime", "tools": [END_CALL_TOOL]}}
            )
            assert (await next_event(ws))["type"] == "session.updated"
            assert call.audio_state == "static"
            fixed = {"type": "realtime", "audio": {"input": {"format": PCMU}, "output": {"format": PCMU}}}
            await send(ws, {"type": "session.update", "session": fixed})
            assert (await next_event(ws))["type"] == "session.updated"
            assert call.audio_state == "static"  # audio never heals
        assert len(call.session_updates) == 2


async def test_repeated_accept_is_refused_as_already_accepted_and_counted() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="twice", greeting_wait=0))
        assert (await env.accept(call)).status_code == 200
        first_session = call.session
        again = await env.accept(call, {"type": "realtime", "instructions": "other"})
        assert again.status_code == 400  # as OpenAI answers a second accept
        assert again.json()["error"]["code"] == "call_already_accepted"
        assert call.accept_count == 2  # a double accept is still visible (the soak counts them)
        assert call.session is first_session


# ---- session.update applies late --------------------------------------------------------------------


async def test_session_update_applies_after_the_delay_in_order() -> None:
    async with running(session_update_delay=4.0) as env:  # 0.2 s at this scale
        call = await env.sim.place_call(CallSpec(name="delayed", greeting_wait=0))
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            text_only = {"type": "realtime", "output_modalities": ["text"]}
            renamed = {"type": "realtime", "instructions": "Second."}
            sent_at = env.sim.now()
            await send(ws, {"type": "session.update", "session": text_only})
            await send(ws, {"type": "session.update", "session": renamed})
            await send(ws, {"type": "response.create", "response": {"instructions": "Before"}})
            before = await events_until(ws, "response.done")
            assert "session.updated" not in types(before)
            assert call.session_version == 0
            assert call.session["output_modalities"] == ["audio"]  # not applied yet

            first = (await events_until(ws, "session.updated"))[-1]
            assert env.sim.now() - sent_at >= 4.0 * SCALE * 0.9
            assert first["session"]["output_modalities"] == ["text"]
            assert first["session"]["instructions"] == GOOD_BODY["instructions"]
            second = await next_event(ws)
            assert second["type"] == "session.updated"
            assert second["session"]["instructions"] == "Second."

            await send(ws, {"type": "response.create", "response": {"instructions": "After"}})
            after = await events_until(ws, "response.done")
            assert "response.output_text.done" in types(after)
        old, new = call.responses
        assert (old.kind, old.session_version) == ("audio", 0)
        assert (new.kind, new.session_version) == ("text", 2)
        assert call.session_version == 2
        assert len(call.session_updated_at) == 2
        assert call.session_updated_at == sorted(call.session_updated_at)
        update_times = [e.t for e in call.client_events if e.type == "session.update"]
        assert call.session_updated_at[0] - update_times[0] >= 4.0 * SCALE * 0.9
        assert old.created_at < call.session_updated_at[0] <= call.session_updated_at[1] <= new.created_at
        assert call.session_updates == [text_only, renamed]
        assert call.summary()["session_version"] == 2


async def test_automatic_response_before_the_apply_follows_the_old_turn_detection() -> None:
    spec = CallSpec(
        name="auto-then-manual",
        greeting_wait=0,
        max_call_seconds=100.0,
        session_update_delay=6.0,  # 0.3 s at this scale
        steps=[
            Step(say="one two three four five six", reply="First answer."),  # speech: 0.09 s here
            Step(wait=14.0),  # 0.7 s: the update has applied by the next turn
            Step(say="Are you still there?", reply="Yes, I am."),
        ],
    )
    async with running() as env:
        call = await env.sim.place_call(spec)
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            no_auto = {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}},
            }
            await send(ws, {"type": "session.update", "session": no_auto})
            first = await events_until(ws, "response.done")
            assert "session.updated" not in types(first)
            assert first[-1]["response"]["output"][0]["content"][0]["transcript"] == "First answer."
            updated = (await events_until(ws, "session.updated"))[-1]
            assert updated["session"]["audio"]["input"]["turn_detection"]["create_response"] is False
            await events_until(ws, "conversation.item.input_audio_transcription.completed")
            with pytest.raises(TimeoutError):
                await next_event(ws, timeout=0.2)  # the new session answers only when asked
            await send(ws, {"type": "response.create"})
            answer = await events_until(ws, "response.done")
            assert answer[-1]["response"]["output"][0]["content"][0]["transcript"] == "Yes, I am."
        auto, manual = call.responses
        assert (auto.source, auto.session_version, auto.transcript) == ("auto", 0, "First answer.")
        assert (manual.source, manual.session_version, manual.transcript) == ("client", 1, "Yes, I am.")
        (update_t,) = [e.t for e in call.client_events if e.type == "session.update"]
        assert update_t < auto.created_at < call.session_updated_at[0] < manual.created_at


async def test_session_update_delay_per_call_overrides_the_simulator_default() -> None:
    async with running(session_update_delay=100.0) as env:  # 5 s here, far beyond the waits below
        call = await env.sim.place_call(CallSpec(name="instant", greeting_wait=0, session_update_delay=0))
        slow = await env.sim.place_call(CallSpec(name="slow", greeting_wait=0))
        for record in (call, slow):
            assert (await env.accept(record)).status_code == 200
        update = {"type": "session.update", "session": {"type": "realtime", "instructions": "New."}}
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, update)
            await send(ws, {"type": "response.create"})
            events = await events_until(ws, "response.done", timeout=1.0)
            assert types(events)[0] == "session.updated"  # applied before the response
        async with env.sideband(slow.call_id) as ws:
            await next_event(ws)
            await send(ws, update)
            with pytest.raises(TimeoutError):
                await next_event(ws, timeout=0.3)
        assert [r.session_version for r in call.responses] == [1]
        assert (call.session_version, slow.session_version) == (1, 0)
        assert slow.session_updates == [update["session"]]
        assert slow.session["instructions"] == GOOD_BODY["instructions"]


async def test_session_update_is_validated_against_the_pending_session() -> None:
    transfer = {**END_CALL_TOOL, "name": "transfer_call"}
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="tool-choice", greeting_wait=0))
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            missing = {"type": "realtime", "tool_choice": {"type": "function", "name": "transfer_call"}}
            await send(ws, {"type": "session.update", "event_id": "evt_c1", "session": missing})
            error = await next_event(ws)  # at once, not after the delay
            assert error["type"] == "error"
            assert (error["error"]["param"], error["error"]["event_id"]) == ("session.tool_choice", "evt_c1")
            tools = {"type": "realtime", "tools": [END_CALL_TOOL, transfer]}
            await send(ws, {"type": "session.update", "session": tools})
            await send(ws, {"type": "session.update", "session": missing})  # the pending tools count
            assert types([await next_event(ws), await next_event(ws)]) == ["session.updated"] * 2
            duplicate = {"type": "realtime", "tools": [transfer, transfer]}
            await send(ws, {"type": "session.update", "session": duplicate})
            assert (await next_event(ws))["error"]["param"] == "session.tools[1].name"
        assert call.session["tool_choice"] == {"type": "function", "name": "transfer_call"}
        assert call.session_version == 2
        assert len(call.errors_sent) == 2


# ---- stored prompts and hanging up after an error ----------------------------------------------------


async def test_stored_prompt_is_accepted_then_the_session_errors_and_stays_silent() -> None:
    body = {**GOOD_BODY, "prompt": {"id": "pmpt_abc123", "version": "2"}}
    spec = CallSpec(name="stored-prompt", greeting_wait=1.0, expect=Expectation(max_hangup_after_error_s=2.0))
    async with running() as env:
        call = await env.sim.place_call(spec)
        assert (await env.accept(call, body)).status_code == 200
        assert call.audio_state == "static"
        assert call.errors_sent == []
        async with env.sideband(call.call_id) as ws:
            assert (await next_event(ws))["type"] == "session.created"
            error = await next_event(ws)
            assert error["type"] == "error"
            assert error["error"]["type"] == "invalid_request_error"
            assert (error["error"]["code"], error["error"]["param"]) == ("invalid_prompt", "prompt")
            assert "pmpt_abc123" in error["error"]["message"]
            assert "could not be loaded" in error["error"]["message"]
            assert error["error"]["event_id"] is None
            await send(ws, {"type": "response.create", "response": {"instructions": "Hello there"}})
            events = await events_until(ws, "response.done")
            assert types(events) == assistant_line(plays=False)
            with pytest.raises(TimeoutError):
                await next_event(ws, timeout=0.3)  # no output_audio_buffer.started, ever
            assert (await env.http.post(f"/realtime/calls/{call.call_id}/hangup")).status_code == 200
        assert call.responses[0].audio_started_at is None
        assert call.greeting_heard is False
        assert call.audio_state == "static"
        assert call.accepted_at is not None
        assert call.first_error_at is not None
        assert call.first_error_at >= call.accepted_at
        assert call.hangup_after_error_s is not None
        assert 0.3 <= call.hangup_after_error_s < 2.0
        assert check_expectations(call) == []
        assert call.summary()["hangup_after_error_s"] == call.hangup_after_error_s


async def test_null_prompt_is_no_trap() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="null-prompt", greeting_wait=0))
        assert (await env.accept(call, {**GOOD_BODY, "prompt": None})).status_code == 200
        async with env.sideband(call.call_id) as ws:
            assert (await next_event(ws))["type"] == "session.created"
            with pytest.raises(TimeoutError):
                await next_event(ws, timeout=0.1)
        assert call.audio_state == "clean"
        assert call.first_error_at is None


async def test_hangup_after_error_is_timed_and_checked() -> None:
    quick = CallSpec(name="quick", greeting_wait=0, expect=Expectation(max_hangup_after_error_s=1.0))
    late = CallSpec(name="late", greeting_wait=0, expect=Expectation(max_hangup_after_error_s=0.05))
    never = CallSpec(
        name="never", greeting_wait=0, max_call_seconds=6.0, expect=Expectation(max_hangup_after_error_s=5.0)
    )
    bad_update = {"type": "session.update", "session": {"instructions": "no type"}}
    async with running() as env:
        for spec, pause in ((quick, 0.0), (late, 0.15), (never, None)):
            call = await env.sim.place_call(spec)
            assert (await env.accept(call)).status_code == 200
            async with env.sideband(call.call_id) as ws:
                await next_event(ws)
                await send(ws, bad_update)
                assert (await next_event(ws))["type"] == "error"
                assert call.first_error_at is not None
                await send(ws, bad_update)  # a second error does not move the first one
                assert (await next_event(ws))["type"] == "error"
                first = call.first_error_at
                if pause is not None:
                    await asyncio.sleep(pause)
                    assert (await env.http.post(f"/realtime/calls/{call.call_id}/hangup")).status_code == 200
            await env.sim.wait_ended(call.call_id, 2.0)
            assert call.first_error_at == first
            assert len(call.errors_sent) == 2
        calls = {c.name: c for c in env.sim.calls.values()}
    quick_call, late_call, never_call = calls["quick"], calls["late"], calls["never"]
    assert quick_call.hangup_after_error_s is not None
    assert 0 <= quick_call.hangup_after_error_s < 1.0
    assert check_expectations(quick_call) == []
    assert late_call.hangup_after_error_s is not None
    assert late_call.hangup_after_error_s >= 0.15
    (late_problem,) = check_expectations(late_call)
    assert "max_hangup_after_error_s" in late_problem
    assert never_call.ended_by == "caller"
    assert never_call.hangup_after_error_s is None
    (never_problem,) = check_expectations(never_call)
    assert "no agent hangup" in never_problem


# ---- 404s and auth -----------------------------------------------------------------------------------


async def test_unknown_and_ended_calls_are_404_call_id_not_found() -> None:
    async with running() as env:
        for action in ("accept", "reject", "refer", "hangup"):
            response = await env.http.post(f"/realtime/calls/rtc_nope/{action}", json={"type": "realtime"})
            assert response.status_code == 404, action
            assert response.json() == {
                "error": {
                    "message": "Call 'rtc_nope' not found.",
                    "type": "invalid_request_error",
                    "code": "call_id_not_found",
                    "param": None,
                }
            }
        with pytest.raises(InvalidStatus) as unknown:
            async with env.sideband("rtc_nope"):
                pass
        assert unknown.value.response.status_code == 404
        assert b"call_id_not_found" in unknown.value.response.body

        call = await env.sim.place_call(CallSpec(name="ended", greeting_wait=0))
        assert (await env.accept(call)).status_code == 200
        assert (await env.http.post(f"/realtime/calls/{call.call_id}/hangup")).status_code == 200
        for action in ("accept", "hangup", "reject"):
            response = await env.http.post(
                f"/realtime/calls/{call.call_id}/{action}", json={"type": "realtime"}
            )
            assert response.status_code == 404, action
            assert response.json()["error"]["code"] == "call_id_not_found"
        with pytest.raises(InvalidStatus) as ended:
            async with env.sideband(call.call_id):
                pass
        assert ended.value.response.status_code == 404
        assert call.hangup_count == 1
        assert call.accept_count == 1


async def test_api_key_is_required_on_rest_and_sideband() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="auth", greeting_wait=0))
        url = f"/realtime/calls/{call.call_id}/accept"
        missing = await env.http.post(url, json=GOOD_BODY, headers={"Authorization": ""})
        wrong = await env.http.post(url, json=GOOD_BODY, headers={"Authorization": "Bearer sk-wrong-key"})
        for response in (missing, wrong):
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "invalid_request_error"
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert "sk-wrong-key" not in wrong.text
        assert call.accept_count == 0
        assert call.accept_bodies == []

        assert (await env.accept(call)).status_code == 200
        with pytest.raises(InvalidStatus) as denied:
            async with env.sideband(call.call_id, key="sk-wrong-key"):
                pass
        assert denied.value.response.status_code == 401
        assert call.sideband_connects == 0


# ---- reject and refer ------------------------------------------------------------------------------


async def test_reject_ends_the_call_with_the_sip_code() -> None:
    async with running() as env:
        busy = await env.sim.place_call(CallSpec(name="busy"))
        declined = await env.sim.place_call(CallSpec(name="declined"))
        response = await env.http.post(f"/realtime/calls/{busy.call_id}/reject", json={"status_code": 486})
        assert response.status_code == 200
        assert (await env.http.post(f"/realtime/calls/{declined.call_id}/reject")).status_code == 200
        bad = await env.sim.place_call(CallSpec(name="bad-code"))
        response = await env.http.post(f"/realtime/calls/{bad.call_id}/reject", json={"status_code": "486"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "status_code"

        for call, code in ((busy, 486), (declined, 603)):
            await env.sim.wait_ended(call.call_id, 1.0)
            assert (call.ended_by, call.reject_status, call.accept_count) == ("reject", code, 0)
        assert (await env.accept(busy)).status_code == 404
        assert bad.ended_by is None


@pytest.mark.parametrize("mode", ["succeed", "ignore", "fail"])
async def test_refer_modes(mode: str) -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="transfer", refer=mode, greeting_wait=0))
        refer_url = f"/realtime/calls/{call.call_id}/refer"
        assert (await env.http.post(refer_url, json={"target_uri": "tel:+14155550199"})).status_code == 400
        assert (await env.accept(call)).status_code == 200
        for bad in ({}, {"target_uri": "+14155550199"}, {"target_uri": 5}):
            response = await env.http.post(refer_url, json=bad)
            assert response.status_code == 400, bad
            assert response.json()["error"]["param"] == "target_uri"
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            response = await env.http.post(refer_url, json={"target_uri": "sip:desk@pbx.example.com"})
            if mode == "fail":
                assert response.status_code == 500
                assert response.json()["error"]["type"] == "server_error"
            else:
                assert response.status_code == 200
            if mode == "succeed":
                started = env.sim.now()
                with pytest.raises(ConnectionClosedOK):
                    await next_event(ws, timeout=2.0)
                assert ws.close_code == 1000
                assert env.sim.now() - started >= 0.3 * SCALE * 0.9
                assert call.ended_by == "refer"
            else:
                with pytest.raises(TimeoutError):
                    await next_event(ws, timeout=0.3 * SCALE * 4)
                assert call.ended_by is None
        assert call.refers == ["sip:desk@pbx.example.com"]


# ---- the scripted call --------------------------------------------------------------------------------


async def test_scripted_call_from_greeting_to_agent_hangup() -> None:
    spec = CallSpec(
        name="hours",
        headers={"X-Customer-Id": "cust_42"},
        greeting_wait=10.0,  # generous: the greeting comes at once, this only guards slow machines
        steps=[
            Step(say="Hi, what are your opening hours?", reply="We are open from nine to five."),
            Step(
                say="Thanks, that is all. Goodbye.",
                tool=ToolCall(name="end_call", arguments={"reason": "caller said goodbye"}),
                then="Goodbye, have a nice day!",
            ),
        ],
        expect=Expectation(
            ended_by="agent",
            accept_count=1,
            audio_state="clean",
            greeting_heard=True,
            hangup_after_audio=True,
            transcript_contains=["opening hours", "nice day"],
        ),
    )
    async with running() as env:
        call = await env.sim.place_call(spec)
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            created = await next_event(ws)
            assert created["type"] == "session.created"
            assert created["session"]["audio"]["output"]["voice"] == "marin"
            assert created["session"]["tools"] == [END_CALL_TOOL]

            await send(
                ws, {"type": "response.create", "response": {"instructions": "Greet the caller warmly."}}
            )
            greeting = await events_until(ws, "output_audio_buffer.stopped")
            assert types(greeting) == [*assistant_line(), "output_audio_buffer.stopped"]
            assert greeting[7]["transcript"] == "Greet the caller warmly."
            assert greeting[6]["delta"] == "Greet the caller warmly."

            turn = await events_until(ws, "output_audio_buffer.stopped")
            assert types(turn) == [
                *CALLER_TURN,
                *assistant_line(deltas=2),
                "output_audio_buffer.stopped",  # after response.done, as on the real service
            ]
            assert turn[6]["transcript"] == "Hi, what are your opening hours?"
            assert turn[0]["item_id"] == turn[2]["item_id"] == turn[3]["item"]["id"] == turn[6]["item_id"]
            assert turn[3]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
            created, done = turn[7], turn[19]
            reply_id = created["response"]["id"]
            assert created["response"]["conversation_id"].startswith("conv_")
            assert created["response"]["status_details"] is None
            assert {e["response_id"] for e in turn[9:19] if "response_id" in e} == {reply_id}
            assert "".join(e["delta"] for e in turn[13:15]) == "We are open from nine to five."
            assert turn[15]["transcript"] == "We are open from nine to five."
            assert turn[20]["response_id"] == reply_id
            reply_item = turn[9]["item"]
            assert (reply_item["status"], reply_item["content"]) == ("in_progress", [])
            assert turn[16]["part"] == {"type": "audio", "transcript": "We are open from nine to five."}
            assert turn[17]["item"]["id"] == reply_item["id"]
            assert turn[17]["item"]["status"] == "completed"
            limits = {limit["name"]: limit for limit in turn[8]["rate_limits"]}
            assert limits["requests"]["remaining"] == limits["requests"]["limit"] - 2  # the greeting and this
            done_response = done["response"]
            assert done_response["status"] == "completed"
            assert done_response["status_details"] is None
            assert done_response["id"] == reply_id
            assert done_response["conversation_id"] == created["response"]["conversation_id"]
            assert done_response["output"][0]["content"][0]["transcript"] == "We are open from nine to five."
            usage = done_response["usage"]
            assert usage["output_token_details"]["audio_tokens"] == 42  # 7 words * 0.3 s * 20 tokens/s
            assert usage["input_token_details"]["audio_tokens"] > 0
            assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
            details = usage["input_token_details"]
            assert details["cached_tokens"] == sum(details["cached_tokens_details"].values())

            tool = await events_until(ws, "response.done")
            assert types(tool) == [*CALLER_TURN, *FUNCTION_CALL]
            added, args_done, item = tool[9]["item"], tool[13], tool[14]["item"]
            assert (added["type"], added["status"], added["arguments"]) == ("function_call", "in_progress", "")
            assert item["type"] == "function_call"
            assert item["name"] == "end_call"
            assert item["id"] == added["id"]
            assert args_done["call_id"] == item["call_id"] == added["call_id"]
            assert args_done["call_id"].startswith("call_")
            assert tool[11]["delta"] + tool[12]["delta"] == args_done["arguments"] == item["arguments"]
            assert json.loads(args_done["arguments"]) == {"reason": "caller said goodbye"}
            assert args_done["response_id"] == tool[7]["response"]["id"]
            assert args_done["item_id"] == item["id"]

            await send(
                ws,
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "function_call_output",
                        "call_id": item["call_id"],
                        "output": '{"ok": true}',
                    },
                },
            )
            output_added, output_done = await next_event(ws), await next_event(ws)
            assert (output_added["type"], output_done["type"]) == ("conversation.item.added", "conversation.item.done")
            assert output_added["previous_item_id"] == item["id"]
            assert output_done["item"]["call_id"] == item["call_id"]
            await send(ws, {"type": "response.create", "response": {"instructions": "Say goodbye."}})
            goodbye = await events_until(ws, "output_audio_buffer.stopped")
            assert (
                goodbye[7]["transcript"] == "Goodbye, have a nice day!"
            )  # the queued `then`, not the instructions
            assert (await env.http.post(f"/realtime/calls/{call.call_id}/hangup")).status_code == 200
            with pytest.raises(ConnectionClosedOK):
                await next_event(ws)
            assert ws.close_code == 1000

        record = await env.sim.wait_ended(call.call_id, 2.0)
        assert record is call
        assert call.ended_by == "agent"
        assert call.hangup_count == 1
        assert call.greeting_heard is True
        assert call.audio_playing_at_hangup is False
        assert call.hangup_gap_s is not None
        assert call.hangup_gap_s >= 0
        assert call.last_audio_stopped_at is not None
        assert call.hangup_at is not None
        assert call.hangup_at >= call.last_audio_stopped_at
        assert call.function_outputs == [{"call_id": item["call_id"], "output": '{"ok": true}'}]
        assert [(t["role"], t["text"]) for t in call.transcripts] == [
            ("assistant", "Greet the caller warmly."),
            ("caller", "Hi, what are your opening hours?"),
            ("assistant", "We are open from nine to five."),
            ("caller", "Thanks, that is all. Goodbye."),
            ("assistant", "Goodbye, have a nice day!"),
        ]
        assert [r.kind for r in call.responses] == ["audio", "audio", "tool", "audio"]
        assert [r.source for r in call.responses] == ["client", "auto", "auto", "client"]
        assert call.client_event_types() == ["response.create", "conversation.item.create", "response.create"]
        assert call.sideband_close_code == 1000
        assert check_expectations(call) == []
        summary = call.summary()
        assert json.loads(json.dumps(summary))["ended_by"] == "agent"
        assert summary["hangup_after_audio"] is True


async def test_hangup_while_audio_plays_is_recorded() -> None:
    spec = CallSpec(name="cut-off", greeting_wait=2.0, expect=Expectation(hangup_after_audio=True))
    long_text = " ".join(["word"] * 30)  # 9 s nominal, 1.8 s here: the hangup lands mid-sentence
    async with running(time_scale=0.2) as env:
        call = await env.sim.place_call(spec)
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(
                ws,
                {"type": "response.create", "response": {"instructions": f'Say "{long_text} and more words"'}},
            )
            events = await events_until(ws, "response.done")
            assert (
                events[-1]["response"]["output"][0]["content"][0]["transcript"] == long_text
            )  # trimmed to 30
            assert (await env.http.post(f"/realtime/calls/{call.call_id}/hangup")).status_code == 200
            with pytest.raises(ConnectionClosedOK):
                await next_event(ws)  # no output_audio_buffer.stopped: the audio was cut
        assert call.audio_playing_at_hangup is True
        assert call.last_audio_stopped_at is None
        assert call.hangup_gap_s is None
        assert call.hangup_after_audio is False
        assert call.greeting_heard is False
        problems = check_expectations(call)
        assert len(problems) == 1
        assert "hangup_after_audio" in problems[0]


async def test_caller_hangup_closes_the_sideband_with_1000() -> None:
    spec = CallSpec(
        name="hangs-up",
        greeting_wait=0.2,
        steps=[Step(say="Hello, is anybody there?"), Step(wait=0.5), Step(hangup=True)],
        expect=Expectation(ended_by="caller", greeting_heard=False),
    )
    async with running() as env:
        call = await env.sim.place_call(spec)
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            seen: list[str] = []
            async for raw in ws:  # ends when the server closes normally
                seen.append(json.loads(raw)["type"])
            assert ws.close_code == 1000
        assert seen[0] == "session.created"
        assert "conversation.item.input_audio_transcription.completed" in seen
        assert "response.created" not in seen  # no reply scripted
        await env.sim.wait_ended(call.call_id, 1.0)
        assert call.ended_by == "caller"
        assert call.hangup_count == 0
        assert check_expectations(call) == []
        assert (await env.http.post(f"/realtime/calls/{call.call_id}/hangup")).status_code == 404


async def test_call_without_controller_ends_at_max_call_seconds() -> None:
    spec = CallSpec(name="idle", max_call_seconds=2.0)  # 0.1 s at this scale
    async with running() as env:
        call = await env.sim.place_call(spec)
        assert (await env.accept(call)).status_code == 200
        await env.sim.wait_ended(call.call_id, 2.0)
        assert call.ended_by == "caller"
        assert call.ended_at is not None
        assert call.accepted_at is not None
        assert call.ended_at - call.accepted_at >= 2.0 * SCALE * 0.9


async def test_turn_detection_off_waits_for_the_controller_to_ask() -> None:
    spec = CallSpec(
        name="manual-turns", greeting_wait=0, steps=[Step(say="Are you open today?", reply="Yes, until six.")]
    )
    async with running() as env:
        call = await env.sim.place_call(spec)
        body = {
            **GOOD_BODY,
            "audio": {
                "input": {"format": PCMU, "turn_detection": None, "transcription": {"model": "whisper-1"}},
                "output": {"format": PCMU},
            },
        }
        assert (await env.accept(call, body)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            speech = await events_until(ws, "conversation.item.input_audio_transcription.completed")
            assert types(speech)[0] == "input_audio_buffer.speech_started"
            assert speech[-1]["usage"]["type"] == "duration"
            with pytest.raises(TimeoutError):
                await next_event(ws, timeout=0.2)  # no automatic response
            await send(ws, {"type": "response.create"})
            answer = await events_until(ws, "response.done")
            assert answer[7]["transcript"] == "Yes, until six."
        assert [r.source for r in call.responses] == ["client"]


async def test_sideband_errors_echo_the_client_event_and_keep_the_socket_open() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="errors", greeting_wait=0))
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(
                ws, {"type": "session.update", "event_id": "evt_client_1", "session": {"instructions": "x"}}
            )
            error = await next_event(ws)
            assert error["type"] == "error"
            assert error["error"]["code"] == "missing_required_parameter"
            assert error["error"]["param"] == "session.type"
            assert error["error"]["event_id"] == "evt_client_1"
            assert error["error"]["type"] == "invalid_request_error"

            await send(ws, {"type": "session.update", "session": {"type": "realtime", "temperature": 0.7}})
            assert (await next_event(ws))["error"]["param"] == "session.temperature"
            await ws.send("{not json")
            assert (await next_event(ws))["type"] == "error"
            await send(ws, {"type": "input_audio_buffer.append", "audio": ""})
            assert (await next_event(ws))["error"]["param"] == "type"
            await send(ws, {"type": "response.cancel"})
            assert (await next_event(ws))["error"]["code"] == "response_cancel_not_active"
            await send(
                ws,
                {
                    "type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": "call_unknown", "output": "{}"},
                },
            )
            assert (await next_event(ws))["error"]["param"] == "item.call_id"

            # VAD tuning is fine inside session.update, and the update is a patch.
            tuning = {"type": "server_vad", "silence_duration_ms": 800}
            update = {"type": "realtime", "audio": {"input": {"turn_detection": tuning}}}
            await send(ws, {"type": "session.update", "session": update})
            updated = await next_event(ws)
            assert updated["type"] == "session.updated"
            assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 800
            assert updated["session"]["audio"]["input"]["turn_detection"]["threshold"] == 0.5
            assert updated["session"]["audio"]["input"]["format"] == PCMU
            assert updated["session"]["tools"] == [END_CALL_TOOL]
        assert len(call.errors_sent) == 6
        assert call.session_updates == [update]
        assert call.client_event_types() == [
            "session.update",
            "session.update",
            "<invalid>",
            "input_audio_buffer.append",
            "response.cancel",
            "conversation.item.create",
            "session.update",
        ]
        assert call.function_outputs == []
        assert call.ended_by is None


async def test_output_audio_buffer_clear_cuts_the_audio() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="clear", greeting_wait=0))
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, {"type": "response.create", "response": {"instructions": " ".join(["talk"] * 30)}})
            events = await events_until(ws, "response.done")
            response_id = events[0]["response"]["id"]
            await send(ws, {"type": "output_audio_buffer.clear"})
            cleared = await next_event(ws)
            assert cleared == {**cleared, "type": "output_audio_buffer.cleared", "response_id": response_id}
            with pytest.raises(TimeoutError):
                await next_event(ws, timeout=30 * 0.3 * SCALE + 0.1)  # the stopped event never comes
        assert call.responses[0].audio_cleared is True
        assert call.last_audio_stopped_at is not None


async def test_stop_closes_live_sidebands_and_refuses_new_calls() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="live", greeting_wait=0))
        assert (await env.accept(call)).status_code == 200
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await env.sim.stop()
            with pytest.raises(ConnectionClosedOK):
                await next_event(ws)
            assert ws.close_code == 1001
        with pytest.raises(RuntimeError):
            await env.sim.place_call(CallSpec(name="late"))


# ---- webhooks and ringing -------------------------------------------------------------------------


async def test_incoming_call_webhook_is_signed_and_shaped_like_openai() -> None:
    spec = CallSpec(
        name="hook", caller="+14155550123", dialed="+18005550100", headers={"X-Customer-Id": "cust_7"}
    )
    async with running(project_id="proj_abc123") as env:
        call = await env.sim.place_call(spec)
        assert call.delivery_statuses == [200]
        (delivery,) = env.receiver.deliveries
        headers, event = delivery.headers, delivery.payload
        assert headers["webhook-id"] == call.webhook_id
        assert call.webhook_id.startswith("wh_")
        assert headers["user-agent"] == "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
        assert headers["content-type"] == "application/json"
        assert headers["webhook-signature"].startswith("v1,")
        assert event["object"] == "event"
        assert event["type"] == "realtime.call.incoming"
        assert event["id"] == call.event_id
        assert event["id"].startswith("evt_")
        assert isinstance(event["created_at"], int)
        data = event["data"]
        assert data["call_id"] == call.call_id
        assert re.fullmatch(r"rtc_sim_[0-9a-f]{32}", call.call_id)
        assert data["sip_media_security"] == "srtp"
        names = [h["name"] for h in data["sip_headers"]]
        assert names == [
            "From",
            "To",
            "Call-ID",
            "P-Asserted-Identity",
            "X-Twilio-CallSid",
            "Diversion",
            "X-Customer-Id",
        ]
        values = {h["name"]: h["value"] for h in data["sip_headers"]}
        assert re.fullmatch(r"<sip:\+14155550123@sip\.twilio\.com>;tag=\S+", values["From"])
        assert values["To"] == "<sip:proj_abc123@sip.api.openai.com;transport=tls>"
        assert values["P-Asserted-Identity"] == "<sip:+14155550123@sip.twilio.com>"
        assert re.fullmatch(r"CA[0-9a-f]{32}", values["X-Twilio-CallSid"])
        assert values["Diversion"] == "<sip:+18005550100@sip.twilio.com>;reason=unconditional"
        assert values["X-Customer-Id"] == "cust_7"


async def test_duplicate_deliveries_share_webhook_id_and_body() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="dupes", deliveries=3, greeting_wait=0))
        assert call.delivery_statuses == [200, 200, 200]
        assert len(env.receiver.deliveries) == 3
        assert {d.headers["webhook-id"] for d in env.receiver.deliveries} == {call.webhook_id}
        assert len({d.body for d in env.receiver.deliveries}) == 1


async def test_webhook_is_retried_after_a_500_with_the_same_id() -> None:
    async with running(statuses=(500, 503)) as env:
        call = await env.sim.place_call(CallSpec(name="retry", greeting_wait=0))
        assert call.delivery_statuses == [500, 503, 200]
        assert [d.headers["webhook-id"] for d in env.receiver.deliveries] == [call.webhook_id] * 3
        assert len({d.body for d in env.receiver.deliveries}) == 1


async def test_webhook_gives_up_after_five_failed_connections() -> None:
    sock = bind_socket()  # bound but never listening: connections are refused
    port = sock.getsockname()[1]
    try:
        async with running(webhook_url=f"http://127.0.0.1:{port}/webhooks/openai", time_scale=0.01) as env:
            async with asyncio.timeout(3.0):
                call = await env.sim.place_call(CallSpec(name="unreachable"))
            assert call.delivery_statuses == [0, 0, 0, 0, 0]
    finally:
        sock.close()


async def test_ring_timeout_means_missed_and_late_accept_is_404() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="missed", ring_timeout=1.0))  # 50 ms here
        await env.sim.wait_ended(call.call_id, 2.0)
        assert call.ended_by == "missed"
        response = await env.accept(call)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "call_id_not_found"
        assert call.accept_count == 0


async def test_wait_ended_times_out() -> None:
    async with running() as env:
        call = await env.sim.place_call(CallSpec(name="ringing"))
        with pytest.raises(TimeoutError):
            await env.sim.wait_ended(call.call_id, 0.05)
        assert call.ended_by is None


# ---- the demo scenario against a minimal controller ---------------------------------------------------


@dataclass
class MiniController:
    """Just enough controller to play the demo: dedupe, accept, greet, end_call -> goodbye -> hangup."""

    secret: str
    sim: Simulator | None = None
    seen: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def webhook(self, request: Request) -> Response:
        payload = Webhook(self.secret).verify(await request.body(), dict(request.headers))
        webhook_id = request.headers["webhook-id"]
        if webhook_id not in self.seen:
            self.seen.add(webhook_id)
            self.tasks.add(asyncio.create_task(self.run(payload["data"]["call_id"])))
        return Response(status_code=200)

    async def run(self, call_id: str) -> None:
        assert self.sim is not None
        async with httpx.AsyncClient(base_url=self.sim.base_url, headers=AUTH) as http:
            assert (await http.post(f"/realtime/calls/{call_id}/accept", json=GOOD_BODY)).status_code == 200
            url = self.sim.base_url.replace("http://", "ws://") + f"/realtime?call_id={call_id}"
            async with asyncio.timeout(5.0), connect(url, additional_headers=AUTH) as ws:
                await send(
                    ws, {"type": "response.create", "response": {"instructions": "Hello, how can I help?"}}
                )
                asked_goodbye, goodbye_id = False, None
                async for raw in ws:
                    event = json.loads(raw)
                    if (
                        event["type"] == "response.function_call_arguments.done"
                        and event["name"] == "end_call"
                    ):
                        item = {"type": "function_call_output", "call_id": event["call_id"], "output": "{}"}
                        await send(ws, {"type": "conversation.item.create", "item": item})
                        await send(ws, {"type": "response.create"})
                        asked_goodbye = True
                    elif event["type"] == "response.created" and asked_goodbye and goodbye_id is None:
                        goodbye_id = event["response"]["id"]
                    elif (
                        event["type"] == "output_audio_buffer.stopped" and event["response_id"] == goodbye_id
                    ):
                        assert (await http.post(f"/realtime/calls/{call_id}/hangup")).status_code == 200


async def test_demo_scenario_passes_against_a_well_behaved_controller() -> None:
    scenario = load_scenario(DEMO)
    secret = new_webhook_secret()
    controller = MiniController(secret)
    app = Starlette(routes=[Route("/webhooks/openai", controller.webhook, methods=["POST"])])
    async with serve(app) as hooks, Simulator(webhook_secret=secret, time_scale=0.1) as sim:
        controller.sim = sim
        sim.webhook_url = f"{hooks.url}/webhooks/openai"
        calls = await sim.run_scenario(scenario, timeout=10.0)
        await asyncio.gather(*controller.tasks)
        assert sim.task_errors == []
    by_name = {call.name: call for call in calls}
    assert [problem for call in calls for problem in check_expectations(call)] == []
    assert by_name["duplicate-delivery"].delivery_statuses == [200, 200, 200]
    assert by_name["goodbye"].hangup_gap_s is not None
    assert by_name["caller-hangs-up"].ended_by == "caller"
