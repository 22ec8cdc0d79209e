"""Tests for sip_controller.calls.tool_runner (operator HTTP/Python tools) and how the call machine runs them."""

from __future__ import annotations

import json
import sys
import textwrap
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from sip_controller.agent.operator_tools import ToolCall, load_python_handler
from sip_controller.agent.profile import AgentProfile, HttpTool, PythonTool
from sip_controller.calls import tool_runner as handlers
from sip_controller.calls.actions import Action, RunTool, StartTimer
from sip_controller.calls.inputs import TimerFired, ToolDone
from sip_controller.calls.machine import FILLER_INSTRUCTIONS
from sip_controller.calls.states import FILLER_TIMER_PREFIX, CallState
from sip_controller.calls.tool_runner import run_tool
from sip_controller.service.loopback import serve
from tests.callkit import (  # the shared machine-test kit
    Call,
    cancelled,
    creates,
    fc,
    outputs,
    plain_answer,
    response_done,
    sends,
    timers,
)

LOOKUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"order": {"type": "string", "pattern": "^A[0-9]+$"}, "verbose": {"type": "boolean"}},
    "required": ["order"],
    "additionalProperties": False,
}
CALL = ToolCall(call_id="rtc_1", profile="default", caller="+14155550123", dialed="+18005550100", twilio_call_sid=None)
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def tool_profile(filler_after_s: float | None = 1.0) -> AgentProfile:
    tool = PythonTool(
        type="python",
        name="lookup",
        description="Look up an order.",
        handler="orders_mod:lookup",
        parameters=LOOKUP_SCHEMA,
        filler_after_s=filler_after_s,
    )
    return AgentProfile(tools=("end_call", tool))


def ask(c: Call, arguments: str, call_id: str = "c1", rid: str = "r1") -> list[Action]:
    return c.feed(response_done(rid, output=[fc(call_id, "lookup", arguments)]))


# ---- operator tools in the call machine ---------------------------------------------------------------------


def test_valid_arguments_run_the_tool_with_a_filler_timer() -> None:
    c = Call(profile=tool_profile())
    c.greeted()
    actions = ask(c, '{"order": "A42", "verbose": true}')
    assert actions == [
        RunTool("c1", "lookup", {"order": "A42", "verbose": True}),
        StartTimer(FILLER_TIMER_PREFIX + "c1", 1.0),
    ]
    assert c.record.tool_calls[-1].outcome == "pending"


def test_no_filler_timer_when_turned_off() -> None:
    c = Call(profile=tool_profile(filler_after_s=None))
    c.greeted()
    assert ask(c, '{"order": "A1"}') == [RunTool("c1", "lookup", {"order": "A1"})]


@pytest.mark.parametrize(
    ("arguments", "where"),
    [
        ('{"order": 5}', "order"),
        ('{"order": "B1"}', "order"),
        ("{}", "arguments"),
        ('{"order": "A1", "extra": 1}', "arguments"),
        ("not json", "JSON"),
        ("[1, 2]", "arguments"),
    ],
)
def test_invalid_arguments_get_an_error_and_no_run(arguments: str, where: str) -> None:
    c = Call(profile=tool_profile())
    c.greeted()
    actions = ask(c, arguments)
    assert not any(isinstance(a, RunTool) for a in actions)
    assert timers(actions) == {}
    error = outputs(actions)["c1"]["error"]
    assert where in error
    assert [plain_answer(e) for e in creates(actions)] == ["tool_result"]
    assert c.record.tool_calls[-1].outcome == "invalid_arguments"


def test_filler_line_when_the_tool_is_slow() -> None:
    c = Call(profile=tool_profile())
    c.greeted()
    ask(c, '{"order": "A1"}')
    [filler] = creates(c.feed(TimerFired(FILLER_TIMER_PREFIX + "c1")))
    assert filler["response"]["instructions"] == FILLER_INSTRUCTIONS
    assert filler["response"]["tool_choice"] == "none"
    c.feed(ToolDone("c1", True, "ok", 2.0))
    assert c.feed(TimerFired(FILLER_TIMER_PREFIX + "c1")) == []  # answered: no filler after all


