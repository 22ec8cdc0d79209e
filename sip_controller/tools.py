"""Tool registry: name -> pydantic argument model (its JSON Schema goes into the session) and a role.

Control tools (``end_call``) are executed by the call state machine itself; their arguments are still
validated here so the model gets a useful error when it sends garbage.
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


END_CALL = ToolSpec(
    name="end_call",
    description=(
        "End the phone call. Call this when the caller says goodbye or the conversation is finished. "
        "The system then lets you say a short goodbye before hanging up, so do not say goodbye first."
    ),
    args_model=EndCallArgs,
)

BUILTIN_TOOLS: dict[str, ToolSpec] = {END_CALL.name: END_CALL}


class ToolArgumentsError(ValueError):
    """The model's arguments did not validate; the message is written for the model to recover."""


def parse_arguments(spec: ToolSpec, raw: str) -> BaseModel:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ToolArgumentsError(f"arguments are not valid JSON ({exc.msg}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ToolArgumentsError("arguments must be a JSON object")
    try:
        return spec.args_model.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        raise ToolArgumentsError(f"invalid arguments for {spec.name}: {details}") from None
