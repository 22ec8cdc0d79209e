"""Post-call analysis (#17), what the operator configures: a profile's ``analysis`` block, the global ``analysis``
settings, and the checks ``sipctl check-config`` runs on them.

A profile's block names what to ask of a finished call's transcript: a ``summary_prompt``, a JSON Schema of the
fields to extract (``schema``), optional ``success_criteria`` and the text ``model`` (default: ``analysis.model``).
The schema goes to OpenAI's Responses API as a strict structured output, so it must be valid JSON Schema (checked
against the meta-schema with ``jsonschema``) AND inside the subset strict structured outputs accept
(:func:`structured_output_problems`). Every finding names the field path, the bad value and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sip_controller.agent.validation import Finding, Severity

#: OpenAI's most efficient text model for focused, high-volume tasks (summaries, extraction, classification), with
#: strict structured outputs on the Responses API: https://developers.openai.com/api/docs/models/gpt-6-luna (read
#: 2026-12-02; input 0.10, cached input 0.01, output 0.50 USD per 1M tokens). It was gpt-5-mini, which OpenAI shuts
#: down on 2026-12-11 (see RETIRING_TEXT_MODELS).
DEFAULT_ANALYSIS_MODEL = "gpt-6-luna"
DEFAULT_SUMMARY_PROMPT = (
    "Summarise this phone call in two or three sentences for the team that follows up: who called, what they "
    "wanted and how the call ended."
)
#: what a text model's name looks like: lower case letters, digits, ``.``, ``-``, ``_`` and ``:`` (fine-tuned
#: models: ``ft:gpt-4.1-mini:org::id``)
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,127}$")
#: model families the Responses API does not serve text from (speech, transcription, images, embeddings)
_NOT_TEXT = re.compile(r"(realtime|transcribe|tts|whisper|dall-e|gpt-image|embedding|moderation|-audio)")
_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

#: the keywords strict structured outputs accept (OpenAI's "Supported schemas" for Structured Outputs)
SUPPORTED_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
        "description", "title", "$ref", "$defs", "definitions", "$schema",
        "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minItems", "maxItems",
    }
)  # fmt: skip
SUPPORTED_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
#: OpenAI's limits on one strict schema
MAX_PROPERTIES = 5000
MAX_DEPTH = 10
MAX_ENUM_VALUES = 1000


#: text models OpenAI has deprecated, with its shutdown date and recommended replacement, from
#: https://developers.openai.com/api/docs/deprecations (read 2026-12-02): the GPT-5 and o3 deprecations of
#: 2026-06-11 (shut down 2026-12-11) and the GPT-4 series deprecations of 2026-10-14 (shut down 2027-01-14; the
#: aliases go with the snapshots they point at), and the gpt-4.1-nano shutdown of 2026-10-23. A fine-tuned model
#: (``ft:<base>:…``) follows its base model's schedule.
RETIRING_TEXT_MODELS: dict[str, tuple[date, str]] = {
    **dict.fromkeys(("gpt-5", "gpt-5-2025-08-07"), (date(2026, 12, 11), "gpt-6.1-sol")),
    **dict.fromkeys(("gpt-5-mini", "gpt-5-mini-2025-08-07"), (date(2026, 12, 11), "gpt-6.1-terra")),
    **dict.fromkeys(("gpt-5-nano", "gpt-5-nano-2025-08-07"), (date(2026, 12, 11), "gpt-6-luna")),
    **dict.fromkeys(("o3", "o3-2025-04-16"), (date(2026, 12, 11), "gpt-6.1-sol")),
    **dict.fromkeys(
        (
            "gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20", "gpt-4o-mini", "gpt-4o-mini-2024-07-18",
            "gpt-4.1", "gpt-4.1-2025-04-14", "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14",
        ),
        (date(2027, 1, 14), "gpt-6-luna"),
    ),
    **dict.fromkeys(("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"), (date(2026, 10, 23), "gpt-6-luna")),
}  # fmt: skip


def model_retirement(model: str, today: date) -> tuple[Severity, str] | None:
    """Whether OpenAI shuts ``model`` down (a warning until the day, an error from then on, like the Realtime
    models' check) and what to use instead; None when it has no shutdown announced."""
    base = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 2 else model
    retiring = RETIRING_TEXT_MODELS.get(base)
    if retiring is None:
        return None
    day, replacement = retiring
    which = f"{model!r}" if base == model else f"{model!r} (fine-tuned from {base}, on its schedule)"
    if replacement != DEFAULT_ANALYSIS_MODEL:
        replacement += f" (or {DEFAULT_ANALYSIS_MODEL}, the default)"
    if today >= day:
        return "error", f"{which} was shut down on {day.isoformat()}; use {replacement}"
    return "warning", f"{which} shuts down on {day.isoformat()}; move to {replacement}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def model_name_problem(model: str) -> str | None:
    """Why ``model`` cannot be the analysis model (a text model served by the Responses API), or None."""
    if not _MODEL_NAME.fullmatch(model):
        return (
            f"{model!r} is not a model name: lower case letters, digits, '.', '-', '_' and ':' only "
            f"(e.g. {DEFAULT_ANALYSIS_MODEL})"
        )
    if _NOT_TEXT.search(model):
        return (
            f"{model!r} is not a text model: the analysis goes to the Responses API; use a text model such as "
            f"{DEFAULT_ANALYSIS_MODEL}"
        )
    return None


class CallAnalysis(_Strict):
    """A profile's ``analysis`` block: what to extract from each of its finished calls."""

    summary_prompt: str = Field(default=DEFAULT_SUMMARY_PROMPT, min_length=1, max_length=4000)
    #: the JSON Schema of the fields to extract (an object schema in the structured-output subset); None: a
    #: summary (and the success verdict, with success_criteria) only
    fields_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    #: the structured output's name (OpenAI's ``text.format.name``)
    name: str = "call_analysis"
    #: what makes this call a success, in words; the model answers ``success`` true/false and why
    success_criteria: str | None = Field(default=None, min_length=1, max_length=4000)
    #: the text model; None: ``analysis.model``
    model: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SCHEMA_NAME.fullmatch(value):
            raise ValueError("must match ^[a-zA-Z0-9_-]{1,64}$ (OpenAI's rule for a structured output's name)")
        return value


class AnalysisSettings(_Strict):
    """The global ``analysis`` settings: the default model and how the analyses of finished calls are run."""

    model: str = DEFAULT_ANALYSIS_MODEL
    #: analyses running at once in this process (each one HTTP request at a time, with its retries)
    max_concurrent: int = Field(default=4, ge=1, le=100)
    #: tries of one call's analysis (an answer that is not valid against the schema counts as a failed try)
    max_attempts: int = Field(default=4, ge=1, le=20)
    #: the wait after the first failed try, doubled after each (up to retry_max_s)
    retry_initial_s: float = Field(default=5.0, gt=0, le=3600)
    retry_max_s: float = Field(default=300.0, gt=0, le=86_400)
    #: one request to the Responses API (connect, send, the model's whole answer)
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    #: how long a claimed analysis is this process's before another replica may take it over
    lease_s: float = Field(default=300.0, gt=0, le=3600)
    #: how often an idle process looks for analyses written by other replicas (its own calls wake it at once)
    poll_s: float = Field(default=2.0, gt=0, le=60)
    #: the transcript sent is cut to this many characters (the end is kept: how the call ended matters most)
    max_transcript_chars: int = Field(default=60_000, ge=1000, le=1_000_000)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        problem = model_name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


# ---- the schema -----------------------------------------------------------------------------------------------


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_$][\w$-]*", key) else f"{path}[{key!r}]"


