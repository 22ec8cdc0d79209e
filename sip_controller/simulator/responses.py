"""The simulator's ``POST /v1/responses`` (#17): OpenAI's Responses API for the post-call analysis, answered
deterministically from the request: the transcript in ``input`` and the strict ``json_schema`` in ``text.format``.

The answer is an object valid against the schema, built from the transcript: a ``summary`` from the caller's
first line and how the call ended; a boolean is true when its name's words are in the transcript
(``callback_requested``: "callback"); an enum takes the first value the transcript mentions (else the first);
a string named like a word of the transcript quotes the line it is on; a nullable field is null when the
transcript says nothing of it. Usage counts about four characters a token of what the model reads (the
instructions, the input's text, the schema, a few tokens per message) and of the answer.

The controller's *park check* (#16: ``metadata.sipctl_purpose`` ``park_check``, or a format named so): is a live
person speaking in what Twilio's ``<Gather>`` heard on a parked call (the ``input``)? It is answered ``{"person":
<bool>}`` by the rule the simulated model uses for its realtime hold checks
(:func:`~.model.is_hold_line`: hold music, an announcement or nothing is not a person), with the simulator's hold
markers.

Scripted failures (``Faults.responses``): the first ``fail_first`` requests are answered ``status`` (429 with
Retry-After, 400 ``invalid_json_schema``, 500 or 503), the next ``invalid_first`` answers carry text that is not
valid against the schema; ``delay_s`` holds every answer back (a slow model).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import ApiError, bad_api_key, invalid_json, invalid_value, missing_parameter, server_error
from .events import text_tokens
from .model import SimContext, is_hold_line

#: what the controller's park check (#16) carries in ``metadata.sipctl_purpose`` (and names its format)
PARK_CHECK = "park_check"


@dataclass
class ResponsesLog:
    """What the simulator's ``/v1/responses`` saw: every request body, and how many answers failed on purpose."""

    bodies: list[Any] = field(default_factory=list)
    failed: int = 0
    invalid: int = 0
    #: set when the simulator stops: answers held back by ``delay_s`` go out at once (its server's stop waits for
    #: them)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


#: ``[12.3s] Caller: `` and the like, at the start of a transcript line
_TURN = re.compile(r"^\[[0-9.]+s\] [A-Za-z ]+: ")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[_\W]+", name.casefold()) if len(w) > 2]


def _line_with(lines: list[str], words: list[str]) -> str | None:
    for line in lines:
        if any(w in line.casefold() for w in words):
            return line
    return None


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return target if isinstance(target, Mapping) else {}
    return node


def fill(node: Mapping[str, Any], name: str, lines: list[str], root: Mapping[str, Any], depth: int = 0) -> Any:
    """A value valid against ``node`` (a strict structured-output schema), read from the transcript ``lines``."""
    node = _resolve(node, root)
    if "const" in node:
        return node["const"]
    if isinstance(node.get("anyOf"), list) and node["anyOf"]:
        return fill(node["anyOf"][0], name, lines, root, depth)
    types = node.get("type")
    kinds = [types] if isinstance(types, str) else list(types or ["string"])
    text = " ".join(lines).casefold()
    words = _words(name)
    mentioned = any(w in text for w in words)
    if "null" in kinds and (not mentioned or depth > 5):
        return None
    if isinstance(node.get("enum"), list) and node["enum"]:
        for value in node["enum"]:
            if isinstance(value, str) and value.casefold() in text:
                return value
        return node["enum"][0]
    kind = next((k for k in kinds if k != "null"), "null")
    if kind == "object":
        props = node.get("properties") or {}
        return {key: fill(sub, key, lines, root, depth + 1) for key, sub in props.items()}
    if kind == "array":
        count = int(node.get("minItems") or 0)
        return [fill(node.get("items") or {}, name, lines, root, depth + 1) for _ in range(count)]
    if kind == "boolean":
        return mentioned
    if kind in ("integer", "number"):
        low = node.get("minimum", node.get("exclusiveMinimum", 0))
        value = max(low + (1 if "exclusiveMinimum" in node else 0), 0) if isinstance(low, int | float) else 0
        return int(value) if kind == "integer" else float(value)
    fmt = node.get("format")
    formats = {"date": "2030-01-15", "date-time": "2030-01-15T10:00:00Z", "time": "10:00:00", "duration": "PT1H",
               "email": "caller@example.com", "uuid": "00000000-0000-4000-8000-000000000000",
               "hostname": "example.com", "ipv4": "192.0.2.1", "ipv6": "2001:db8::1"}  # fmt: skip
    if isinstance(fmt, str) and fmt in formats:
        return formats[fmt]
    turns = [line for line in lines if _TURN.match(line)]
    found = _line_with(turns, words) or next((t for t in turns if "] Caller: " in t), turns[0] if turns else "")
    return _TURN.sub("", found)[:200]


def _transcript(body: Mapping[str, Any]) -> list[str]:
    """The transcript lines of the request's input (its text parts)."""
    texts: list[str] = []
    source = body.get("input")
    if isinstance(source, str):
        texts.append(source)
    for item in source if isinstance(source, list) else ():
        content = item.get("content") if isinstance(item, Mapping) else None
        if isinstance(content, str):
            texts.append(content)
        for part in content if isinstance(content, list) else ():
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return [line for text in texts for line in text.splitlines() if line.strip()]


