"""The simulator's ``POST /v1/responses`` answering the controller's park check (#16): is a live person speaking in
what Twilio's ``<Gather>`` heard on a parked call? The same rule as the simulated model's realtime hold check."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai.types.responses import Response as SdkResponse

from sip_controller.simulator import Simulator, new_webhook_secret
from sip_controller.simulator.model import DEFAULT_HOLD_MARKERS, is_hold_line
from sip_controller.simulator.responses import is_park_check, park_check_answer

pytestmark = pytest.mark.anyio

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"person": {"type": "boolean"}},
    "required": ["person"],
    "additionalProperties": False,
}
INSTRUCTIONS = (
    "You check a phone line that is on hold. The text is what a speech recognizer heard on the line. Answer "
    "whether a live person is speaking to us now (not hold music, not a recorded announcement)."
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def park_check(heard: str, **extra: Any) -> dict[str, Any]:
    """The request the controller sends (#16)."""
    return {
        "model": "gpt-6-luna",
        "store": False,
        "metadata": {"sipctl_purpose": "park_check"},
        "instructions": INSTRUCTIONS,
        "input": [{"role": "user", "content": heard}],
        "text": {"format": {"type": "json_schema", "name": "park_check", "strict": True, "schema": SCHEMA}},
        **extra,
    }


async def ask(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{sim.base_url}/responses", json=body, headers={"Authorization": f"Bearer {sim.api_key}"}
        )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def said(answer: dict[str, Any]) -> dict[str, Any]:
    (message,) = answer["output"]
    (part,) = message["content"]
    value: dict[str, Any] = json.loads(part["text"])
    return value


@pytest.mark.parametrize(
    ("heard", "person"),
    [
        pytest.param("Hi, thanks for holding, this is Dana from billing.", True, id="dana"),
        pytest.param("[hold music]", False, id="music"),
        pytest.param("Your call is important to us. Please stay on the line.", False, id="announcement"),
        pytest.param("♪ ♪", False, id="notes"),
        pytest.param("   ", False, id="nothing"),
        pytest.param("Hello? Is anyone there?", True, id="a-person-asking"),
    ],
)
async def test_the_park_check_is_answered_by_the_hold_check_rule(heard: str, person: bool) -> None:
    async with Simulator(webhook_secret=new_webhook_secret()) as sim:
        answer = await ask(sim, park_check(heard))
    assert said(answer) == {"person": person}
    assert person is not is_hold_line(heard, DEFAULT_HOLD_MARKERS)  # the realtime hold check's rule
    assert answer["status"] == "completed"
    assert answer["store"] is False
    assert answer["metadata"] == {"sipctl_purpose": "park_check"}
    assert answer["text"]["format"]["name"] == "park_check"
    SdkResponse.model_validate(answer)  # the shape the openai SDK reads


async def test_usage_counts_what_the_model_read_and_wrote() -> None:
    async with Simulator(webhook_secret=new_webhook_secret()) as sim:
        short = (await ask(sim, park_check("[hold music]")))["usage"]
        long = (await ask(sim, park_check("Hi, thanks for holding, this is Dana from billing. " * 5)))["usage"]
    # the instructions (~50 tokens), the schema (~25), the framing: about a hundred tokens in, a handful out
    assert 80 <= short["input_tokens"] <= 160
    assert 1 <= short["output_tokens"] <= 8
    assert short["total_tokens"] == short["input_tokens"] + short["output_tokens"]
    assert short["input_tokens_details"]["cached_tokens"] == 0  # too short a prompt for OpenAI's prompt cache
    assert long["input_tokens"] - short["input_tokens"] == pytest.approx(60, abs=10)  # what was heard, read too


async def test_the_simulators_own_hold_markers_decide() -> None:
    async with Simulator(webhook_secret=new_webhook_secret(), hold_markers=("[hold music]",)) as sim:
        announcement = await ask(sim, park_check("Please hold, your call is important to us."))
        music = await ask(sim, park_check("[Hold Music]"))
    assert (said(announcement), said(music)) == ({"person": True}, {"person": False})


def test_a_park_check_is_known_by_its_purpose_or_its_formats_name() -> None:
    assert is_park_check(park_check("x"))
    assert is_park_check({**park_check("x"), "metadata": {}})  # the format's name
    other = park_check("x")
    other["metadata"] = {"sipctl_purpose": "analysis"}
    other["text"] = {"format": {"type": "json_schema", "name": "call_analysis", "strict": True, "schema": SCHEMA}}
    assert not is_park_check(other)
    # a schema asking more than ``person`` gets the rest filled as for an analysis
    wider = {**SCHEMA, "properties": {**SCHEMA["properties"], "note": {"type": "string"}},
             "required": ["person", "note"]}  # fmt: skip
    body = park_check("Dana here")
    body["text"]["format"]["schema"] = wider
    answer = park_check_answer(body, DEFAULT_HOLD_MARKERS)
    assert answer["person"] is True
    assert set(answer) == {"person", "note"}


async def test_an_analysis_is_still_answered_from_its_transcript() -> None:
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"],
              "additionalProperties": False}  # fmt: skip
    body = {
        "model": "gpt-6-luna",
        "store": False,
        "instructions": "Summarize the call.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "[1.0s] Caller: I need a callback."}]}],
        "text": {"format": {"type": "json_schema", "name": "call_analysis", "strict": True, "schema": schema}},
    }
    async with Simulator(webhook_secret=new_webhook_secret()) as sim:
        answer = await ask(sim, body)
    assert "I need a callback" in said(answer)["summary"]
    assert answer["metadata"] == {}
