"""Operator tools: HTTP endpoints (signed with Standard Webhooks) and Python functions, each with a timeout.

The answer (text, or JSON made text) becomes the model's function output; every failure becomes an error
output the model can talk about, never a crash. A JSON object answer may carry live-control ``actions`` (#17:
``{"result": …, "actions": [{"say": "…"}, {"context": "…"}, {"mute": true}]}``, read by
``features.control.split_tool_answer``): they are taken out of what the model sees and carried out by the call.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from sip_controller.agent.operator_tools import ToolCall, load_python_handler
from sip_controller.agent.profile import HttpTool, PythonTool
from sip_controller.calls.features.control import Control, split_tool_answer

MAX_OUTPUT_CHARS = 16_000
#: of an error answer, only the start is read (its first 200 characters go into the error)
ERROR_BODY_BYTES = 4096
CUT_MARK = "…[cut]"


@dataclass(frozen=True)
class ToolAnswer:
    ok: bool
    output: str
    duration_s: float
    outcome: str  # ok | error | timeout
    #: live-control actions the answer carried, and why they were refused ('' if they were not)
    actions: tuple[Control, ...] = ()
    actions_problem: str = ""


def _as_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_OUTPUT_CHARS]


async def run_tool(
    tool: HttpTool | PythonTool,
    arguments: dict[str, Any],
    call: ToolCall,
    client: httpx.AsyncClient,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> ToolAnswer:
    started = clock()
    try:
        async with asyncio.timeout(tool.timeout_s):
            if isinstance(tool, HttpTool):
                value = await _run_http(tool, arguments, call, client)
            else:
                value = await load_python_handler(tool.handler)(arguments, call)
        value, actions, problem = split_tool_answer(value)
        output = _as_text(value)
    except TimeoutError:
        return ToolAnswer(False, f"the tool did not answer within {tool.timeout_s:g}s", clock() - started, "timeout")
    except Exception as exc:  # an operator's tool failing must never take the call down
        return ToolAnswer(False, f"the tool failed: {type(exc).__name__}: {exc}"[:500], clock() - started, "error")
    return ToolAnswer(True, output, clock() - started, "ok", actions, problem)


async def _run_http(tool: HttpTool, arguments: dict[str, Any], call: ToolCall, client: httpx.AsyncClient) -> Any:
    """The answer: text, or the decoded JSON of a JSON answer."""
    body = json.dumps(
        {
            "tool": tool.name,
            "arguments": arguments,
            "call": {
                "call_id": call.call_id,
                "profile": call.profile,
                "caller": call.caller,
                "dialed": call.dialed,
                "twilio_call_sid": call.twilio_call_sid,
            },
        },
        separators=(",", ":"),
    )
    headers = {"content-type": "application/json"}
    if tool.secret_env:
        secret = os.environ.get(tool.secret_env, "")
        if not secret.startswith("whsec_"):
            raise RuntimeError(f"environment variable {tool.secret_env} does not hold a whsec_ secret")
        msg_id = f"msg_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        headers |= {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        }
    async with client.stream("POST", tool.url, content=body, headers=headers, timeout=tool.timeout_s) as response:
        if not response.is_success:
            head, _ = await _read_capped(response, ERROR_BODY_BYTES)
            raise RuntimeError(f"HTTP {response.status_code}: {_decode(head)[:200]}")
        data, cut = await _read_capped(response, tool.max_response_bytes)
        is_json = "json" in response.headers.get("content-type", "")
    if cut:  # the rest was never read: say so to the model, and keep what came
        marker = f"{CUT_MARK} (the tool's answer was longer than {tool.max_response_bytes} bytes)"
        return _decode(data)[: MAX_OUTPUT_CHARS - len(marker)] + marker
    if is_json:
        return json.loads(data)
    return _decode(data)[:MAX_OUTPUT_CHARS]


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether there was more. Reading stops there: leaving the
    ``stream`` block closes the connection instead of draining it."""
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        room = limit - len(buffer)
        if len(chunk) > room:
            buffer += chunk[:room]
            return bytes(buffer), True
        buffer += chunk
    return bytes(buffer), False


def _decode(data: bytes) -> str:
    return data.decode(errors="replace")  # a cut may split a character