def test_tool_done_sends_the_output_and_records_it() -> None:
    c = Call(profile=tool_profile())
    c.greeted()
    ask(c, '{"order": "A1"}')
    actions = c.feed(ToolDone("c1", True, '{"status": "shipped"}', 1.23456))
    assert FILLER_TIMER_PREFIX + "c1" in cancelled(actions)
    assert outputs(actions) == {"c1": {"status": "shipped"}}
    assert [plain_answer(e) for e in creates(actions)] == ["tool_result"]
    rec = c.record.tool_calls[-1]
    assert (rec.name, rec.outcome, rec.result, rec.duration_s) == ("lookup", "ok", '{"status": "shipped"}', 1.235)
    assert c.feed(ToolDone("c1", True, "again", 1.0)) == []  # answered once


def test_failed_tool_done_becomes_an_error_output() -> None:
    c = Call(profile=tool_profile())
    c.greeted()
    ask(c, '{"order": "A1"}')
    actions = c.feed(ToolDone("c1", False, "the tool did not answer within 5s", 5.0, outcome="timeout"))
    assert outputs(actions) == {"c1": {"error": "the tool did not answer within 5s"}}
    assert c.record.tool_calls[-1].outcome == "timeout"


def test_tool_done_after_ending_is_not_sent() -> None:
    c = Call(profile=tool_profile())
    c.greeted()
    ask(c, '{"order": "A1"}')
    c.feed(response_done("r2", output=[fc("c_end")]))
    assert c.m.state == CallState.ENDING
    actions = c.feed(ToolDone("c1", True, "late answer", 3.0))
    assert sends(actions) == []
    assert FILLER_TIMER_PREFIX + "c1" in cancelled(actions)
    assert c.record.tool_calls[0].result == "late answer"
    assert c.feed(TimerFired(FILLER_TIMER_PREFIX + "c1")) == []


# ---- run_tool: Python handlers ------------------------------------------------------------------------------


def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Write ``source`` as a fresh module on sys.path; returns its (unique) name."""
    name = f"handler_mod_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def py_tool(handler: str, timeout_s: float = 5.0) -> PythonTool:
    return PythonTool(type="python", name="lookup", description="Look up.", handler=handler, timeout_s=timeout_s)


HANDLERS = """
    import asyncio

    async def echo(arguments, call):
        return {"order": arguments["order"], "call_id": call.call_id, "caller": call.caller}

    async def text(arguments, call):
        return "plain answer"

    async def boom(arguments, call):
        raise KeyError("no such order")

    async def slow(arguments, call):
        await asyncio.sleep(10)
        return "too late"

    NOT_CALLABLE = 3
