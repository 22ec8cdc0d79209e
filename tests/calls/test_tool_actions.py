"""An operator tool's answer carrying live-control actions (#17): read by the tool runner from a real HTTP
endpoint (the model sees the answer without them), refused whole when malformed, and text answers untouched."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sip_controller.agent.operator_tools import ToolCall
from sip_controller.agent.profile import HttpTool
from sip_controller.calls.inputs import OperatorContext, OperatorMute, OperatorSay
from sip_controller.calls.tool_runner import run_tool
from sip_controller.service.loopback import serve

pytestmark = pytest.mark.anyio

CALL = ToolCall("rtc_1", "default", "+14155550123", "+18005550100", None)


def endpoint() -> Starlette:
    async def steer(request: Request) -> Response:
        return JSONResponse(
            {
                "result": {"parcel": "late"},
                "actions": [{"context": "The parcel is two days late."}, {"say": "Your parcel is late."},
                            {"mute": True}],
            }
        )  # fmt: skip

    async def malformed(request: Request) -> Response:
        return JSONResponse({"result": "ok", "actions": [{"say": "   "}]})

    async def text(request: Request) -> Response:
        return PlainTextResponse('{"actions": [{"say": "not JSON content"}]}')

    return Starlette(routes=[Route("/steer", steer, methods=["POST"]), Route("/malformed", malformed, methods=["POST"]),
                             Route("/text", text, methods=["POST"])])  # fmt: skip


def tool(url: str) -> HttpTool:
    return HttpTool(type="http", name="lookup", description="Look up.", url=url, timeout_s=5)


async def test_the_actions_are_taken_out_of_the_answer_and_carried() -> None:
    async with serve(endpoint()) as server, httpx.AsyncClient() as client:
        answer = await run_tool(tool(server.url + "/steer"), {}, CALL, client)
    assert answer.ok
    assert json.loads(answer.output) == {"result": {"parcel": "late"}}
    assert answer.actions == (
        OperatorContext("The parcel is two days late.", source="tool"),
        OperatorSay("Your parcel is late.", "now", source="tool"),
        OperatorMute(True, source="tool"),
    )
    assert answer.actions_problem == ""


async def test_malformed_actions_are_refused_and_the_answer_still_goes_to_the_model() -> None:
    async with serve(endpoint()) as server, httpx.AsyncClient() as client:
        answer = await run_tool(tool(server.url + "/malformed"), {}, CALL, client)
    assert answer.ok
    assert json.loads(answer.output) == {"result": "ok"}
    assert answer.actions == ()
    assert answer.actions_problem == "actions[0].say must not be empty"


async def test_a_text_answer_carries_no_actions() -> None:
    async with serve(endpoint()) as server, httpx.AsyncClient() as client:
        answer = await run_tool(tool(server.url + "/text"), {}, CALL, client)
    assert answer.output == '{"actions": [{"say": "not JSON content"}]}'
    assert answer.actions == ()