def _subschemas(node: Mapping[str, Any], path: str) -> Iterator[tuple[str, Any, bool]]:
    """The schemas directly inside ``node`` (properties, items, anyOf branches, definitions), each with whether
    it is a level deeper in the output (a property's or an item's value)."""
    props = node.get("properties")
    if isinstance(props, Mapping):
        for key, sub in props.items():
            yield _child(f"{path}.properties", str(key)), sub, True
    if "items" in node:
        yield f"{path}.items", node["items"], True
    any_of = node.get("anyOf")
    if isinstance(any_of, list):
        for i, sub in enumerate(any_of):
            yield f"{path}.anyOf[{i}]", sub, False
    for defs in ("$defs", "definitions"):
        table = node.get(defs)
        if isinstance(table, Mapping):
            for key, sub in table.items():
                yield _child(f"{path}.{defs}", str(key)), sub, False


def _types(node: Mapping[str, Any]) -> list[str]:
    value = node.get("type")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for t in value if isinstance(t, str)]
    return []


def structured_output_problems(schema: Mapping[str, Any], path: str) -> list[Finding]:
    """Where ``schema`` (already valid JSON Schema) leaves the subset OpenAI's strict structured outputs accept:
    each finding at the field's path, saying what is wrong, the value and the fix."""
    problems: list[Finding] = []

    def problem(where: str, message: str) -> None:
        problems.append(Finding(where, message))

    if schema.get("type") != "object" or "anyOf" in schema:
        got = schema.get("type", "anyOf" if "anyOf" in schema else None)
        problem(
            f"{path}.type",
            f"the root of a structured output must be an object schema (got {got!r}); wrap the fields in "
            "{type: object, properties: {...}, required: [...], additionalProperties: false}",
        )
    counts = {"properties": 0, "enum": 0}

    def walk(node: Any, where: str, depth: int) -> None:
        if not isinstance(node, Mapping):
            return  # true/false schemas: the meta-schema allows them; there is nothing else to check
        if depth > MAX_DEPTH:
            problem(where, f"nested {depth} levels deep; strict structured outputs allow {MAX_DEPTH}: flatten it")
            return
        for key in node:
            if key not in SUPPORTED_KEYWORDS:
                problem(
                    _child(where, str(key)),
                    f"{key!r} (set to {node[key]!r}) is not supported by strict structured outputs; remove it "
                    f"(supported: {', '.join(sorted(SUPPORTED_KEYWORDS))})",
                )
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt not in SUPPORTED_FORMATS:
            problem(
                f"{where}.format",
                f"{fmt!r} is not a format structured outputs support; use one of "
                f"{', '.join(sorted(SUPPORTED_FORMATS))} or remove it",
            )
        enum = node.get("enum")
        if isinstance(enum, list):
            counts["enum"] += len(enum)
        if "object" in _types(node) or "properties" in node:
            props = node.get("properties")
            names = [str(k) for k in props] if isinstance(props, Mapping) else []
            counts["properties"] += len(names)
            if node.get("additionalProperties") is not False:
                got = node.get("additionalProperties", "nothing")
                problem(
                    f"{where}.additionalProperties",
                    f"must be false in a strict structured output (got {got!r}); set additionalProperties: false",
                )
            required = node.get("required")
            listed = set(required) if isinstance(required, list) else set()
            missing = [n for n in names if n not in listed]
            if missing:
                problem(
                    f"{where}.required",
                    f"every property must be required in a strict structured output; {missing} are not: add them "
                    "to required (a field that may be unknown takes a null type, e.g. type: [string, 'null'])",
                )
        for sub_path, sub, deeper in _subschemas(node, where):
            walk(sub, sub_path, depth + 1 if deeper else depth)

    walk(schema, path, 1)
    if counts["properties"] > MAX_PROPERTIES:
        problem(path, f"{counts['properties']} properties in all; structured outputs allow {MAX_PROPERTIES}")
    if counts["enum"] > MAX_ENUM_VALUES:
        problem(path, f"{counts['enum']} enum values in all; structured outputs allow {MAX_ENUM_VALUES}")
    return problems