"""


@pytest.mark.anyio
async def test_python_handler_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = make_module(tmp_path, monkeypatch, HANDLERS)
    async with httpx.AsyncClient() as client:
        answer = await run_tool(py_tool(f"{mod}:echo"), {"order": "A7"}, CALL, client)
        assert answer.ok
        assert answer.outcome == "ok"
        assert json.loads(answer.output) == {"order": "A7", "call_id": "rtc_1", "caller": "+14155550123"}
        assert answer.duration_s >= 0
        text = await run_tool(py_tool(f"{mod}:text"), {}, CALL, client)
        assert (text.ok, text.output) == (True, "plain answer")


@pytest.mark.anyio
async def test_python_handler_that_raises_is_an_error_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = make_module(tmp_path, monkeypatch, HANDLERS)
    async with httpx.AsyncClient() as client:
        answer = await run_tool(py_tool(f"{mod}:boom"), {}, CALL, client)
    assert not answer.ok
    assert answer.outcome == "error"
    assert "KeyError" in answer.output
    assert "no such order" in answer.output


@pytest.mark.anyio
async def test_slow_python_handler_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = make_module(tmp_path, monkeypatch, HANDLERS)
    async with httpx.AsyncClient() as client:
        answer = await run_tool(py_tool(f"{mod}:slow", timeout_s=0.2), {}, CALL, client)
    assert not answer.ok
    assert answer.outcome == "timeout"
    assert "0.2s" in answer.output
    assert 0.15 <= answer.duration_s < 2.0


@pytest.mark.anyio
async def test_unloadable_handler_is_an_error_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with httpx.AsyncClient() as client:
        answer = await run_tool(py_tool("no_such_module_xyz:fn"), {}, CALL, client)
    assert (answer.ok, answer.outcome) == (False, "error")
    assert "no_such_module_xyz" in answer.output


def test_load_python_handler_errors_are_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = make_module(tmp_path, monkeypatch, HANDLERS)
    with pytest.raises(ValueError, match=r"cannot import 'no_such_module_xyz'"):
        load_python_handler("no_such_module_xyz:fn")
    with pytest.raises(ValueError, match=rf"'{mod}' has no function 'missing'"):
        load_python_handler(f"{mod}:missing")
    with pytest.raises(ValueError, match=r"has no function 'NOT_CALLABLE'"):
        load_python_handler(f"{mod}:NOT_CALLABLE")
    assert load_python_handler(f"{mod}:text") is load_python_handler(f"{mod}:text")


def test_python_handler_output_is_capped() -> None:
    assert len(handlers._as_text("x" * (handlers.MAX_OUTPUT_CHARS + 10))) == handlers.MAX_OUTPUT_CHARS


# ---- run_tool: HTTP tools -----------------------------------------------------------------------------------


def receiver(seen: list[dict[str, Any]]) -> Starlette:
    async def json_tool(request: Request) -> Response:
        body = await request.body()
        try:
            Webhook(SECRET).verify(body, dict(request.headers))
        except Exception:
            return PlainTextResponse("bad signature", status_code=401)
        payload = json.loads(body)
        seen.append(payload)
        return JSONResponse({"status": "shipped", "order": payload["arguments"]["order"]})

    async def text_tool(request: Request) -> Response:
        seen.append(json.loads(await request.body()))
        return PlainTextResponse("Your order ships tomorrow.")

    async def broken(request: Request) -> Response:
        return PlainTextResponse("database down", status_code=500)

    return Starlette(
        routes=[
            Route("/json", json_tool, methods=["POST"]),
            Route("/text", text_tool, methods=["POST"]),
            Route("/broken", broken, methods=["POST"]),
        ]
    )


def http_tool(url: str, secret_env: str | None = "ORDERS_TOOL_SECRET") -> HttpTool:
    return HttpTool(type="http", name="lookup", description="Look up.", url=url, secret_env=secret_env, timeout_s=5)


@pytest.mark.anyio
async def test_http_tool_signed_json_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOOL_SECRET", SECRET)
    seen: list[dict[str, Any]] = []
    async with serve(receiver(seen)) as server, httpx.AsyncClient() as client:
        answer = await run_tool(http_tool(server.url + "/json"), {"order": "A9"}, CALL, client)
    assert answer.ok, answer.output
    assert json.loads(answer.output) == {"status": "shipped", "order": "A9"}
    [payload] = seen
    assert payload["tool"] == "lookup"
    assert payload["arguments"] == {"order": "A9"}
    assert payload["call"]["call_id"] == "rtc_1"
    assert payload["call"]["dialed"] == "+18005550100"


@pytest.mark.anyio
async def test_http_tool_wrong_secret_is_refused_by_the_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOOL_SECRET", "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB")
    seen: list[dict[str, Any]] = []
    async with serve(receiver(seen)) as server, httpx.AsyncClient() as client:
        answer = await run_tool(http_tool(server.url + "/json"), {"order": "A9"}, CALL, client)
    assert (answer.ok, answer.outcome) == (False, "error")
    assert "HTTP 401" in answer.output
    assert seen == []


@pytest.mark.anyio
async def test_http_tool_text_answer_without_signing() -> None:
    seen: list[dict[str, Any]] = []
    async with serve(receiver(seen)) as server, httpx.AsyncClient() as client:
        answer = await run_tool(http_tool(server.url + "/text", secret_env=None), {"order": "A1"}, CALL, client)
    assert (answer.ok, answer.output) == (True, "Your order ships tomorrow.")
    assert len(seen) == 1


@pytest.mark.anyio
async def test_http_500_is_an_error_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOOL_SECRET", SECRET)
    async with serve(receiver([])) as server, httpx.AsyncClient() as client:
        answer = await run_tool(http_tool(server.url + "/broken"), {"order": "A1"}, CALL, client)
    assert (answer.ok, answer.outcome) == (False, "error")
    assert "HTTP 500" in answer.output
    assert "database down" in answer.output


@pytest.mark.anyio
async def test_http_tool_secret_that_is_not_whsec_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOOL_SECRET", "hunter2")
    async with httpx.AsyncClient() as client:
        answer = await run_tool(http_tool("http://127.0.0.1:9/json"), {"order": "A1"}, CALL, client)
    assert (answer.ok, answer.outcome) == (False, "error")
    assert "ORDERS_TOOL_SECRET" in answer.output
    assert "hunter2" not in answer.output


# ---- an endpoint that answers far too much (300 MB) ----------------------------------------------------------

HUGE_BYTES = 300 * 1024 * 1024
CHUNK = b"x" * (64 * 1024)


def flood(sent: list[int], *, status: int = 200, media_type: str = "text/plain") -> Starlette:
    """An endpoint streaming up to 300 MB, made lazily in 64 KB chunks; ``sent`` counts what it made."""

    async def chunks() -> AsyncIterator[bytes]:
        while sent[0] < HUGE_BYTES:
            sent[0] += len(CHUNK)
            yield CHUNK

    async def answer(request: Request) -> Response:
        await request.body()
        return StreamingResponse(chunks(), status_code=status, media_type=media_type)

    return Starlette(routes=[Route("/flood", answer, methods=["POST"])])


@pytest.mark.anyio
async def test_an_oversized_answer_is_cut_at_the_byte_limit_and_memory_stays_flat() -> None:
    sent = [0]
    async with serve(flood(sent)) as server, httpx.AsyncClient() as client:
        tool = http_tool(server.url + "/flood", secret_env=None)
        tracemalloc.start()
        try:
            answer = await run_tool(tool, {"order": "A1"}, CALL, client)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (answer.ok, answer.outcome) == (True, "ok")
    assert answer.output.startswith("xxxx")
    assert answer.output.endswith(f"(the tool's answer was longer than {tool.max_response_bytes} bytes)")
    assert "…[cut]" in answer.output
    assert len(answer.output) <= handlers.MAX_OUTPUT_CHARS
    assert peak < 24 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while reading a 300 MB answer"


@pytest.mark.anyio
async def test_the_byte_limit_is_configurable_and_an_answer_within_it_is_whole() -> None:
    sent = [0]
    async with serve(flood(sent)) as server, httpx.AsyncClient() as client:
        small = HttpTool(type="http", name="lookup", description="Look up.", url=server.url + "/flood",
                         max_response_bytes=4096)
        answer = await run_tool(small, {}, CALL, client)
    assert answer.output.startswith("x" * 100)
    assert answer.output.endswith("(the tool's answer was longer than 4096 bytes)")
    assert answer.output.count("x") == 4096
    with pytest.raises(ValueError, match="max_response_bytes"):
        HttpTool(type="http", name="t", description="d", url="https://x", max_response_bytes=10)


@pytest.mark.anyio
async def test_an_oversized_error_answer_reads_only_its_start() -> None:
    sent = [0]
    async with serve(flood(sent, status=502)) as server, httpx.AsyncClient() as client:
        tool = http_tool(server.url + "/flood", secret_env=None)
        answer = await run_tool(tool, {}, CALL, client)
    assert (answer.ok, answer.outcome) == (False, "error")
    assert answer.output.startswith("the tool failed: RuntimeError: HTTP 502: xxx")
    assert len(answer.output) <= 500
