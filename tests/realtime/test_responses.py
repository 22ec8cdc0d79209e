"""The Responses API client (#17): the request's shape judged by the openai SDK's own types, the answer read from
a body the SDK's ``Response`` model accepts, errors mapped like the calls API's (respx for OpenAI)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pydantic
import pytest
import respx
from openai.types.responses import Response
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

from sip_controller.agent.analysis import CallAnalysis
from sip_controller.calls import analysis
from sip_controller.config import Settings
from sip_controller.realtime.responses import ResponsesAPI, UnusableAnswer
from sip_controller.realtime.rest import ServerError
from sip_controller.simulator.responses import _response, answer
from tests.sdk_referee import undeclared_keys

pytestmark = pytest.mark.anyio
BASE = "https://api.openai.test/v1"
SPEC = CallAnalysis.model_validate(
    {
        "success_criteria": "an appointment was booked",
        "schema": {
            "type": "object",
            "properties": {"callback_requested": {"type": "boolean"}, "day": {"type": ["string", "null"]}},
            "required": ["callback_requested", "day"],
            "additionalProperties": False,
        },
    }
)
REPORT: dict[str, Any] = {
    "call_id": "rtc_1",
    "profile": "default",
    "ended_reason": "agent_end_call",
    "cost_usd": 0.02,
    "timings": {"duration_s": 12.0},
    "transcript": [
        {"role": "caller", "text": "Please arrange a callback tomorrow", "at_s": 1.0},
        {"role": "keypad", "text": "5", "at_s": 2.0},
        {"role": "assistant", "text": "Sure, goodbye", "at_s": 3.0},
    ],
    "tool_calls": [{"name": "end_call", "arguments": {"reason": "done"}, "result": "ok", "at_s": 3.5,
                    "outcome": "ok"}],
}  # fmt: skip


def test_the_request_is_what_the_sdk_declares() -> None:
    body = analysis.request_body(Settings(), SPEC, REPORT)
    pydantic.TypeAdapter[Any](ResponseCreateParamsNonStreaming).validate_python(body, strict=True)
    assert undeclared_keys(ResponseCreateParamsNonStreaming, body) == []
    assert body["store"] is False
    assert body["text"]["format"]["strict"] is True
    text = body["input"][0]["content"][0]["text"]
    assert "Caller: Please arrange a callback tomorrow" in text
    assert "Keypad: 5" in text
    assert 'Tool call end_call({"reason":"done"}) -> ok: ok' in text


async def test_the_answer_is_read_checked_and_priced() -> None:
    body = analysis.request_body(Settings(), SPEC, REPORT)
    payload = _response(body, json.dumps(answer(body, body["text"]["format"]["schema"])))
    Response.model_validate(payload)  # the simulator's answer is a response the SDK accepts
    async with httpx.AsyncClient() as client, respx.mock(assert_all_called=True) as mock:
        route = mock.post(f"{BASE}/responses").respond(200, json=payload)
        got = await ResponsesAPI(client, base_url=BASE, api_key="sk-test").create(body, timeout=5)
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-test"
    value = analysis.parse_answer(got, SPEC)
    assert value["fields"] == {"callback_requested": True, "day": None}
    assert value["success"] is True
    cost = analysis.answer_cost(Settings().pricing, "gpt-5-mini", got)
    assert cost is not None
    assert cost > 0


async def test_errors_and_unusable_answers() -> None:
    body = analysis.request_body(Settings(), SPEC, REPORT)
    async with httpx.AsyncClient() as client, respx.mock() as mock:
        api = ResponsesAPI(client, base_url=BASE, api_key="sk-test")
        mock.post(f"{BASE}/responses").respond(503, json={"error": {"message": "overloaded"}})
        with pytest.raises(ServerError):
            await api.create(body, timeout=5)
        refused = _response(body, "")
        refused["output"][0]["content"] = [{"type": "refusal", "refusal": "no"}]
        mock.post(f"{BASE}/responses").respond(200, json=refused)
        with pytest.raises(UnusableAnswer, match="refused"):
            await api.create(body, timeout=5)
        mock.post(f"{BASE}/responses").respond(200, json=_response(body, '{"summary": 1}'))
        got = await api.create(body, timeout=5)
    with pytest.raises(analysis.AnalysisFailed, match="not valid against the schema"):
        analysis.parse_answer(got, SPEC)