def schema_problems(schema: Mapping[str, Any], path: str) -> list[Finding]:
    """``schema`` against the JSON Schema meta-schema (draft 2020-12), then, if it is valid JSON Schema, against
    the structured-output subset."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = path + "".join(f"[{p}]" if isinstance(p, int) else _child("", str(p)) for p in exc.absolute_path)
        return [
            Finding(
                where,
                f"not valid JSON Schema: {exc.message} (the value: {exc.instance!r}); fix it so the schema passes "
                "the draft 2020-12 meta-schema",
            )
        ]
    return structured_output_problems(schema, path)


def check_profile_analysis(name: str, analysis: CallAnalysis | None, today: date | None = None) -> list[Finding]:
    """``check-config``'s findings about ``profiles.<name>.analysis`` (``today``: also whether its model is shut
    down or shutting down)."""
    if analysis is None:
        return []
    base = f"profiles.{name}.analysis"
    found: list[Finding] = []
    if analysis.model is not None:
        problem = model_name_problem(analysis.model)
        if problem is not None:
            found.append(Finding(f"{base}.model", problem))
        elif today is not None and (retiring := model_retirement(analysis.model, today)) is not None:
            found.append(Finding(f"{base}.model", retiring[1], retiring[0]))
    if analysis.fields_schema is not None:
        found.extend(schema_problems(analysis.fields_schema, f"{base}.schema"))
    return found