def answer(body: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """The object the simulated model answers: valid against ``schema``, with a summary read from the transcript."""
    lines = _transcript(body)
    value: Any = fill(schema, "", lines, schema)
    said = [line.split("] ", 1)[-1] for line in lines if "] Caller: " in line]
    turns = sum(1 for line in lines if "] Caller: " in line or "] Assistant: " in line)
    ended = next((line for line in lines if " ended: " in line), "")
    how = ended.split(" ended: ", 1)[-1].split(",", 1)[0] if ended else "unknown"
    if isinstance(value, dict):
        if "summary" in value:
            first = said[0].removeprefix("Caller: ") if said else "nothing"
            value["summary"] = f"The caller said: “{first}” The call had {turns} turns and ended ({how})."
        if "success" in value:
            value["success"] = how in ("agent_end_call", "transferred")
        if "success_reason" in value:
            value["success_reason"] = f"the call ended with {how}"
    return value if isinstance(value, dict) else {}


def is_park_check(body: Mapping[str, Any]) -> bool:
    """The controller asks whether a person is speaking in what a parked call's ``<Gather>`` heard (#16)."""
    metadata = body.get("metadata")
    purpose = metadata.get("sipctl_purpose") if isinstance(metadata, Mapping) else None
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), Mapping) else None
    return purpose == PARK_CHECK or (isinstance(fmt, Mapping) and fmt.get("name") == PARK_CHECK)


def park_check_answer(body: Mapping[str, Any], markers: tuple[str, ...]) -> dict[str, Any]:
    """``{"person": …}``: true unless what was heard (the input's text) is hold music, an announcement or nothing;
    any other field the schema asks for is filled as for an analysis."""
    heard = " ".join(_transcript(body))
    schema = body["text"]["format"]["schema"]
    value: Any = fill(schema, "", [heard], schema)
    answer = value if isinstance(value, dict) else {}
    answer["person"] = not is_hold_line(heard, markers)
    return answer


def usage(body: Mapping[str, Any], text: str) -> dict[str, Any]:
    """The answer's ``usage``: the instructions, the input's text and the schema (structured outputs put it in the
    prompt) at about four characters a token, four tokens of framing per message and three to prime the answer;
    the answer's own tokens."""
    source = body.get("input")
    messages = 1 + (len(source) if isinstance(source, list) else 1)
    fmt = body["text"]["format"]
    read = [str(body.get("instructions") or ""), *_transcript(body), json.dumps(fmt.get("schema"))]
    input_tokens = sum(text_tokens(part) for part in read) + 4 * messages + 3
    output_tokens = max(1, text_tokens(text))
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _problem(body: Any) -> ApiError | None:
    if not isinstance(body, Mapping):
        return invalid_value("(body)", body)
    for name in ("model", "input"):
        if name not in body:
            return missing_parameter(name)
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), Mapping) else None
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), Mapping):
        return invalid_value("text.format.type", fmt, ["json_schema"])
    return None


def _response(body: Mapping[str, Any], text: str, status_ok: bool = True) -> dict[str, Any]:
    fmt = body["text"]["format"]
    metadata = body.get("metadata")
    return {
        "id": f"resp_{secrets.token_hex(12)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if status_ok else "incomplete",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": str(body["model"]),
        "output": [
            {
                "id": f"msg_{secrets.token_hex(12)}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "store": bool(body.get("store", True)),
        "temperature": 1.0,
        "text": {"format": dict(fmt)},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage(body, text),
        "metadata": dict(metadata) if isinstance(metadata, Mapping) else {},
    }


def _error(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _check_key(ctx: SimContext, authorization: str | None) -> ApiError | None:
    scheme, _, provided = (authorization or "").partition(" ")
    provided = provided.strip()
    if scheme.lower() != "bearer" or not provided:
        return bad_api_key(None)
    if not hmac.compare_digest(provided.encode(), ctx.api_key.encode()):
        return bad_api_key(provided)
    return None


def schema_refused() -> ApiError:
    """OpenAI's 400 for a ``json_schema`` format it refuses (a final answer: the same request fails again)."""
    return ApiError(
        400,
        "Invalid schema for response_format 'call_analysis': In context=(), 'required' is required to be supplied "
        "and to be an array including every key in properties.",
        code="invalid_json_schema",
        param="text.format.schema",
    )


def responses_route(ctx: SimContext, log: ResponsesLog) -> Route:
    """``POST /v1/responses`` on the simulator's app."""
    async def create(request: Request) -> Response:
        auth = _check_key(ctx, request.headers.get("authorization"))
        if auth is not None:
            return _error(auth)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(invalid_json())
        log.bodies.append(body)
        ctx.observe("rest_request", None, "responses", body)
        faults = ctx.faults.responses
        if faults.delay_s:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(faults.delay_s):
                    await log.stopping.wait()
        if log.failed < faults.fail_first:
            log.failed += 1
            if faults.status == 400:  # what OpenAI answers a schema strict structured outputs do not accept
                return _error(schema_refused())
            if faults.status == 429:
                limited = ApiError(429, "Rate limit reached for requests.", type="requests", code="rate_limit_exceeded")
                return _error(limited, {"retry-after": "0"})
            if faults.status == 503:
                return _error(ApiError(503, "The server is overloaded or not ready yet.", type="server_error"))
            return _error(server_error())
        problem = _problem(body)
        if problem is not None:
            return _error(problem)
        schema = body["text"]["format"]["schema"]
        if log.invalid < faults.invalid_first:
            log.invalid += 1
            return JSONResponse(_response(body, json.dumps({"unexpected": True})))
        value = park_check_answer(body, ctx.hold_markers) if is_park_check(body) else answer(body, schema)
        text = json.dumps(value, ensure_ascii=False)
        return JSONResponse(_response(body, text))

    return Route("/v1/responses", create, methods=["POST"])
