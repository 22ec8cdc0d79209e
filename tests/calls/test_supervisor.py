"""One call's I/O edge: hostile sideband input, dropped sockets, refused accepts. OpenAI mocked by respx and
by real loopback WebSocket servers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from websockets.asyncio.server import ServerConnection, serve

from sip_controller.calls.machine import CallMachine
from sip_controller.calls.report import CallRecord
from sip_controller.calls.supervisor import CallOptions, CallSupervisor
from sip_controller.config import AgentProfile
from sip_controller.realtime.rest import RealtimeCalls
from sip_controller.realtime.retries import RetryPolicy
from sip_controller.realtime.sideband import FakeConnector, FakeSideband, connect_websocket
from tests.servicekit import mocked_api, openai_router

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(wait_initial=0.001, wait_max=0.01, wait_jitter=0.001, gone_grace_s=0.1, attempts=4, timeout_s=2)


@pytest.fixture
def router() -> respx.Router:
    return openai_router(None)  # any host: some tests point the API at a local WebSocket server


@pytest.fixture
async def api(router: respx.Router) -> AsyncIterator[RealtimeCalls]:
    async with mocked_api(router) as client:
        yield client


def supervisor(
    api: RealtimeCalls, connect: Any, profile: AgentProfile | None = None, *, ring_budget_s: float = 2
) -> CallSupervisor:
    record = CallRecord(call_id="rtc_x", profile="default", received_at=datetime.now(UTC))
    machine = CallMachine(call_id="rtc_x", profile_name="default", profile=profile or AgentProfile(greeting=None),
                             record=record, close_wait_s=0.5, today=record.received_at.date())
    return CallSupervisor(machine, api, connect, options=CallOptions(ring_budget_s=ring_budget_s, retry=FAST))


async def attached_call(api: RealtimeCalls) -> tuple[asyncio.Task[CallRecord], FakeSideband]:
    """A supervised call running in a task, once its (fake) sideband is attached."""
    connector = FakeConnector()
    task = asyncio.create_task(supervisor(api, connector).run())
    async with asyncio.timeout(5):
        while "rtc_x" not in connector.attached:
            await asyncio.sleep(0.01)
    return task, connector.attached["rtc_x"]


def fc_done(rid: str, call_id: str) -> dict[str, Any]:
    item = {"type": "function_call", "call_id": call_id, "name": "end_call", "arguments": "{}"}
    return {"type": "response.done", "response": {"id": rid, "status": "completed", "output": [item]}}


async def goodbye_tag(sb: Any) -> dict[str, Any]:
    """The metadata of the goodbye the call asked for, once it has been sent."""
    for _ in range(1000):
        for event in sb.sent:
            metadata = (event.get("response") or {}).get("metadata") or {}
            if event["type"] == "response.create" and metadata.get("sipctl") == "goodbye":
                return dict(metadata)
        await asyncio.sleep(0.001)
    raise AssertionError("no goodbye was asked for")


async def test_hostile_sideband_input_is_ignored_and_counted_and_the_call_goes_on(
    api: RealtimeCalls, router: respx.Router
) -> None:
    task, sb = await attached_call(api)
    for frame in ["not json", '{"type": 5}', '{"type": "response.done"}', '{"type":"x.unknown","a":1}',
                  "[1,2,3]", '{"type":"output_audio_buffer.stopped","response_id":"never_created"}',
                  '{"type":"response.created","response":{"id":"r_late"}}', "9" * 5000]:
        sb.push(frame)
    sb.push({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i", "transcript": "bye"})
    sb.push(fc_done("r_tool", "call_1"))
    sb.push(fc_done("r_tool", "call_1"))  # duplicated delivery
    meta = await goodbye_tag(sb)  # OpenAI echoes the request's metadata: that is how the goodbye is known
    sb.push({"type": "response.created", "response": {"id": "r_bye", "metadata": meta}})
    sb.push({"type": "output_audio_buffer.started", "response_id": "r_bye"})
    sb.push({"type": "response.done", "response": {"id": "r_bye", "status": "completed", "metadata": meta}})
    sb.push({"type": "output_audio_buffer.stopped", "response_id": "r_bye"})
    record = await asyncio.wait_for(task, 5)
    assert record.ended_reason == "agent_end_call"
    assert record.ignored_events >= 5
    assert [t.name for t in record.tool_calls] == ["end_call"]
    outputs = [e for e in sb.sent if e["type"] == "conversation.item.create"]
    assert len(outputs) == 1
    assert router.routes["hangup"].call_count == 1
    assert [t.text for t in record.transcripts] == ["bye"]


async def test_an_oversized_frame_drops_the_socket_and_the_call_reconnects(api: RealtimeCalls) -> None:
    connections: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(1)
        if len(connections) == 1:
            await ws.send(json.dumps({"type": "x", "blob": "a" * (5 * 1024 * 1024)}))
            await ws.wait_closed()
            return
        await ws.send(json.dumps({"type": "session.created", "session": {}}))
        await asyncio.sleep(0.1)
        await ws.close(1000)

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        api.base_url = f"http://127.0.0.1:{port}/v1"
        record = await asyncio.wait_for(supervisor(api, connect_websocket).run(), 10)
    assert len(connections) == 2
    assert any("reconnecting the sideband" in what for _, what in record.timeline)
    assert any("sideband restored" in what for _, what in record.timeline)
    assert record.ended_reason == "caller_hangup"


async def test_a_sideband_that_cannot_be_restored_is_hung_up_through_rest(
    api: RealtimeCalls, router: respx.Router
) -> None:
    attempts: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            await ws.close(1011)  # server error: may be a transient drop

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        api.base_url = f"http://127.0.0.1:{port}/v1"
        router.routes["hangup"].side_effect = None
        server.close()  # nothing listens any more: every reconnect fails
        await server.wait_closed()
        record = await asyncio.wait_for(supervisor(api, connect_websocket).run(), 15)
    assert record.ended_reason == "session_error"
    assert any("sideband attach failed" in e for e in record.errors)


async def test_a_refused_accept_body_rejects_the_call_so_it_does_not_ring_on(
    api: RealtimeCalls, router: respx.Router
) -> None:
    err = {"error": {"message": "Unknown parameter: 'x'.", "type": "invalid_request_error",
                     "code": "unknown_parameter", "param": "x"}}
    router.routes["accept"].return_value = httpx.Response(400, json=err)
    connector = FakeConnector()
    record = await asyncio.wait_for(supervisor(api, connector).run(), 5)
    assert record.ended_reason == "accept_failed"
    assert json.loads(router.routes["reject"].calls.last.request.content) == {"status_code": 603}
    assert connector.requests == []
    assert any("Unknown parameter: 'x'." in e and "param x" in e for e in record.errors)


async def test_a_gone_call_is_not_hung_up_and_never_attached(api: RealtimeCalls, router: respx.Router) -> None:
    err = {"error": {"message": "not found", "type": "invalid_request_error", "code": "call_id_not_found"}}
    router.routes["accept"].return_value = httpx.Response(404, json=err)
    connector = FakeConnector()
    record = await asyncio.wait_for(supervisor(api, connector).run(), 5)
    assert record.ended_reason == "accept_failed"
    assert router.routes["accept"].call_count >= 2  # the 404 race is retried briefly
    assert router.routes["hangup"].call_count == 0
    assert router.routes["reject"].call_count == 0
    assert connector.requests == []


async def test_5xx_until_the_ring_budget_ends_rejects_the_call_instead_of_leaving_it_ringing(
    api: RealtimeCalls, router: respx.Router
) -> None:
    router.routes["accept"].return_value = httpx.Response(500)
    connector = FakeConnector()
    started = time.monotonic()
    record = await asyncio.wait_for(supervisor(api, connector, ring_budget_s=0.4).run(), 5)
    assert record.ended_reason == "accept_failed"
    assert time.monotonic() - started >= 0.35  # retried for the whole ring budget first
    assert router.routes["accept"].call_count > 2
    assert json.loads(router.routes["reject"].calls.last.request.content) == {"status_code": 503}
    assert connector.requests == []
    [error] = [e for e in record.errors if e.startswith("accept failed")]
    assert "HTTP 500" in error
    assert "ring budget (0.4s) ran out while retrying" in error
    assert any(event.startswith("accept given up: the ring budget") for _, event in record.timeline)


async def test_a_retry_after_beyond_the_ring_budget_gives_up_at_once_and_rejects(
    api: RealtimeCalls, router: respx.Router
) -> None:
    err = {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}
    router.routes["accept"].return_value = httpx.Response(429, json=err, headers={"retry-after": "30"})
    connector = FakeConnector()
    started = time.monotonic()
    record = await asyncio.wait_for(supervisor(api, connector, ring_budget_s=2).run(), 5)
    assert time.monotonic() - started < 1.0  # no waiting out a budget that cannot be enough
    assert router.routes["accept"].call_count == 1
    assert record.ended_reason == "accept_failed"
    assert json.loads(router.routes["reject"].calls.last.request.content) == {"status_code": 503}
    [error] = [e for e in record.errors if e.startswith("accept failed")]
    assert "Retry-After 30s" in error
    assert "ring budget" in error
    assert any(event.startswith("accept given up: Retry-After 30s") for _, event in record.timeline)


async def test_accept_is_retried_through_5xx_within_the_ring_budget(api: RealtimeCalls, router: respx.Router) -> None:
    router.routes["accept"].side_effect = [httpx.Response(502), httpx.Response(500), httpx.Response(200)]
    task, sb = await attached_call(api)
    sb.close_from_server(1000)
    record = await asyncio.wait_for(task, 5)
    assert router.routes["accept"].call_count == 3
    assert record.ended_reason == "caller_hangup"


async def test_sideband_events_reach_the_machine_once_each_in_order(api: RealtimeCalls, router: respx.Router) -> None:
    """Events are handled inline when the call is idle and queued behind work under way: never reordered."""
    task, sb = await attached_call(api)
    for i in range(60):
        sb.push({"type": "conversation.item.input_audio_transcription.completed", "item_id": f"i{i}",
                 "transcript": f"line {i}"})
        if i % 7 == 0:
            await asyncio.sleep(0)  # some arrive while the call is idle, others in bursts
    sb.push(fc_done("r_tool", "call_1"))
    meta = await goodbye_tag(sb)  # OpenAI echoes the request's metadata: that is how the goodbye is known
    sb.push({"type": "response.created", "response": {"id": "r_bye", "metadata": meta}})
    sb.push({"type": "output_audio_buffer.started", "response_id": "r_bye"})
    sb.push({"type": "response.done", "response": {"id": "r_bye", "status": "completed", "metadata": meta}})
    sb.push({"type": "output_audio_buffer.stopped", "response_id": "r_bye"})
    record = await asyncio.wait_for(task, 5)
    assert [t.text for t in record.transcripts] == [f"line {i}" for i in range(60)]
    assert record.ended_reason == "agent_end_call"


# ---- OpenAI's own frames for what goes wrong with a line (issue 15), through the I/O edge -------------------


async def test_a_goodbye_failing_twice_on_the_wire_hangs_up_as_model_error(
    api: RealtimeCalls, router: respx.Router
) -> None:
    task, sb = await attached_call(api)
    sb.push(fc_done("r_tool", "call_1"))
    error = {"type": "server_error", "code": "server_error", "message": "The server had an error."}
    for n in (1, 2):
        async with asyncio.timeout(5):
            while len(requests := [e for e in sb.sent if e["type"] == "response.create"]) < n:
                await asyncio.sleep(0.001)
        meta = requests[n - 1]["response"]["metadata"]  # the goodbye, then the goodbye asked for once more
        created = {"id": f"r_bye{n}", "status": "in_progress", "status_details": None, "metadata": meta}
        sb.push({"type": "response.created", "event_id": f"e{n}", "response": created})
        done = {"id": f"r_bye{n}", "status": "failed", "metadata": meta, "output": [], "usage": None,
                "status_details": {"type": "failed", "error": error}}
        sb.push({"type": "response.done", "event_id": f"f{n}", "response": done})
    sb.close_from_server(1000)
    record = await asyncio.wait_for(task, 5)
    assert record.ended_reason == "model_error"
    assert router.routes["hangup"].call_count == 1
    assert [f.error_code for f in record.failed_responses] == ["server_error", "server_error"]


async def test_a_goodbye_talked_over_on_the_wire_gives_the_call_back(api: RealtimeCalls, router: respx.Router) -> None:
    task, sb = await attached_call(api)
    sb.push(fc_done("r_tool", "call_1"))
    meta = await goodbye_tag(sb)
    sb.push({"type": "response.created", "response": {"id": "r_bye", "status": "in_progress", "metadata": meta}})
    sb.push({"type": "output_audio_buffer.started", "response_id": "r_bye"})
    sb.push({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1200, "item_id": "item_2"})
    sb.push({"type": "output_audio_buffer.cleared", "response_id": "r_bye"})
    sb.push({"type": "response.done", "response": {
        "id": "r_bye", "status": "cancelled", "metadata": meta, "output": [],
        "status_details": {"type": "cancelled", "reason": "turn_detected"}}})
    for _ in range(1000):
        if any(e["type"] == "conversation.item.create" and e["item"].get("role") == "system" for e in sb.sent):
            break
        await asyncio.sleep(0.001)
    assert router.routes["hangup"].call_count == 0
    sb.close_from_server(1000)  # the caller hangs up later
    record = await asyncio.wait_for(task, 5)
    assert record.ended_reason == "caller_hangup"
    assert [(b.line, b.then) for b in record.barge_ins] == [("goodbye", "resumed")]


async def test_session_expired_on_the_wire_is_the_session_limit(api: RealtimeCalls, router: respx.Router) -> None:
    task, sb = await attached_call(api)
    sb.push({"type": "error", "event_id": "e1", "error": {
        "type": "invalid_request_error", "code": "session_expired",
        "message": "Your session hit the maximum duration of 60 minutes.", "param": None, "event_id": None}})
    sb.close_from_server(1000)
    record = await asyncio.wait_for(task, 5)
    assert record.ended_reason == "session_limit"
