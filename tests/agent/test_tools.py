"""Tests for sip_controller.agent.tools: the tool registry, session tool schemas and argument parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sip_controller.agent import tools
from sip_controller.agent.tools import END_CALL, EndCallArgs, ToolArgumentsError, ToolSpec, parse_arguments


def titles(schema: Any) -> list[str]:
    """Every ``title`` key anywhere in a JSON schema."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "title":
                found.append(str(value))
            found.extend(titles(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(titles(value))
    return found


def test_end_call_session_tool_shape() -> None:
    tool = END_CALL.session_tool()
    assert set(tool) == {"type", "name", "description", "parameters"}
    assert tool["type"] == "function"
    assert tool["name"] == "end_call"
    assert "end" in tool["description"].lower()
    params = tool["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["reason"]["type"] == "string"
    assert params["properties"]["reason"]["maxLength"] == 500
    assert params["properties"]["reason"]["description"]
    assert "reason" not in params.get("required", [])
    json.dumps(tool)


def test_session_tool_schema_has_no_title() -> None:
    assert titles(END_CALL.session_tool()) == []


def test_session_tool_does_not_disturb_the_model_schema() -> None:
    END_CALL.session_tool()
    assert EndCallArgs.model_json_schema()["title"] == "EndCallArgs"
    # two calls give equal, independent results
    first = END_CALL.session_tool()
    first["parameters"]["properties"]["reason"]["type"] = "mutated"
    assert END_CALL.session_tool()["parameters"]["properties"]["reason"]["type"] == "string"


class _Nested(BaseModel):
    city: str


class _TransferArgs(BaseModel):
    target: str
    priority: int = 0
    where: _Nested | None = None


def test_custom_tool_schema_has_no_titles_anywhere() -> None:
    """Operator tools with nested argument models must be stripped of titles too (including ``$defs``)."""
    spec = ToolSpec(name="transfer", description="Transfer", args_model=_TransferArgs)
    params = spec.session_tool()["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["target"]
    assert titles(params) == []


def test_builtin_registry() -> None:
    assert tools.BUILTIN_TOOLS["end_call"] is END_CALL
    assert set(tools.BUILTIN_TOOLS) == {"end_call", "transfer_call", "wait_on_hold"}


# ---- parse_arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "   ", "{}", '{"unexpected": 1}'])
def test_end_call_arguments_are_optional(raw: str) -> None:
    args = parse_arguments(END_CALL, raw)
    assert isinstance(args, EndCallArgs)
    assert args.reason == ""


def test_end_call_reason_is_parsed() -> None:
    args = parse_arguments(END_CALL, '{"reason": "caller said goodbye"}')
    assert isinstance(args, EndCallArgs)
    assert args.reason == "caller said goodbye"


@pytest.mark.parametrize("raw", ["{", "{'reason': 'x'}", "not json", '{"reason": "x"'])
def test_invalid_json_gives_readable_message(raw: str) -> None:
    with pytest.raises(ToolArgumentsError) as info:
        parse_arguments(END_CALL, raw)
    message = str(info.value)
    assert message.startswith("arguments are not valid JSON (")
    assert "send a JSON object" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("raw", ["[]", '"goodbye"', "42", "null", "true"])
def test_non_object_is_refused(raw: str) -> None:
    with pytest.raises(ToolArgumentsError) as info:
        parse_arguments(END_CALL, raw)
    assert str(info.value) == "arguments must be a JSON object"


def test_validation_error_names_the_field() -> None:
    with pytest.raises(ToolArgumentsError) as info:
        parse_arguments(END_CALL, json.dumps({"reason": "x" * 501}))
    message = str(info.value)
    assert message.startswith("invalid arguments for end_call: reason: ")
    assert "500 characters" in message
    assert "https://" not in message  # no pydantic doc links for the model to read


def test_validation_errors_all_listed_with_paths() -> None:
    spec = ToolSpec(name="transfer", description="Transfer", args_model=_TransferArgs)
    with pytest.raises(ToolArgumentsError) as info:
        parse_arguments(spec, json.dumps({"priority": "high", "where": {"city": 5}}))
    message = str(info.value)
    assert message.startswith("invalid arguments for transfer: ")
    assert "target: Field required" in message
    assert "priority: " in message
    assert "where.city: " in message
    assert message.count(";") == 2


def test_tool_arguments_error_is_a_value_error() -> None:
    assert issubclass(ToolArgumentsError, ValueError)


@settings(max_examples=100, deadline=None)
@given(raw=st.text(max_size=60))
def test_parse_arguments_only_raises_tool_arguments_error(raw: str) -> None:
    message = ""
    try:
        result = parse_arguments(END_CALL, raw)
    except ToolArgumentsError as exc:
        message = str(exc)
    else:
        assert isinstance(result, EndCallArgs)
        return
    assert message.startswith(("arguments ", "invalid arguments for end_call: "))


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ('{"reason": ' + "{" * (tools.MAX_ARGUMENT_DEPTH + 1) + "}" * (tools.MAX_ARGUMENT_DEPTH + 1) + "}", "nested"),
        ('{"reason": "' + "x" * tools.MAX_ARGUMENT_CHARS + '"}', "too long"),
    ],
)
def test_arguments_past_the_limits_are_refused_without_decoding(raw: str, words: str) -> None:
    with pytest.raises(ToolArgumentsError, match=words):
        parse_arguments(END_CALL, raw)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    reason = "[{" * 100 + '\\" ]}'
    assert tools.argument_problem(json.dumps({"reason": reason})) is None
    depth = tools.MAX_ARGUMENT_DEPTH - 1
    nested = '{"reason": "x", "extra": ' + "[" * depth + "]" * depth + "}"
    assert tools.argument_problem(nested) is None  # exactly at the limit
    assert parse_arguments(END_CALL, nested) == EndCallArgs(reason="x")
