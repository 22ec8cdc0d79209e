"""Operator tools: HTTP endpoints (signed with Standard Webhooks) and Python functions, each with a timeout.

The answer (text, or JSON made text) becomes the model's function output; every failure becomes an error
output the model can talk about, never a crash.
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

MAX_OUTPUT_CHARS = 16_000


@dataclass(frozen=True)
class ToolAnswer:
    ok: bool
    output: str
    duration_s: float
    outcome: str  # ok | error | timeout


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
                output = await _run_http(tool, arguments, call, client)
            else:
                output = _as_text(await load_python_handler(tool.handler)(arguments, call))
    except TimeoutError:
        return ToolAnswer(False, f"the tool did not answer within {tool.timeout_s:g}s", clock() - started, "timeout")
    except Exception as exc:  # an operator's tool failing must never take the call down
        return ToolAnswer(False, f"the tool failed: {type(exc).__name__}: {exc}"[:500], clock() - started, "error")
    return ToolAnswer(True, output, clock() - started, "ok")


async def _run_http(tool: HttpTool, arguments: dict[str, Any], call: ToolCall, client: httpx.AsyncClient) -> str:
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
    response = await client.post(tool.url, content=body, headers=headers, timeout=tool.timeout_s)
    if not response.is_success:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    if "json" in response.headers.get("content-type", ""):
        return _as_text(response.json())
    return response.text[:MAX_OUTPUT_CHARS]
