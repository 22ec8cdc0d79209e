"""Tool registry: name -> pydantic argument model (its JSON Schema goes into the session) and a role.

Built-in control tools (``end_call``, ``transfer_call``, ``wait_on_hold``) are run by the call state machine
itself; operator tools (HTTP, Python) are run by ``handlers``. Arguments are always validated, so the model gets
a useful error when it sends garbage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class EndCallArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: str = Field(
        default="",
        max_length=500,
        description="Why the call is ending, e.g. 'caller said goodbye' or 'question answered'.",
    )


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args_model: type[BaseModel]

    def session_tool(self) -> dict[str, Any]:
        """The function tool as it goes into the accept body or a session.update."""
        schema = _strip_titles(self.args_model.model_json_schema())
        return {"type": "function", "name": self.name, "description": self.description, "parameters": schema}


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's generated ``title`` annotations everywhere (not properties that are named title)."""
    if isinstance(node, list):
        return [_strip_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


class TransferArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    target: str = Field(description="Who to transfer the caller to: one of the listed names, never a number.")
    reason: str = Field(default="", max_length=500, description="Why the caller is being transferred.")


class WaitOnHoldArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: str = Field(default="", max_length=500, description="What you are waiting for.")
    expected_minutes: float | None = Field(
        default=None,
        ge=0,
        le=600,
        description="How long they said the wait may be, in minutes, if they said (e.g. 30 for 'about half an hour').",
    )


END_CALL = ToolSpec(
    name="end_call",
    description=(
        "End the phone call. Call this when the caller says goodbye or the conversation is finished. "
        "The system then lets you say a short goodbye before hanging up, so do not say goodbye first."
    ),
    args_model=EndCallArgs,
)

TRANSFER_CALL = ToolSpec(
    name="transfer_call",
    description=(
        "Transfer the caller to a person or department. Use only one of the target names listed for `target`. "
        "The system lets you tell the caller before it transfers, so do not announce it first."
    ),
    args_model=TransferArgs,
)

WAIT_ON_HOLD = ToolSpec(
    name="wait_on_hold",
    description=(
        "Call this when you are put on hold or asked to wait (hold music, recorded announcements). Stay silent; "
        "you will be told when a person is back on the line."
    ),
    args_model=WaitOnHoldArgs,
)

BUILTIN_TOOLS: dict[str, ToolSpec] = {t.name: t for t in (END_CALL, TRANSFER_CALL, WAIT_ON_HOLD)}


def transfer_tool(targets: list[str]) -> dict[str, Any]:
    """transfer_call with its ``target`` limited to the profile's allow-listed names."""
    tool = TRANSFER_CALL.session_tool()
    tool["parameters"]["properties"]["target"]["enum"] = list(targets)
    tool["description"] += " Targets: " + ", ".join(targets) + "."
    return tool


class ToolArgumentsError(ValueError):
    """The model's arguments did not validate; the message is written for the model to recover."""


#: tool arguments longer than this (characters of the JSON string) are refused before they are decoded
MAX_ARGUMENT_CHARS = 64_000
#: tool arguments nested deeper than this (arrays and objects) are refused before they are decoded: decoding
#: (and every later copy, check or dump) of ``[[[[…]]]]`` thousands of levels deep would recurse without bound
MAX_ARGUMENT_DEPTH = 32


def argument_problem(raw: str) -> str | None:
    """Why ``raw`` is past the size or depth limit (a message for the model), or None. Never decodes ``raw``:
    the nesting is counted in one pass over the characters, outside string literals."""
    if len(raw) > MAX_ARGUMENT_CHARS:
        return f"arguments are too long ({len(raw)} characters, at most {MAX_ARGUMENT_CHARS}); send less"
    if raw.count("[") + raw.count("{") <= MAX_ARGUMENT_DEPTH:
        return None  # cannot be nested deeper than it has brackets
    depth = 0
    in_string = escaped = False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_ARGUMENT_DEPTH:
                return f"arguments are nested too deeply (at most {MAX_ARGUMENT_DEPTH} levels); send a flat JSON object"
        elif char in "]}":
            depth -= 1
    return None


def decode_arguments(raw: str) -> Any:
    """Decode the model's arguments within the limits: ToolArgumentsError for anything past them or not JSON
    (an empty string is an empty object)."""
    problem = argument_problem(raw)
    if problem is not None:
        raise ToolArgumentsError(problem)
    try:
        return json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ToolArgumentsError(f"arguments are not valid JSON ({exc.msg}); send a JSON object") from None
    except (ValueError, RecursionError):
        raise ToolArgumentsError("arguments are not valid JSON; send a JSON object") from None


def parse_arguments(spec: ToolSpec, raw: str) -> BaseModel:
    data = decode_arguments(raw)
    if not isinstance(data, dict):
        raise ToolArgumentsError("arguments must be a JSON object")
    try:
        return spec.args_model.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        raise ToolArgumentsError(f"invalid arguments for {spec.name}: {details}") from None
